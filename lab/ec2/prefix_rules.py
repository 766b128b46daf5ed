"""Prefix delegation over moto's state: where the strict layer keeps prefixes, how it reads
a subnet's space, the checks that need moto objects, and the answers it writes itself.

Prefixes live on moto's ENI objects as ``ipv4_prefixes`` (``[{"Ipv4Prefix": cidr}]``), set
only by the strict layer and only under its lock. moto knows nothing of prefixes (it
ignores every Ipv4Prefix* parameter), but its serializer renders that attribute as the
ENI's Ipv4Prefixes wherever it renders an ENI (DescribeNetworkInterfaces,
DescribeInstances, CreateNetworkInterface), so every answer shows the layer's state, and
an ENI's prefixes go with it when moto deletes it. Subnet CIDR reservations are moto's own
(CreateSubnetCidrReservation, GetSubnetCidrReservations, DeleteSubnetCidrReservation); the
layer reads them, and answers each subnet's AvailableIpAddressCount itself (addresses
inside assigned prefixes are not available; moto counts them free).
"""
from __future__ import annotations

import ipaddress
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from lab.ec2.addresses import used_addresses
from lab.ec2.limits import TypeLimits, hypervisor_of
from lab.ec2.prefixes import Reservation, SubnetSpace, free_single_count
from lab.ec2.snapshot import eni_addresses, eni_prefixes
from lab.ec2.wire import ApiRequest, Refusal, parse_answer, parse_count, result_xml

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PrefixAsk:
    """What a request asks of prefixes: a count, or named prefixes (never both)."""

    count: int
    named: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.count or self.named)


def read_prefix_ask(request: ApiRequest, *, nested: bool) -> PrefixAsk:
    """Ipv4PrefixCount or Ipv4Prefixes; ``nested`` for CreateNetworkInterface, whose list
    is ``Ipv4Prefix.N.Ipv4Prefix`` (AssignPrivateIpAddresses: ``Ipv4Prefix.N``)."""
    count = parse_count(request, "Ipv4PrefixCount")
    if nested:
        named = tuple(m.get("Ipv4Prefix", "") for m in request.members("Ipv4Prefix"))
    else:
        named = tuple(request.indexed("Ipv4Prefix"))
    if count and named:
        raise Refusal("InvalidParameterCombination",
                      "Specify either Ipv4Prefixes or Ipv4PrefixCount, not both")
    return PrefixAsk(count, named)


def list_prefixes_on_every_eni() -> None:
    """EC2 lists Ipv4Prefixes on every ENI it describes, empty when the ENI holds none (the
    EC2 user guide's DescribeNetworkInterfaces example); moto renders the attribute only on
    ENIs the layer gave prefixes. An empty default on moto's ENI class lists it everywhere;
    it is never mutated (set_eni_prefixes replaces it per ENI)."""
    from moto.ec2.models.elastic_network_interfaces import NetworkInterface

    if not hasattr(NetworkInterface, "ipv4_prefixes"):
        NetworkInterface.ipv4_prefixes = ()


def set_eni_prefixes(eni: Any, prefixes: list[str]) -> None:
    eni.ipv4_prefixes = [{"Ipv4Prefix": p} for p in prefixes]


def subnet_reservations(subnet: Any) -> tuple[Reservation, ...]:
    return tuple(Reservation(r.id, r.cidr, r.reservation_type)
                 for r in getattr(subnet, "_cidr_reservations", ())
                 if isinstance(r.cidr, ipaddress.IPv4Network))


def subnet_space(backend: Any, subnet: Any) -> SubnetSpace:
    """The subnet's assigned addresses, prefixes and reservations, read from moto."""
    used = frozenset(int(ipaddress.IPv4Address(a)) for a in used_addresses(backend, subnet.id))
    prefixes = tuple(ipaddress.IPv4Network(p) for eni in list(backend.enis.values())
                     if eni.subnet.id == subnet.id for p in eni_prefixes(eni))
    return SubnetSpace(subnet.id, ipaddress.IPv4Network(subnet.cidr_block), used, prefixes,
                       subnet_reservations(subnet))


def check_nitro(instance_type: str, what: str) -> None:
    hypervisor = hypervisor_of(instance_type)
    if hypervisor != "nitro":
        raise Refusal("InvalidParameterValue",
                      f"{what}: IPv4 prefixes are supported only on instance types built on "
                      f"the Nitro system; {instance_type} is not ({hypervisor} hypervisor)")


def check_slots(eni: Any, limits: TypeLimits, *, addresses: int = 0, prefixes: int = 0,
                prefixes_take_slots: bool = True) -> None:
    """The per-ENI "IPv4 addresses per interface" limit, counting the primary address, the
    secondary addresses and (one slot each) the prefixes, with what the call adds."""
    held_addresses = len(eni_addresses(eni))
    held_prefixes = len(eni_prefixes(eni)) if prefixes_take_slots else 0
    wanted = held_addresses + held_prefixes + addresses + (prefixes if prefixes_take_slots else 0)
    if wanted > limits.ips_per_eni:
        asked = " and ".join(part for part in (
            f"{addresses} addresses" if addresses else "",
            f"{prefixes} prefixes" if prefixes else "") if part)
        raise Refusal(
            "PrivateIpAddressLimitExceeded",
            f"Number of private addresses will exceed limit: {eni.id} holds {held_addresses} "
            f"addresses and {held_prefixes} prefixes, {asked} requested, "
            f"{limits.instance_type} allows {limits.ips_per_eni} per interface (the primary "
            "address included; each /28 prefix takes one).",
        )


def attach_slot_refusal(eni: Any, limits: TypeLimits, prefixes_take_slots: bool) -> None:
    """An ENI holding more than the type's slots cannot be attached to it."""
    addresses = len(eni_addresses(eni))
    prefixes = len(eni_prefixes(eni)) if prefixes_take_slots else 0
    if addresses + prefixes > limits.ips_per_eni:
        raise Refusal("AttachmentLimitExceeded",
                      f"Interface {eni.id} holds {addresses} IPv4 addresses and {prefixes} "
                      f"prefixes ({addresses + prefixes} slots); {limits.instance_type} allows "
                      f"{limits.ips_per_eni} per interface")


def answer_assigned(eni_id: str, addresses: list[str], prefixes: list[str]) -> bytes:
    """AssignPrivateIpAddresses' answer: only what this call assigned, and no empty list
    (the EC2 user guide's prefix example answers NetworkInterfaceId and
    AssignedIpv4Prefixes only)."""
    items = "".join(f"<item><privateIpAddress>{a}</privateIpAddress></item>" for a in addresses)
    blocks = "".join(f"<item><ipv4Prefix>{p}</ipv4Prefix></item>" for p in prefixes)
    inner = f"<networkInterfaceId>{eni_id}</networkInterfaceId>"
    if items:
        inner += f"<assignedPrivateIpAddressesSet>{items}</assignedPrivateIpAddressesSet>"
    if blocks:
        inner += f"<assignedIpv4PrefixSet>{blocks}</assignedIpv4PrefixSet>"
    return result_xml("AssignPrivateIpAddresses", inner)


def adopt_created_prefixes(body: bytes, backend: Any, prefixes: list[str]) -> bytes:
    """After moto created an ENI (CreateNetworkInterface): give it its prefixes and put
    them in the answer moto already rendered."""
    root, tag = parse_answer(body)
    interface = root.find(tag("networkInterface"))
    eni_id = interface.findtext(tag("networkInterfaceId")) if interface is not None else None
    if interface is None or eni_id not in backend.enis:
        raise RuntimeError(f"CreateNetworkInterface answer names no known ENI: {body[:200]!r}")
    set_eni_prefixes(backend.enis[eni_id], prefixes)
    for old in interface.findall(tag("ipv4PrefixSet")):
        interface.remove(old)
    listed = ET.SubElement(interface, tag("ipv4PrefixSet"))
    for prefix in prefixes:
        ET.SubElement(ET.SubElement(listed, tag("item")), tag("ipv4Prefix")).text = prefix
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def rewrite_free_counts(body: bytes, backend: Any, subnets: dict[str, Any],
                        prefixes_count: bool) -> bytes:
    """DescribeSubnets: each subnet's AvailableIpAddressCount as the layer counts it."""
    root, tag = parse_answer(body)
    for item in root.iter(tag("item")):
        subnet_id = item.findtext(tag("subnetId"))
        count = item.find(tag("availableIpAddressCount"))
        if subnet_id not in subnets or count is None:
            continue
        space = subnet_space(backend, subnets[subnet_id])
        if not prefixes_count:
            space = SubnetSpace(space.subnet_id, space.cidr, space.used)
        count.text = str(free_single_count(space))
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")
