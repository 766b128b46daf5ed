"""Subnet addresses as EC2 hands them out: AWS reserves five per subnet (network, router .1,
DNS .2, future .3, broadcast), so a /28 has 11 usable; every IPv4 address is unique across
the subnet. The strict layer picks addresses itself so moto never hands out a reserved or
duplicate address, and never spins looking for a free one in a full subnet."""
from __future__ import annotations

import ipaddress
import logging
import random
import threading
from typing import Any, Iterable

from lab.ec2.snapshot import iterate_instances
from lab.ec2.wire import Refusal

logger = logging.getLogger(__name__)

RESERVED_AT_START = 4  # network, router, DNS, future use
RESERVED_TOTAL = 5  # and broadcast


def usable_range(cidr: str) -> range:
    """Integer addresses a subnet can hand out."""
    network = ipaddress.IPv4Network(cidr)
    first = int(network.network_address) + RESERVED_AT_START
    last = int(network.broadcast_address)  # exclusive end: broadcast is reserved
    return range(first, max(first, last))


def used_addresses(backend: Any, subnet_id: str) -> set[str]:
    """Every IPv4 address held in the subnet: all ENIs' addresses and instances' primaries."""
    used = set()
    for eni in list(backend.enis.values()):
        if eni.subnet.id == subnet_id:
            used.update(a["PrivateIpAddress"] for a in eni.private_ip_addresses)
            if eni.private_ip_address:
                used.add(eni.private_ip_address)
    for instance in iterate_instances(backend):
        if instance.subnet_id == subnet_id and instance.state != "terminated":
            used.update(instance._private_ips)
    return used


def free_count(cidr: str, used: Iterable[str]) -> int:
    usable = usable_range(cidr)
    taken = sum(1 for a in set(used) if int(ipaddress.IPv4Address(a)) in usable)
    return len(usable) - taken


def check_requested(cidr: str, subnet_id: str, requested: list[str], used: set[str]) -> None:
    """Explicitly requested addresses must be valid, in the subnet's usable range, unused,
    and not repeated; otherwise refuse naming the address."""
    network = ipaddress.IPv4Network(cidr)
    usable = usable_range(cidr)
    seen: set[str] = set()
    for text in requested:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            raise Refusal("InvalidParameterValue", f"Invalid IPv4 address: {text!r}") from None
        if address not in network:
            raise Refusal("InvalidParameterValue",
                          f"Address {text} does not fall within the subnet's address range")
        if int(address) not in usable:
            raise Refusal("InvalidParameterValue",
                          f"Address {text} is in subnet's reserved address range")
        if text in used or text in seen:
            raise Refusal("InvalidIPAddress.InUse",
                          f"The specified address {text} is already in use in {subnet_id}")
        seen.add(text)


class AddressAllocator:
    """Picks free usable addresses; seeded, so a run can be repeated."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def allocate(self, cidr: str, subnet_id: str, count: int, used: set[str]) -> list[str]:
        """``count`` distinct free addresses (from a random point, wrapping around), or
        InsufficientFreeAddressesInSubnet when the subnet holds fewer."""
        usable = usable_range(cidr)
        available = free_count(cidr, used)
        if count > available:
            raise Refusal(
                "InsufficientFreeAddressesInSubnet",
                f"The specified subnet {subnet_id} does not have enough free addresses to "
                f"satisfy the request ({count} requested, {available} free).",
            )
        if count == 0:
            return []
        with self._lock:
            start = self._rng.randrange(len(usable))
        picked: list[str] = []
        for step in range(len(usable)):
            candidate = str(ipaddress.IPv4Address(usable[(start + step) % len(usable)]))
            if candidate not in used:
                picked.append(candidate)
                if len(picked) == count:
                    break
        return picked


def allocate_free(allocator: AddressAllocator, subnet: Any, count: int,
                  used: set[str]) -> list[str]:
    return allocator.allocate(subnet.cidr_block, subnet.id, count, used)
