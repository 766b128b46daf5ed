"""Prefix calls of the emulated EC2 besides its rules, over HTTP with plain boto3: every
listing (DescribeNetworkInterfaces by id and by filter, DescribeInstances, the snapshot)
shows the strict layer's prefixes alike across calls, unassign returns only what the ENI
holds, bad requests are refused by name and change nothing, and subnet CIDR reservations
are kept, listed and deleted."""
from __future__ import annotations

import ipaddress

import pytest

from emulator_fixtures import (
    addresses_of,
    assign_prefixes,
    free_count,
    prefixes_of,
    refused,
    world_of,
)
from emulator_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(180)


# --- what is listed, what is refused, and that a refusal changes nothing --------------------

def test_every_listing_shows_the_strict_layers_prefixes_alike_across_calls(emulator, ec2):
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    created = ec2.create_network_interface(SubnetId=world.subnet_ids[0],
                                           Ipv4PrefixCount=2)["NetworkInterface"]
    ec2.attach_network_interface(NetworkInterfaceId=created["NetworkInterfaceId"],
                                 InstanceId=node.instance_id, DeviceIndex=1)
    mine = assign_prefixes(ec2, node.primary_eni_id, 3)
    theirs = [p["Ipv4Prefix"] for p in created["Ipv4Prefixes"]]
    expected = {node.primary_eni_id: mine, created["NetworkInterfaceId"]: theirs}

    def by_filter() -> dict[str, list[str]]:
        found = ec2.describe_network_interfaces(Filters=[
            {"Name": "attachment.instance-id", "Values": [node.instance_id]}])
        return {e["NetworkInterfaceId"]: [p["Ipv4Prefix"] for p in e.get("Ipv4Prefixes", [])]
                for e in found["NetworkInterfaces"]}

    def by_instance() -> dict[str, list[str]]:
        instance = ec2.describe_instances(InstanceIds=[node.instance_id])[
            "Reservations"][0]["Instances"][0]
        return {e["NetworkInterfaceId"]: [p["Ipv4Prefix"] for p in e.get("Ipv4Prefixes", [])]
                for e in instance["NetworkInterfaces"]}

    def by_snapshot() -> dict[str, list[str]]:
        return {e["id"]: e["prefixes"] for e in emulator.control.snapshot()["enis"]
                if e["instance_id"] == node.instance_id}

    for _ in range(3):
        assert by_filter() == by_instance() == by_snapshot() == expected
        assert {k: prefixes_of(ec2, k) for k in expected} == expected
    every = [ipaddress.IPv4Network(p) for p in mine + theirs]
    assert len(set(every)) == 5 and all(p.prefixlen == 28 for p in every)
    assert free_count(ec2, world.subnet_ids[0]) == 251 - 2 - 5 * 16
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                      Ipv4Prefixes=[mine[1]])
    expected[node.primary_eni_id] = [mine[0], mine[2]]
    assert by_filter() == by_instance() == by_snapshot() == expected
    assert free_count(ec2, world.subnet_ids[0]) == 251 - 2 - 4 * 16


def test_unassign_returns_only_held_prefixes_and_a_freed_block_is_reused(emulator, ec2):
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    mine = assign_prefixes(ec2, node.primary_eni_id, 2)
    other = ec2.create_network_interface(SubnetId=world.subnet_ids[0], Ipv4PrefixCount=1,
                                         )["NetworkInterface"]
    foreign = other["Ipv4Prefixes"][0]["Ipv4Prefix"]
    for bad in ([foreign], ["10.0.0.240/28"], [mine[0], "not-a-prefix"]):
        message = refused("InvalidParameterValue", ec2.unassign_private_ip_addresses,
                          NetworkInterfaceId=node.primary_eni_id, Ipv4Prefixes=bad)
        assert "not assigned to interface" in message and bad[-1] in message
    assert prefixes_of(ec2, node.primary_eni_id) == mine  # nothing was taken back
    secondary = ec2.assign_private_ip_addresses(
        NetworkInterfaceId=node.primary_eni_id,
        SecondaryPrivateIpAddressCount=1)["AssignedPrivateIpAddresses"][0]["PrivateIpAddress"]
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                      PrivateIpAddresses=[secondary], Ipv4Prefixes=[mine[0]])
    assert prefixes_of(ec2, node.primary_eni_id) == [mine[1]]
    assert addresses_of(ec2, node.primary_eni_id) == [node.primary_ip]
    assert assign_prefixes(ec2, node.primary_eni_id, 1) == [mine[0]]  # lowest free again


def test_bad_prefix_requests_are_refused_by_name_and_change_nothing(emulator, ec2):
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    subnet_id = world.subnet_ids[0]
    held = assign_prefixes(ec2, node.primary_eni_id, 1)
    free = free_count(ec2, subnet_id)
    enis = len(ec2.describe_network_interfaces(
        Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])["NetworkInterfaces"])
    assign = ec2.assign_private_ip_addresses
    for call, kwargs, code, words in (
        (assign, {"Ipv4PrefixCount": 1, "Ipv4Prefixes": ["10.0.0.64/28"]},
         "InvalidParameterCombination", "Ipv4PrefixCount"),
        (assign, {"Ipv4PrefixCount": 1, "SecondaryPrivateIpAddressCount": 1},
         "InvalidParameterCombination", "not both"),
        (assign, {"Ipv4Prefixes": ["10.0.0.64/28"], "PrivateIpAddresses": ["10.0.0.99"]},
         "InvalidParameterCombination", "not both"),
        (assign, {"Ipv4PrefixCount": -1}, "InvalidParameterValue", "Ipv4PrefixCount must be"),
        (assign, {"Ipv4Prefixes": ["10.0.0.64/28", "10.0.0.64/28"]},
         "InvalidIPAddress.InUse", "named twice"),
        (assign, {"Ipv4Prefixes": ["10.0.0.64/28", "10.0.0.8/28"]},
         "InvalidParameterValue", "aligned"),
        (ec2.create_network_interface, {"Ipv4PrefixCount": 1, "SecondaryPrivateIpAddressCount": 2},
         "InvalidParameterCombination", "not both"),
        (ec2.create_network_interface, {"Ipv4Prefixes": [{"Ipv4Prefix": held[0]}]},
         "InvalidIPAddress.InUse", held[0]),
    ):
        target = {"NetworkInterfaceId": node.primary_eni_id} if call is assign else {
            "SubnetId": subnet_id}
        message = refused(code, call, **target, **kwargs)
        assert words in message, (kwargs, message)
    assert prefixes_of(ec2, node.primary_eni_id) == held
    assert addresses_of(ec2, node.primary_eni_id) == [node.primary_ip]
    assert free_count(ec2, subnet_id) == free
    assert len(ec2.describe_network_interfaces(
        Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])["NetworkInterfaces"]) == enis


def test_subnet_cidr_reservations_are_kept_listed_and_deleted(emulator, ec2):
    world = world_of(emulator, "m5.large", subnet="10.0.0.0/26")
    subnet_id = world.subnet_ids[0]
    made = [ec2.create_subnet_cidr_reservation(SubnetId=subnet_id, Cidr=cidr,
                                               ReservationType=kind)["SubnetCidrReservation"]
            for cidr, kind in (("10.0.0.16/28", "prefix"), ("10.0.0.32/28", "explicit"))]
    listed = ec2.get_subnet_cidr_reservations(SubnetId=subnet_id)["SubnetIpv4CidrReservations"]
    assert sorted((r["Cidr"], r["ReservationType"]) for r in listed) == [
        ("10.0.0.16/28", "prefix"), ("10.0.0.32/28", "explicit")]
    snapshot = {s["id"]: s for s in emulator.control.snapshot()["subnets"]}[subnet_id]
    assert sorted(r["type"] for r in snapshot["cidr_reservations"]) == ["explicit", "prefix"]
    refused("InvalidSubnetID.NotFound", ec2.create_subnet_cidr_reservation,
            SubnetId="subnet-00000000000000000", Cidr="10.0.0.48/28", ReservationType="prefix")
    refused("InvalidParameterValue", ec2.create_subnet_cidr_reservation, SubnetId=subnet_id,
            Cidr="10.0.0.48/28", ReservationType="sometimes")
    refused("InvalidParameterValue", ec2.create_subnet_cidr_reservation, SubnetId=subnet_id,
            Cidr="10.0.0.24/29", ReservationType="prefix")  # overlaps the first
    refused("InvalidSubnetCidrReservationID.NotFound", ec2.delete_subnet_cidr_reservation,
            SubnetCidrReservationId="scr-00000000000000000")
    assert len(ec2.get_subnet_cidr_reservations(SubnetId=subnet_id)[
        "SubnetIpv4CidrReservations"]) == 2
    # both reservations keep automatic singles out: 59 - 1 - 32 = 26 for them
    refused("InsufficientFreeAddressesInSubnet", ec2.create_network_interface,
            SubnetId=subnet_id, SecondaryPrivateIpAddressCount=26)
    ec2.delete_subnet_cidr_reservation(SubnetCidrReservationId=made[0]["SubnetCidrReservationId"])
    assert [r["Cidr"] for r in ec2.get_subnet_cidr_reservations(SubnetId=subnet_id)[
        "SubnetIpv4CidrReservations"]] == ["10.0.0.32/28"]
    # deleted, its 16 addresses are open to singles again: 26 + 16 = 42
    loose = ec2.create_network_interface(SubnetId=subnet_id,
                                         SecondaryPrivateIpAddressCount=41)["NetworkInterface"]
    assert len(loose["PrivateIpAddresses"]) == 42
