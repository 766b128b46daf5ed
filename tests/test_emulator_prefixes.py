"""Prefix delegation in the emulated EC2, proven over HTTP with plain boto3, each rule at its
exact number: slots shared by addresses and prefixes, free aligned /28 blocks,
InsufficientCidrBlocks on a fragmented subnet, Nitro only, subnet CIDR reservations.

Each rule test is also run with its rule switched off through the control API
(``test_each_rule_test_fails_with_its_rule_switched_off``), and must fail then; the whole
module can be run that way too: ``pytest tests/test_emulator_prefixes.py
--emulator-rules-off=all`` (or a comma-separated list of rule names).
"""
from __future__ import annotations

import ipaddress

import pytest
from botocore.exceptions import ClientError

from emulator_fixtures import (
    addresses_of,
    assign_prefixes,
    described,
    eni_with,
    free_count,
    inside,
    prefixes_of,
    refused,
    world_of,
)
from emulator_fixtures import *  # noqa: F401,F403 - the fixtures
from lab.ec2 import World

pytestmark = pytest.mark.timeout(180)


# --- slots: the per-type "IPv4 addresses per interface" counts prefixes too -----------------

def test_m5_large_primary_eni_takes_9_prefixes_and_refuses_the_10th_slot(emulator, ec2):
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    eni_id = node.primary_eni_id
    refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=eni_id, Ipv4PrefixCount=10)
    assert prefixes_of(ec2, eni_id) == []  # the refused batch changed nothing
    assert len(assign_prefixes(ec2, eni_id, 8)) == 8
    assert len(assign_prefixes(ec2, eni_id, 1)) == 1
    held = prefixes_of(ec2, eni_id)
    assert len(held) == 9 and sum(ipaddress.IPv4Network(p).num_addresses for p in held) == 144
    message = refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
                      NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
    assert "m5.large allows 10" in message and "9 prefixes" in message
    # addresses and prefixes share the slots: no secondary address fits either
    refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=1)
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4Prefixes=held[:2])
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=1)
    assert len(assign_prefixes(ec2, eni_id, 1)) == 1
    refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
    assert (len(addresses_of(ec2, eni_id)), len(prefixes_of(ec2, eni_id))) == (2, 8)


def test_t3_small_holds_3_prefixes_per_eni_48_addresses_and_attach_counts_them(emulator, ec2):
    world = world_of(emulator, "t3.small")
    node = world.instances[0]
    assert len(assign_prefixes(ec2, node.primary_eni_id, 3)) == 3
    refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, Ipv4PrefixCount=1)
    full = ec2.create_network_interface(SubnetId=world.subnet_ids[0],
                                        Ipv4PrefixCount=3)["NetworkInterface"]
    over = ec2.create_network_interface(SubnetId=world.subnet_ids[0],
                                        Ipv4PrefixCount=4)["NetworkInterface"]
    assert len(full["Ipv4Prefixes"]) == 3 and len(over["Ipv4Prefixes"]) == 4
    message = refused("AttachmentLimitExceeded", ec2.attach_network_interface,
                      NetworkInterfaceId=over["NetworkInterfaceId"],
                      InstanceId=node.instance_id, DeviceIndex=1)
    assert "t3.small allows 4" in message and "5 slots" in message
    assert described(ec2, over["NetworkInterfaceId"])["Status"] == "available"
    ec2.attach_network_interface(NetworkInterfaceId=full["NetworkInterfaceId"],
                                 InstanceId=node.instance_id, DeviceIndex=1)
    for eni_id in (node.primary_eni_id, full["NetworkInterfaceId"]):
        held = prefixes_of(ec2, eni_id)
        assert sum(ipaddress.IPv4Network(p).num_addresses for p in held) == 48


# --- blocks: aligned /28s clear of every address, prefix and reserved address -----------------

def test_prefixes_are_free_aligned_blocks_and_named_ones_are_checked(emulator, ec2):
    """A /26 has four aligned /28s: .0 holds the reserved .0-.3 (and the node at .4), .48
    holds the broadcast .63; an address at .20 takes .16; so .32/28 is the only one."""
    world = world_of(emulator, "m5.large", subnet="10.0.0.0/26")
    eni_id = world.instances[0].primary_eni_id
    holder = eni_with(ec2, world, ["10.0.0.20"])
    assert free_count(ec2, world.subnet_ids[0]) == 59 - 2
    assert assign_prefixes(ec2, eni_id, 1) == ["10.0.0.32/28"]
    assert free_count(ec2, world.subnet_ids[0]) == 59 - 2 - 16
    message = refused("InsufficientCidrBlocks", ec2.assign_private_ip_addresses,
                      NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
    assert world.subnet_ids[0] in message and "41 free single addresses" in message
    for prefix, code, words in (
        ("10.0.0.40/28", "InvalidParameterValue", "aligned"),
        ("10.0.0.32/27", "InvalidParameterValue", "/28 prefixes only"),
        ("10.0.0.0/28", "InvalidParameterValue", "reserved address 10.0.0.0"),
        ("10.0.0.48/28", "InvalidParameterValue", "reserved address 10.0.0.63"),
        ("10.0.0.16/28", "InvalidIPAddress.InUse", "assigned address 10.0.0.20"),
        ("10.0.0.32/28", "InvalidIPAddress.InUse", "assigned prefix 10.0.0.32/28"),
        ("10.0.1.16/28", "InvalidParameterValue", "does not fall within"),
    ):
        message = refused(code, ec2.assign_private_ip_addresses, NetworkInterfaceId=eni_id,
                          Ipv4Prefixes=[prefix])
        assert words in message, (prefix, message)
    ec2.delete_network_interface(NetworkInterfaceId=holder)  # .16/28 is free again
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4Prefixes=["10.0.0.16/28"])
    assert prefixes_of(ec2, eni_id) == ["10.0.0.32/28", "10.0.0.16/28"]


def test_single_addresses_and_the_free_count_leave_prefixes_alone(emulator, ec2):
    """A /26 with .16/28 and .32/28 as prefixes has 59 - 1 - 32 = 26 addresses for singles:
    exactly 26 more are handed out, none inside a prefix, then the subnet is full."""
    world = world_of(emulator, "m5.24xlarge", subnet="10.0.0.0/26")
    node = world.instances[0]
    prefixes = assign_prefixes(ec2, node.primary_eni_id, 2)
    assert prefixes == ["10.0.0.16/28", "10.0.0.32/28"]
    assert free_count(ec2, world.subnet_ids[0]) == 26
    refused("InvalidIPAddress.InUse", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, PrivateIpAddresses=["10.0.0.33"])
    refused("InsufficientFreeAddressesInSubnet", ec2.create_network_interface,
            SubnetId=world.subnet_ids[0], SecondaryPrivateIpAddressCount=26)
    eni_id = ec2.create_network_interface(SubnetId=world.subnet_ids[0],
                                          SecondaryPrivateIpAddressCount=25)[
        "NetworkInterface"]["NetworkInterfaceId"]
    singles = addresses_of(ec2, eni_id)
    assert len(singles) == 26 and not [a for a in singles if inside(prefixes, a)]
    assert free_count(ec2, world.subnet_ids[0]) == 0
    refused("InsufficientFreeAddressesInSubnet", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, SecondaryPrivateIpAddressCount=1)


def fragment(ec2, world: World, skip: tuple[int, ...] = ()) -> str:
    """One address (offset 5) inside each aligned /28 of 10.0.0.0/24 that could be a prefix
    (blocks 1 to 14; block 0 holds .0-.3, block 15 the broadcast), on one unattached ENI."""
    addresses = [f"10.0.0.{16 * block + 5}" for block in range(1, 15) if block not in skip]
    return eni_with(ec2, world, addresses)


def test_a_fragmented_24_refuses_a_prefix_while_single_addresses_remain(emulator, ec2):
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    subnet_id = world.subnet_ids[0]
    fragmenter = fragment(ec2, world)
    assert free_count(ec2, subnet_id) == 251 - 1 - 14
    message = refused("InsufficientCidrBlocks", ec2.assign_private_ip_addresses,
                      NetworkInterfaceId=node.primary_eni_id, Ipv4PrefixCount=1)
    assert "236 free single addresses" in message and subnet_id in message
    before = {e["NetworkInterfaceId"] for e in ec2.describe_network_interfaces(
        Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])["NetworkInterfaces"]}
    refused("InsufficientCidrBlocks", ec2.create_network_interface, SubnetId=subnet_id,
            Ipv4PrefixCount=1)
    after = {e["NetworkInterfaceId"] for e in ec2.describe_network_interfaces(
        Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])["NetworkInterfaces"]}
    assert after == before  # the refused create left no ENI
    ec2.assign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                    SecondaryPrivateIpAddressCount=9)  # singles still come
    assert prefixes_of(ec2, node.primary_eni_id) == []
    # freeing the one address inside 10.0.0.112/28 frees exactly that block
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=fragmenter,
                                      PrivateIpAddresses=["10.0.0.117"])
    refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, Ipv4PrefixCount=1)  # its 10 slots are full
    other = ec2.create_network_interface(SubnetId=subnet_id, Ipv4PrefixCount=1)[
        "NetworkInterface"]
    assert [p["Ipv4Prefix"] for p in other["Ipv4Prefixes"]] == ["10.0.0.112/28"]
    assert not inside(["10.0.0.112/28"], other["PrivateIpAddress"])


# --- subnet CIDR reservations -------------------------------------------------------------

def test_a_prefix_reservation_made_beforehand_still_gives_a_prefix_in_a_fragmented_24(
        emulator, ec2):
    """10.0.0.128/28 reserved for prefixes; every other block fragmented; then every
    other free address taken by automatic singles (251 - 1 - 13 - 16 = 221): not one lands
    in the reservation, which still gives exactly one prefix."""
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    subnet_id = world.subnet_ids[0]
    reservation = ec2.create_subnet_cidr_reservation(
        SubnetId=subnet_id, Cidr="10.0.0.128/28", ReservationType="prefix")[
        "SubnetCidrReservation"]
    fragment(ec2, world, skip=(8,))
    message = refused("InvalidParameterValue", ec2.create_network_interface,
                      SubnetId=subnet_id, PrivateIpAddress="10.0.0.133")
    assert reservation["SubnetCidrReservationId"] in message
    filler = ec2.create_network_interface(SubnetId=subnet_id,
                                          SecondaryPrivateIpAddressCount=220)[
        "NetworkInterface"]
    singles = [a["PrivateIpAddress"] for a in filler["PrivateIpAddresses"]]
    assert len(singles) == 221 and not [a for a in singles if inside(["10.0.0.128/28"], a)]
    refused("InsufficientFreeAddressesInSubnet", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, SecondaryPrivateIpAddressCount=1)
    assert free_count(ec2, subnet_id) == 16  # the reserved block: free, for prefixes only
    assert assign_prefixes(ec2, node.primary_eni_id, 1) == ["10.0.0.128/28"]
    refused("InsufficientCidrBlocks", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, Ipv4PrefixCount=1)
    assert free_count(ec2, subnet_id) == 0


def test_an_explicit_reservation_is_used_by_neither_automatic_assignment(emulator, ec2):
    """/26: .16/28 reserved explicit; .32/28 is then the only block automatic prefixes get,
    and automatic singles get 59 - 1 - 16 - 16 = 26; named ones may use the reservation."""
    world = world_of(emulator, "m5.24xlarge", subnet="10.0.0.0/26")
    node = world.instances[0]
    subnet_id = world.subnet_ids[0]
    ec2.create_subnet_cidr_reservation(SubnetId=subnet_id, Cidr="10.0.0.16/28",
                                       ReservationType="explicit")
    assert assign_prefixes(ec2, node.primary_eni_id, 1) == ["10.0.0.32/28"]
    refused("InsufficientCidrBlocks", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, Ipv4PrefixCount=1)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                    Ipv4Prefixes=["10.0.0.16/28"])  # named: allowed
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                      Ipv4Prefixes=["10.0.0.16/28"])
    singles = [a["PrivateIpAddress"] for a in ec2.assign_private_ip_addresses(
        NetworkInterfaceId=node.primary_eni_id,
        SecondaryPrivateIpAddressCount=26)["AssignedPrivateIpAddresses"]]
    assert len(singles) == 26 and not [a for a in singles if inside(["10.0.0.16/28"], a)]
    refused("InsufficientFreeAddressesInSubnet", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, SecondaryPrivateIpAddressCount=1)
    assert free_count(ec2, subnet_id) == 16
    ec2.assign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                    PrivateIpAddresses=["10.0.0.20"])  # named: allowed


# --- Nitro only --------------------------------------------------------------------------

def test_prefixes_are_refused_on_a_type_that_is_not_nitro(emulator, ec2):
    world = world_of(emulator, "t2.medium")
    node = world.instances[0]
    message = refused("InvalidParameterValue", ec2.assign_private_ip_addresses,
                      NetworkInterfaceId=node.primary_eni_id, Ipv4PrefixCount=1)
    assert "t2.medium" in message and "Nitro" in message
    assert prefixes_of(ec2, node.primary_eni_id) == []
    loose = ec2.create_network_interface(SubnetId=world.subnet_ids[0],
                                         Ipv4PrefixCount=1)["NetworkInterface"]
    message = refused("InvalidParameterValue", ec2.attach_network_interface,
                      NetworkInterfaceId=loose["NetworkInterfaceId"],
                      InstanceId=node.instance_id, DeviceIndex=1)
    assert "t2.medium" in message and "Nitro" in message
    assert described(ec2, loose["NetworkInterfaceId"])["Status"] == "available"
    # single secondary addresses are what a t2 can have
    ec2.assign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                    SecondaryPrivateIpAddressCount=5)
    assert len(addresses_of(ec2, node.primary_eni_id)) == 6


RULE_TESTS = [
    ("prefix-slots", test_m5_large_primary_eni_takes_9_prefixes_and_refuses_the_10th_slot),
    ("prefix-slots", test_t3_small_holds_3_prefixes_per_eni_48_addresses_and_attach_counts_them),
    ("prefix-blocks", test_prefixes_are_free_aligned_blocks_and_named_ones_are_checked),
    ("prefix-blocks", test_single_addresses_and_the_free_count_leave_prefixes_alone),
    ("prefix-blocks", test_a_fragmented_24_refuses_a_prefix_while_single_addresses_remain),
    ("cidr-reservations",
     test_a_prefix_reservation_made_beforehand_still_gives_a_prefix_in_a_fragmented_24),
    ("cidr-reservations", test_an_explicit_reservation_is_used_by_neither_automatic_assignment),
    ("prefix-nitro", test_prefixes_are_refused_on_a_type_that_is_not_nitro),
]


@pytest.mark.parametrize("rule, rule_test", RULE_TESTS,
                         ids=[f"{rule}-{test.__name__[5:40]}" for rule, test in RULE_TESTS])
def test_each_rule_test_fails_with_its_rule_switched_off(emulator, ec2, rule, rule_test):
    """The rule tests above pass with every rule on (their own runs); with their rule
    switched off, and nothing else changed, each must fail."""
    before = emulator.control.rules_off()
    emulator.control.set_rules_off(sorted(set(before) | {rule}))
    try:
        with pytest.raises((AssertionError, ClientError, pytest.fail.Exception)):
            rule_test(emulator, ec2)
    finally:
        emulator.control.set_rules_off(before)
