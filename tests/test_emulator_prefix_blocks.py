"""The prefix arithmetic of the emulated EC2 (lab/ec2/prefixes.py) as tables: which aligned
/28 blocks of a subnet are free, which are handed out first, which named prefixes and
addresses are refused and why. Pure: no emulator, no HTTP."""
from __future__ import annotations

import ipaddress

import pytest

from lab.ec2.prefixes import (
    Reservation,
    SubnetSpace,
    addresses_closed_to_singles,
    aligned_blocks,
    block_obstacle,
    check_named_prefixes,
    check_named_singles,
    choose_prefixes,
    free_single_count,
    parse_prefix,
    reserved_addresses,
)
from lab.ec2.wire import Refusal

N = ipaddress.IPv4Network


def space(cidr: str = "10.0.0.0/24", used: tuple[str, ...] = (), prefixes: tuple[str, ...] = (),
          reservations: tuple[tuple[str, str], ...] = ()) -> SubnetSpace:
    return SubnetSpace(
        "subnet-1", N(cidr), frozenset(int(ipaddress.IPv4Address(a)) for a in used),
        tuple(N(p) for p in prefixes),
        tuple(Reservation(f"scr-{i}", N(c), kind) for i, (c, kind) in enumerate(reservations)))


@pytest.mark.parametrize("cidr, count, first, last", [
    ("10.0.0.0/24", 16, "10.0.0.0/28", "10.0.0.240/28"),
    ("10.0.0.0/26", 4, "10.0.0.0/28", "10.0.0.48/28"),
    ("10.0.0.64/28", 1, "10.0.0.64/28", "10.0.0.64/28"),
    ("10.0.0.0/29", 0, None, None),
    ("10.0.0.0/22", 64, "10.0.0.0/28", "10.0.3.240/28"),
])
def test_aligned_blocks(cidr, count, first, last):
    blocks = aligned_blocks(N(cidr))
    assert len(blocks) == count
    if count:
        assert (str(blocks[0]), str(blocks[-1])) == (first, last)
        assert all(int(b.network_address) % 16 == 0 and b.prefixlen == 28 for b in blocks)


def test_the_five_reserved_addresses():
    assert sorted(str(ipaddress.IPv4Address(a)) for a in reserved_addresses(N("10.0.4.0/26"))) \
        == ["10.0.4.0", "10.0.4.1", "10.0.4.2", "10.0.4.3", "10.0.4.63"]


@pytest.mark.parametrize("held, block, obstacle", [
    ({}, "10.0.0.16/28", None),
    ({}, "10.0.0.0/28", "holds the subnet's reserved address 10.0.0.0"),
    ({}, "10.0.0.240/28", "holds the subnet's reserved address 10.0.0.255"),
    ({"used": ("10.0.0.31",)}, "10.0.0.16/28", "overlaps the assigned address 10.0.0.31"),
    ({"used": ("10.0.0.32",)}, "10.0.0.16/28", None),  # the next block's first address
    ({"prefixes": ("10.0.0.16/28",)}, "10.0.0.16/28", "overlaps the assigned prefix 10.0.0.16/28"),
])
def test_block_obstacle_names_what_is_in_the_way(held, block, obstacle):
    assert block_obstacle(space(**held), N(block)) == obstacle


@pytest.mark.parametrize("held, count, expected", [
    # lowest first, clear of the reserved blocks 0 and 15
    ({}, 3, ["10.0.0.16/28", "10.0.0.32/28", "10.0.0.48/28"]),
    ({}, 14, [f"10.0.0.{16 * b}/28" for b in range(1, 15)]),
    ({"used": ("10.0.0.20", "10.0.0.40")}, 1, ["10.0.0.48/28"]),
    ({"prefixes": ("10.0.0.16/28",)}, 1, ["10.0.0.32/28"]),
    # prefix reservations first, explicit ones never
    ({"reservations": (("10.0.0.192/27", "prefix"),)}, 3,
     ["10.0.0.192/28", "10.0.0.208/28", "10.0.0.16/28"]),
    ({"reservations": (("10.0.0.16/28", "explicit"), ("10.0.0.40/29", "explicit"))}, 1,
     ["10.0.0.48/28"]),
    ({"cidr": "10.0.0.0/26"}, 2, ["10.0.0.16/28", "10.0.0.32/28"]),
])
def test_choose_prefixes(held, count, expected):
    assert [str(b) for b in choose_prefixes(space(**held), count)] == expected


@pytest.mark.parametrize("held, count, words", [
    ({}, 15, "15 /28 prefixes requested, 14 free aligned blocks, 251 free single addresses"),
    ({"used": tuple(f"10.0.0.{16 * b + 5}" for b in range(1, 15))}, 1,
     "1 /28 prefixes requested, 0 free aligned blocks, 237 free single addresses"),
    ({"cidr": "10.0.0.0/28"}, 1, "0 free aligned blocks, 11 free single addresses"),
    ({"cidr": "10.0.0.0/26", "reservations": (("10.0.0.0/26", "explicit"),)}, 1,
     "0 free aligned blocks"),
])
def test_no_free_block_is_insufficient_cidr_blocks_naming_the_counts(held, count, words):
    with pytest.raises(Refusal) as refused:
        choose_prefixes(space(**held), count)
    assert refused.value.code == "InsufficientCidrBlocks"
    assert "subnet-1" in refused.value.message and words in refused.value.message


def test_rules_switched_off_choose_blocks_the_rules_forbid():
    crowded = space(used=("10.0.0.20",), reservations=(("10.0.0.32/28", "explicit"),))
    assert [str(b) for b in choose_prefixes(crowded, 2, free_blocks_only=False)] == [
        "10.0.0.0/28", "10.0.0.16/28"]
    assert [str(b) for b in choose_prefixes(crowded, 1, honour_reservations=False)] == [
        "10.0.0.32/28"]


@pytest.mark.parametrize("text, code, words", [
    ("10.0.0.16/28", None, None),
    ("10.0.0.24/28", "InvalidParameterValue",
     "aligned on 16 addresses (did you mean 10.0.0.16/28?)"),
    ("10.0.0.16/27", "InvalidParameterValue", "/28 prefixes only, not /27"),
    ("10.0.0.16", "InvalidParameterValue", "/28 prefixes only, not /32"),
    ("10.0.0.300/28", "InvalidParameterValue", "expected an address/28"),
    ("", "InvalidParameterValue", "expected an address/28"),
    ("10.0.1.16/28", "InvalidParameterValue", "does not fall within the subnet's address range"),
])
def test_parse_prefix(text, code, words):
    if code is None:
        assert parse_prefix(text, space()) == N(text)
        return
    with pytest.raises(Refusal) as refused:
        parse_prefix(text, space())
    assert (refused.value.code, words in refused.value.message) == (code, True), refused.value


@pytest.mark.parametrize("texts, code, words", [
    (["10.0.0.16/28", "10.0.0.48/28"], None, None),
    (["10.0.0.16/28", "10.0.0.16/28"], "InvalidIPAddress.InUse", "named twice"),
    (["10.0.0.32/28"], "InvalidIPAddress.InUse", "assigned address 10.0.0.33"),
    (["10.0.0.64/28"], "InvalidIPAddress.InUse", "assigned prefix 10.0.0.64/28"),
    (["10.0.0.240/28"], "InvalidParameterValue", "reserved address 10.0.0.255"),
])
def test_check_named_prefixes(texts, code, words):
    held = space(used=("10.0.0.33",), prefixes=("10.0.0.64/28",),
                 reservations=(("10.0.0.48/28", "explicit"),))  # named may use explicit ones
    if code is None:
        assert [str(b) for b in check_named_prefixes(held, texts)] == texts
        return
    with pytest.raises(Refusal) as refused:
        check_named_prefixes(held, texts)
    assert (refused.value.code, words in refused.value.message) == (code, True), refused.value


def test_singles_named_or_automatic_keep_out_of_prefixes_and_reservations():
    held = space(prefixes=("10.0.0.16/28",), reservations=(("10.0.0.32/28", "prefix"),
                                                          ("10.0.0.48/28", "explicit")))
    for address, code, words in (("10.0.0.17", "InvalidIPAddress.InUse", "prefix 10.0.0.16/28"),
                                 ("10.0.0.40", "InvalidParameterValue", "scr-0")):
        with pytest.raises(Refusal) as refused:
            check_named_singles(held, [address])
        assert (refused.value.code, words in refused.value.message) == (code, True)
    check_named_singles(held, ["10.0.0.50", "10.0.0.70"])  # explicit: may be named
    automatic = addresses_closed_to_singles(held, automatic=True)
    named = addresses_closed_to_singles(held, automatic=False)
    assert len(automatic) == 48 and len(named) == 32 and "10.0.0.50" in automatic - named
    assert addresses_closed_to_singles(held, automatic=True, honour_reservations=False,
                                       prefixes_count=False) == set()


@pytest.mark.parametrize("held, free", [
    ({}, 251),
    ({"used": ("10.0.0.4", "10.0.0.5")}, 249),
    ({"used": ("10.0.0.4",), "prefixes": ("10.0.0.16/28", "10.0.0.32/28")}, 218),
    ({"reservations": (("10.0.0.16/28", "prefix"),)}, 251),  # reserved, still free
    ({"cidr": "10.0.0.0/28"}, 11),
])
def test_free_single_count(held, free):
    assert free_single_count(space(**held)) == free
