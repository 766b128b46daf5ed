"""Subnet CIDR reservations (CreateSubnetCidrReservation, GetSubnetCidrReservations,
DeleteSubnetCidrReservation) over moto's own: moto keeps them and checks the type, the
range and overlaps; the strict layer checks the subnet exists and keeps what moto drops.

What EC2 publishes and moto lacks: a reservation carries the Description and the tags
(TagSpecification of resource type ``subnet-cidr-reservation``) it was created with, in
every answer that lists it (botocore's SubnetCidrReservation shape: Description, Tags), and
GetSubnetCidrReservations filters by ``tag:<key>`` and ``tag-key`` and pages by
MaxResults (5 to 1000) and NextToken. The layer sets the description on moto's object and
the tags in moto's tag store (where moto's answers and filters find them), and writes both
into the create answer moto already rendered; a deleted reservation's tags leave the store
with it; it pages moto's full listing itself (a token is the offset of the next page, an
invalid one is InvalidPaginationToken, EC2's common error for it).
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Any

from lab.ec2.lookups import RuleContext, Verdict, find_subnet, require
from lab.ec2.paging import cut_to_page
from lab.ec2.wire import ApiRequest, Refusal, parse_answer, parse_count

logger = logging.getLogger(__name__)

RESOURCE_TYPE = "subnet-cidr-reservation"
MAX_RESULTS = range(5, 1001)
LISTS = ("subnetIpv4CidrReservationSet", "subnetIpv6CidrReservationSet")


def requested_tags(request: ApiRequest) -> dict[str, str]:
    """The tags of the request's TagSpecifications for a subnet CIDR reservation."""
    tags: dict[str, str] = {}
    for index, spec in enumerate(request.members("TagSpecification"), start=1):
        if spec.get("ResourceType") != RESOURCE_TYPE:
            continue
        for tag in request.members(f"TagSpecification.{index}.Tag"):
            if "Key" in tag:
                tags[tag["Key"]] = tag.get("Value", "")
    return tags


def find_reservation(backend: Any, reservation_id: str) -> Any:
    for subnets in backend.subnets.values():
        for subnet in subnets.values():
            for reservation in getattr(subnet, "_cidr_reservations", ()):
                if reservation.id == reservation_id:
                    return reservation
    raise RuntimeError(f"moto created no reservation {reservation_id}")


def check_create_subnet_cidr_reservation(request: ApiRequest, context: RuleContext) -> Verdict:
    find_subnet(context, require(request, "SubnetId"))
    description = request.get("Description")  # None: not given, and not listed
    tags = requested_tags(request)

    def keep_description_and_tags(body: bytes) -> bytes:
        root, tag = parse_answer(body)
        made = root.find(tag("subnetCidrReservation"))
        if made is None:
            raise RuntimeError(f"CreateSubnetCidrReservation answer names no reservation: "
                               f"{body[:200]!r}")
        reservation = find_reservation(context.backend,
                                       made.findtext(tag("subnetCidrReservationId")) or "")
        if tags:
            context.backend.create_tags([reservation.id], tags)
        for old in made.findall(tag("description")) + made.findall(tag("tagSet")):
            made.remove(old)
        if description is not None:
            reservation.description = description
            ET.SubElement(made, tag("description")).text = description
        listed = ET.SubElement(made, tag("tagSet"))
        for key, value in tags.items():
            item = ET.SubElement(listed, tag("item"))
            ET.SubElement(item, tag("key")).text = key
            ET.SubElement(item, tag("value")).text = value
        return ET.tostring(root, xml_declaration=True, encoding="UTF-8")

    return Verdict(after=keep_description_and_tags)


def check_delete_subnet_cidr_reservation(request: ApiRequest, context: RuleContext) -> Verdict:
    reservation_id = require(request, "SubnetCidrReservationId")

    def drop_tags(body: bytes) -> bytes:
        context.backend.tags.pop(reservation_id, None)
        return body

    return Verdict(after=drop_tags)


def check_get_subnet_cidr_reservations(request: ApiRequest, context: RuleContext) -> Verdict:
    find_subnet(context, require(request, "SubnetId"))
    if request.get("MaxResults") is None and request.get("NextToken") is None:
        return Verdict()
    size = parse_count(request, "MaxResults") if request.get("MaxResults") else 1000
    if size not in MAX_RESULTS:
        raise Refusal("InvalidParameterValue",
                      f"MaxResults must be between {MAX_RESULTS.start} and "
                      f"{MAX_RESULTS.stop - 1}, got {size}")
    token = request.get("NextToken") or "0"
    if not token.isdigit():
        raise Refusal("InvalidPaginationToken", f"The pagination token {token!r} is not valid")
    start = int(token)

    def page(body: bytes) -> bytes:
        root, tag = parse_answer(body)
        items = [(listed, item) for name in LISTS for listed in root.findall(tag(name))
                 for item in listed.findall(tag("item"))]
        return cut_to_page(root, tag, items, start, size, "InvalidPaginationToken",
                           f"The pagination token {token!r} is not valid or has expired")

    return Verdict(after=page)
