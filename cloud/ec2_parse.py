"""Turn EC2 response dicts (as boto3 returns them) into our dataclasses.

Only this module and ``cloud.ec2`` ever see boto dicts; everything above them speaks
``cloud.types``.
"""
from __future__ import annotations

import logging
from typing import Any

from cloud.errors import InvalidRequest
from cloud.types import (
    Eni,
    EniId,
    Instance,
    InstanceId,
    InstanceLimits,
    Route,
    RouteTable,
    RouteTableId,
    Subnet,
    SubnetId,
)

logger = logging.getLogger(__name__)

Doc = dict[str, Any]


def parse_tags(items: list[Doc] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(t["Key"]), str(t.get("Value", ""))) for t in items or ()))


def parse_eni(doc: Doc) -> Eni:
    addresses = doc.get("PrivateIpAddresses") or []
    primary = doc.get("PrivateIpAddress") or next(
        (a["PrivateIpAddress"] for a in addresses if a.get("Primary")), ""
    )
    secondary = tuple(
        a["PrivateIpAddress"]
        for a in addresses
        if not a.get("Primary") and a.get("PrivateIpAddress") != primary
    )
    attachment = doc.get("Attachment") or {}
    # attachment status: attaching | attached | detaching | detached
    attached = bool(attachment.get("InstanceId")) and attachment.get("Status") != "detached"
    device_index = attachment.get("DeviceIndex") if attached else None
    return Eni(
        id=EniId(doc["NetworkInterfaceId"]),
        mac=str(doc.get("MacAddress", "")).lower(),
        subnet_id=SubnetId(doc.get("SubnetId", "")),
        vpc_id=doc.get("VpcId", ""),
        primary_ip=primary,
        secondary_ips=secondary,
        status=doc.get("Status", ""),
        instance_id=InstanceId(attachment["InstanceId"])
        if attached and attachment.get("InstanceId")
        else None,
        device_index=int(device_index) if device_index is not None else None,
        attachment_id=attachment.get("AttachmentId") if attached else None,
        source_dest_check=bool(doc.get("SourceDestCheck", True)),
        tags=parse_tags(doc.get("TagSet") or doc.get("Tags")),
        prefixes=tuple(p["Ipv4Prefix"] for p in doc.get("Ipv4Prefixes") or ()
                       if p.get("Ipv4Prefix")),
    )


def parse_instance(doc: Doc) -> Instance:
    interfaces = doc.get("NetworkInterfaces") or []
    primary_eni = next(
        (n for n in interfaces if (n.get("Attachment") or {}).get("DeviceIndex") == 0), None
    )
    if primary_eni is None:
        raise InvalidRequest(
            f"DescribeInstances: instance {doc.get('InstanceId')} has no ENI at device index 0",
            code="NoPrimaryEni",
            action="DescribeInstances",
        )
    placement = doc.get("Placement") or {}
    return Instance(
        id=InstanceId(doc["InstanceId"]),
        instance_type=doc.get("InstanceType", ""),
        availability_zone=placement.get("AvailabilityZone", ""),
        vpc_id=doc.get("VpcId", "") or primary_eni.get("VpcId", ""),
        subnet_id=SubnetId(doc.get("SubnetId", "") or primary_eni.get("SubnetId", "")),
        primary_ip=doc.get("PrivateIpAddress", "") or primary_eni.get("PrivateIpAddress", ""),
        primary_eni_id=EniId(primary_eni["NetworkInterfaceId"]),
        security_groups=tuple(g["GroupId"] for g in doc.get("SecurityGroups") or ()),
        state=(doc.get("State") or {}).get("Name", ""),
    )


def parse_limits(doc: Doc) -> InstanceLimits:
    network = doc.get("NetworkInfo") or {}
    try:
        return InstanceLimits(
            instance_type=doc["InstanceType"],
            max_enis=int(network["MaximumNetworkInterfaces"]),
            ips_per_eni=int(network["Ipv4AddressesPerInterface"]),
            hypervisor=str(doc.get("Hypervisor") or ""),
            bare_metal=bool(doc.get("BareMetal")),
        )
    except KeyError as missing:
        raise InvalidRequest(
            f"DescribeInstanceTypes: {doc.get('InstanceType')} has no {missing} in NetworkInfo",
            code="IncompleteInstanceType",
            action="DescribeInstanceTypes",
        ) from None


def parse_subnet(doc: Doc) -> Subnet:
    return Subnet(
        id=SubnetId(doc["SubnetId"]),
        vpc_id=doc.get("VpcId", ""),
        cidr=doc.get("CidrBlock", ""),
        availability_zone=doc.get("AvailabilityZone", ""),
        free_addresses=int(doc.get("AvailableIpAddressCount", 0)),
    )


def parse_route_table(doc: Doc) -> RouteTable:
    routes = tuple(
        Route(
            destination_cidr=r["DestinationCidrBlock"],
            state=r.get("State", "active"),
            eni_id=EniId(r["NetworkInterfaceId"]) if r.get("NetworkInterfaceId") else None,
            instance_id=InstanceId(r["InstanceId"]) if r.get("InstanceId") else None,
            gateway_id=r.get("GatewayId"),
        )
        for r in doc.get("Routes") or ()
        if r.get("DestinationCidrBlock")  # IPv6 and prefix-list routes are not ours
    )
    subnets = tuple(
        SubnetId(a["SubnetId"]) for a in doc.get("Associations") or () if a.get("SubnetId")
    )
    return RouteTable(
        id=RouteTableId(doc["RouteTableId"]),
        vpc_id=doc.get("VpcId", ""),
        routes=routes,
        subnet_ids=subnets,
        tags=parse_tags(doc.get("Tags")),
        main=any(bool(a.get("Main")) for a in doc.get("Associations") or ()),
    )
