"""IPv4 prefix delegation as arithmetic, pure: no moto, no lock, no HTTP. What a subnet
holds comes in as a ``SubnetSpace``; the answers are blocks, addresses, or a Refusal.

EC2's rules modelled here:
- a prefix is a /28 aligned on 16 addresses, inside its subnet;
- a block is free when it overlaps no assigned address (primary or secondary, of any ENI
  or instance in the subnet), no other prefix, and none of the subnet's five reserved
  addresses (network, .1, .2, .3, broadcast): a /28 holding one of them is never free;
- with no free block EC2 answers InsufficientCidrBlocks, even while single addresses remain;
- subnet CIDR reservations: a ``prefix`` reservation is used only for prefixes (automatic
  prefixes come from it first; a single address is never taken from it, automatically or by
  name); an ``explicit`` reservation is used by neither automatic assignment (what a request
  names may use it).

Choices where EC2 does not document its behaviour: automatic prefixes are taken lowest
address first (reserved blocks before the rest), so a run is repeatable; an address or
prefix named by the request that overlaps an assigned one is InvalidIPAddress.InUse.
"""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from lab.ec2.wire import Refusal

logger = logging.getLogger(__name__)

PREFIX_LEN = 28
PREFIX_SIZE = 16
RESERVATION_TYPES = ("prefix", "explicit")

Network = ipaddress.IPv4Network


@dataclass(frozen=True)
class Reservation:
    """A subnet CIDR reservation (CreateSubnetCidrReservation)."""

    id: str
    cidr: Network
    kind: str  # "prefix" | "explicit"


@dataclass(frozen=True)
class SubnetSpace:
    """What one subnet holds, as the prefix rules see it. ``used`` are the single addresses
    assigned in it (as integers), ``prefixes`` the assigned /28 blocks."""

    subnet_id: str
    cidr: Network
    used: frozenset[int] = frozenset()
    prefixes: tuple[Network, ...] = ()
    reservations: tuple[Reservation, ...] = ()
    _prefix_addresses: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        held = frozenset(a for p in self.prefixes for a in network_range(p))
        object.__setattr__(self, "_prefix_addresses", held)

    @property
    def reserved(self) -> frozenset[int]:
        return reserved_addresses(self.cidr)

    @property
    def prefix_addresses(self) -> frozenset[int]:
        return self._prefix_addresses

    def used_texts(self) -> set[str]:
        return {str(ipaddress.IPv4Address(a)) for a in self.used}

    def with_addresses(self, addresses: Iterable[str]) -> SubnetSpace:
        """The same space with more single addresses taken (chosen in the same call)."""
        more = {int(ipaddress.IPv4Address(a)) for a in addresses}
        return SubnetSpace(self.subnet_id, self.cidr, self.used | more, self.prefixes,
                           self.reservations)

    def reserved_for(self, kind: str) -> frozenset[int]:
        return frozenset(a for r in self.reservations if r.kind == kind
                         for a in network_range(r.cidr))


def network_range(network: Network) -> range:
    return range(int(network.network_address), int(network.broadcast_address) + 1)


def reserved_addresses(cidr: Network) -> frozenset[int]:
    """The five addresses AWS keeps in every subnet: network, .1, .2, .3, broadcast."""
    first = int(cidr.network_address)
    return frozenset({first, first + 1, first + 2, first + 3, int(cidr.broadcast_address)})


def aligned_blocks(cidr: Network) -> list[Network]:
    """Every /28 aligned on 16 inside the subnet (none in a subnet smaller than a /28)."""
    if cidr.prefixlen > PREFIX_LEN:
        return []
    return list(cidr.subnets(new_prefix=PREFIX_LEN))


def block_obstacle(space: SubnetSpace, block: Network) -> str | None:
    """Why ``block`` cannot be a new prefix (the first obstacle, named), or None if free."""
    for prefix in space.prefixes:
        if prefix.overlaps(block):
            return f"overlaps the assigned prefix {prefix}"
    span = network_range(block)
    reserved = sorted(a for a in space.reserved if a in span)
    if reserved:
        return f"holds the subnet's reserved address {ipaddress.IPv4Address(reserved[0])}"
    taken = sorted(a for a in space.used if a in span)
    if taken:
        return f"overlaps the assigned address {ipaddress.IPv4Address(taken[0])}"
    return None


def choose_prefixes(space: SubnetSpace, count: int, *, free_blocks_only: bool = True,
                    honour_reservations: bool = True) -> list[Network]:
    """``count`` blocks for automatic assignment: free blocks inside ``prefix``
    reservations first, then free blocks outside every reservation, each lowest first.
    InsufficientCidrBlocks (naming the subnet and the counts) when fewer are free.

    ``free_blocks_only=False`` and ``honour_reservations=False`` switch those rules off
    (the emulator's control API, to show a test fails without them)."""
    if count <= 0:
        return []
    explicit = space.reserved_for("explicit") if honour_reservations else frozenset()
    for_prefixes = space.reserved_for("prefix") if honour_reservations else frozenset()
    # a block is free when none of its 16 addresses is taken: index blocks by address >> 4
    taken = space.used | space.reserved | space.prefix_addresses if free_blocks_only \
        else frozenset(int(p.network_address) for p in space.prefixes)
    occupied = {a >> 4 for a in taken}
    preferred: list[Network] = []
    others: list[Network] = []
    for block in aligned_blocks(space.cidr):
        if int(block.network_address) >> 4 in occupied:
            continue
        span = network_range(block)
        if any(a in explicit for a in span):
            continue
        (preferred if all(a in for_prefixes for a in span) else others).append(block)
    free = preferred + others
    if count > len(free):
        raise Refusal(
            "InsufficientCidrBlocks",
            f"The specified subnet {space.subnet_id} does not have enough free cidr blocks to "
            f"satisfy the request ({count} /{PREFIX_LEN} prefixes requested, {len(free)} free "
            f"aligned blocks, {free_single_count(space)} free single addresses).",
        )
    return free[:count]


def parse_prefix(text: str, space: SubnetSpace) -> Network:
    """A named prefix: a valid IPv4 /28 aligned on 16, inside the subnet; refused naming
    the problem otherwise."""
    try:
        network = ipaddress.IPv4Network(text, strict=False)
        address = ipaddress.IPv4Address(text.split("/")[0])
    except ValueError:
        raise Refusal("InvalidParameterValue",
                      f"Invalid IPv4 prefix {text!r}: expected an address/28 such as "
                      f"10.0.0.16/28") from None
    if network.prefixlen != PREFIX_LEN:
        raise Refusal("InvalidParameterValue",
                      f"Invalid IPv4 prefix {text}: prefix delegation assigns /{PREFIX_LEN} "
                      f"prefixes only, not /{network.prefixlen}")
    if address != network.network_address:
        raise Refusal("InvalidParameterValue",
                      f"Invalid IPv4 prefix {text}: a /{PREFIX_LEN} must be aligned on "
                      f"{PREFIX_SIZE} addresses (did you mean {network}?)")
    if not network.subnet_of(space.cidr):
        raise Refusal("InvalidParameterValue",
                      f"Prefix {network} does not fall within the subnet's address range "
                      f"{space.cidr}")
    return network


def check_named_prefixes(space: SubnetSpace, texts: list[str], *,
                         free_blocks_only: bool = True) -> list[Network]:
    """Prefixes named by a request: each aligned, inside the subnet, free, not repeated."""
    chosen: list[Network] = []
    for text in texts:
        if free_blocks_only:
            block = parse_prefix(text, space)
        else:
            try:
                block = ipaddress.IPv4Network(text, strict=False)
            except ValueError:
                raise Refusal("InvalidParameterValue", f"Invalid IPv4 prefix {text!r}") from None
        obstacle = block_obstacle(space, block) if free_blocks_only else None
        if obstacle is not None and "reserved address" in obstacle:
            raise Refusal("InvalidParameterValue", f"Prefix {block} {obstacle}")
        if obstacle is not None or block in chosen:
            raise Refusal("InvalidIPAddress.InUse",
                          f"The prefix {block} is already in use in {space.subnet_id}"
                          + (f": it {obstacle}" if obstacle else " (named twice)"))
        chosen.append(block)
    return chosen


def addresses_closed_to_singles(space: SubnetSpace, *, automatic: bool,
                                honour_reservations: bool = True,
                                prefixes_count: bool = True) -> set[str]:
    """Addresses a single address may not be taken from, beyond those already assigned:
    inside assigned prefixes; inside ``prefix`` reservations; for automatic assignment,
    inside ``explicit`` reservations too."""
    closed: set[int] = set(space.prefix_addresses) if prefixes_count else set()
    if honour_reservations:
        closed |= space.reserved_for("prefix")
        if automatic:
            closed |= space.reserved_for("explicit")
    return {str(ipaddress.IPv4Address(a)) for a in closed}


def check_named_singles(space: SubnetSpace, addresses: list[str], *,
                        honour_reservations: bool = True, prefixes_count: bool = True) -> None:
    """Single addresses named by a request: none inside an assigned prefix (in use) or a
    ``prefix`` reservation (kept for prefixes). Malformed ones are left to the caller."""
    for text in addresses:
        try:
            value = int(ipaddress.IPv4Address(text))
        except ValueError:
            continue
        if prefixes_count:
            for prefix in space.prefixes:
                if value in network_range(prefix):
                    raise Refusal("InvalidIPAddress.InUse",
                                  f"The specified address {text} is already in use in "
                                  f"{space.subnet_id}: it is inside the assigned prefix {prefix}")
        if honour_reservations:
            for reservation in space.reservations:
                if reservation.kind == "prefix" and value in network_range(reservation.cidr):
                    raise Refusal("InvalidParameterValue",
                                  f"Address {text} is inside the subnet CIDR reservation "
                                  f"{reservation.id} ({reservation.cidr}, type prefix), which "
                                  "is kept for prefixes")


def free_single_count(space: SubnetSpace) -> int:
    """Usable addresses held neither as a single address nor inside a prefix."""
    usable = network_range(space.cidr)
    taken = space.reserved | space.used | space.prefix_addresses
    return len(usable) - sum(1 for a in taken if a in usable)
