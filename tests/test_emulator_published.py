"""The emulated EC2 against EC2's published API behaviour, over HTTP with plain boto3: each
test names the published fact it checks and holds at its exact number. Sources:

- EC2 API reference (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/, the text
  botocore's ec2 model carries): CreateNetworkInterface's exclusions between
  PrivateIpAddresses, SecondaryPrivateIpAddressCount, Ipv4Prefixes, Ipv4PrefixCount and
  the one primary address; SubnetCidrReservation's Description and Tags;
  GetSubnetCidrReservations' filters (tag:<key>, tag-key, reservationType) and paging
  (MaxResults 5 to 1000, NextToken); DescribeNetworkInterfaces' filter list.
- EC2 user guide, "Work with prefixes"
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-prefixes.html): the
  examples of AssignPrivateIpAddresses with a prefix count (NetworkInterfaceId and
  AssignedIpv4Prefixes only) and of DescribeNetworkInterfaces ("Ipv4Prefixes": [] on an
  ENI without IPv4 prefixes).

None of these is a switchable rule (settings.SWITCHABLE_RULES): they are parameter checks
and answer shapes, on whatever ``--emulator-rules-off`` says.
"""
from __future__ import annotations

import pytest

from emulator_fixtures import described, free_count, prefixes_of, refused, world_of
from emulator_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(180)


def enis_in(ec2, subnet_id: str) -> int:
    return len(ec2.describe_network_interfaces(
        Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])["NetworkInterfaces"])


def test_create_eni_refuses_listed_addresses_with_prefixes_even_one_primary(emulator, ec2):
    world = world_of(emulator, "m5.large")
    subnet_id = world.subnet_ids[0]
    before, free = enis_in(ec2, subnet_id), free_count(ec2, subnet_id)
    one = [{"PrivateIpAddress": "10.0.0.200", "Primary": True}]
    for prefixes in ({"Ipv4PrefixCount": 1}, {"Ipv4Prefixes": [{"Ipv4Prefix": "10.0.0.64/28"}]}):
        message = refused("InvalidParameterCombination", ec2.create_network_interface,
                          SubnetId=subnet_id, PrivateIpAddresses=one, **prefixes)
        assert "PrivateIpAddresses" in message
    assert (enis_in(ec2, subnet_id), free_count(ec2, subnet_id)) == (before, free)
    # the primary named on its own (PrivateIpAddress) is not a list of addresses
    made = ec2.create_network_interface(SubnetId=subnet_id, PrivateIpAddress="10.0.0.200",
                                        Ipv4PrefixCount=1)["NetworkInterface"]
    assert made["PrivateIpAddress"] == "10.0.0.200"
    assert len(prefixes_of(ec2, made["NetworkInterfaceId"])) == 1


def test_create_eni_refuses_a_secondary_count_with_two_listed_addresses_not_one(emulator, ec2):
    world = world_of(emulator, "m5.large")
    subnet_id = world.subnet_ids[0]
    before = enis_in(ec2, subnet_id)
    two = [{"PrivateIpAddress": "10.0.0.210", "Primary": True},
           {"PrivateIpAddress": "10.0.0.211", "Primary": False}]
    message = refused("InvalidParameterCombination", ec2.create_network_interface,
                      SubnetId=subnet_id, PrivateIpAddresses=two,
                      SecondaryPrivateIpAddressCount=1)
    assert "2 listed" in message
    assert enis_in(ec2, subnet_id) == before
    made = ec2.create_network_interface(SubnetId=subnet_id, PrivateIpAddresses=two[:1],
                                        SecondaryPrivateIpAddressCount=1)["NetworkInterface"]
    addresses = [a["PrivateIpAddress"] for a in described(ec2, made["NetworkInterfaceId"])[
        "PrivateIpAddresses"]]
    assert len(addresses) == 2 and addresses[0] == "10.0.0.210"


def test_create_eni_refuses_a_second_primary_address(emulator, ec2):
    world = world_of(emulator, "m5.large")
    subnet_id = world.subnet_ids[0]
    before = enis_in(ec2, subnet_id)
    refused("InvalidParameterValue", ec2.create_network_interface, SubnetId=subnet_id,
            PrivateIpAddress="10.0.0.220",
            PrivateIpAddresses=[{"PrivateIpAddress": "10.0.0.221", "Primary": True}])
    assert enis_in(ec2, subnet_id) == before
    made = ec2.create_network_interface(
        SubnetId=subnet_id, PrivateIpAddress="10.0.0.220",
        PrivateIpAddresses=[{"PrivateIpAddress": "10.0.0.220", "Primary": True},
                            {"PrivateIpAddress": "10.0.0.221", "Primary": False}])[
        "NetworkInterface"]
    assert [(a["PrivateIpAddress"], a["Primary"]) for a in made["PrivateIpAddresses"]] == [
        ("10.0.0.220", True), ("10.0.0.221", False)]


# --- subnet CIDR reservations: Description and tags -------------------------------------------
# CreateSubnetCidrReservation takes Description and TagSpecifications, and the
# SubnetCidrReservation it returns (and GetSubnetCidrReservations and
# DeleteSubnetCidrReservation list) has Description and Tags; GetSubnetCidrReservations
# filters by reservationType, subnet-id, tag:<key> and tag-key (EC2 API reference).

def test_a_reservation_keeps_its_description_and_tags_and_is_found_by_them(emulator, ec2):
    world = world_of(emulator, "m5.large", subnet="10.0.0.0/26")
    subnet_id = world.subnet_ids[0]
    tagged = [{"ResourceType": "subnet-cidr-reservation",
               "Tags": [{"Key": "team", "Value": "pods"}, {"Key": "tier", "Value": "1"}]}]
    made = ec2.create_subnet_cidr_reservation(
        SubnetId=subnet_id, Cidr="10.0.0.16/28", ReservationType="prefix",
        Description="kept for pod prefixes", TagSpecifications=tagged)["SubnetCidrReservation"]
    plain = ec2.create_subnet_cidr_reservation(
        SubnetId=subnet_id, Cidr="10.0.0.32/28", ReservationType="explicit")[
        "SubnetCidrReservation"]
    assert made["Description"] == "kept for pod prefixes"
    assert sorted((t["Key"], t["Value"]) for t in made["Tags"]) == [("team", "pods"), ("tier", "1")]

    def found(*filters) -> list[str]:
        return sorted(r["Cidr"] for r in ec2.get_subnet_cidr_reservations(
            SubnetId=subnet_id, Filters=list(filters))["SubnetIpv4CidrReservations"])

    listed = {r["SubnetCidrReservationId"]: r for r in ec2.get_subnet_cidr_reservations(
        SubnetId=subnet_id)["SubnetIpv4CidrReservations"]}
    assert listed[made["SubnetCidrReservationId"]]["Description"] == "kept for pod prefixes"
    assert len(listed[made["SubnetCidrReservationId"]]["Tags"]) == 2
    assert listed[plain["SubnetCidrReservationId"]].get("Tags", []) == []
    assert found({"Name": "tag:team", "Values": ["pods"]}) == ["10.0.0.16/28"]
    assert found({"Name": "tag:team", "Values": ["nodes"]}) == []
    assert found({"Name": "tag-key", "Values": ["tier"]}) == ["10.0.0.16/28"]
    assert found({"Name": "reservationType", "Values": ["explicit"]}) == ["10.0.0.32/28"]
    deleted = ec2.delete_subnet_cidr_reservation(
        SubnetCidrReservationId=made["SubnetCidrReservationId"])["DeletedSubnetCidrReservation"]
    assert deleted["Description"] == "kept for pod prefixes" and len(deleted["Tags"]) == 2
    assert found({"Name": "tag-key", "Values": ["tier"]}) == []
    assert found() == ["10.0.0.32/28"]


# --- DescribeNetworkInterfaces lists Ipv4Prefixes on every ENI ---------------------------------
# The EC2 user guide's DescribeNetworkInterfaces example ("Work with prefixes") lists
# "Ipv4Prefixes": [] on an ENI that holds no IPv4 prefix.

def test_every_listed_eni_has_ipv4_prefixes_empty_when_it_holds_none(emulator, ec2):
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    plain = ec2.create_network_interface(SubnetId=world.subnet_ids[0])["NetworkInterface"]
    full = ec2.create_network_interface(SubnetId=world.subnet_ids[0],
                                        Ipv4PrefixCount=1)["NetworkInterface"]
    listed = {e["NetworkInterfaceId"]: e["Ipv4Prefixes"] for e in
              ec2.describe_network_interfaces(Filters=[
                  {"Name": "subnet-id", "Values": [world.subnet_ids[0]]}])["NetworkInterfaces"]}
    assert listed[node.primary_eni_id] == [] and listed[plain["NetworkInterfaceId"]] == []
    assert len(listed[full["NetworkInterfaceId"]]) == 1 and len(listed) == 3
    instance = ec2.describe_instances(InstanceIds=[node.instance_id])[
        "Reservations"][0]["Instances"][0]
    assert instance["NetworkInterfaces"][0]["Ipv4Prefixes"] == []


def test_describe_enis_answers_the_documented_address_and_place_filters(emulator, ec2):
    """addresses.primary, private-dns-name, availability-zone-id and
    attachment.instance-owner-id are in DescribeNetworkInterfaces' filter list (EC2 API
    reference); each matches exactly the ENIs it names."""
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    subnet_id = world.subnet_ids[0]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                    SecondaryPrivateIpAddressCount=1)
    loose = ec2.create_network_interface(SubnetId=subnet_id)["NetworkInterface"]
    mine = described(ec2, node.primary_eni_id)
    zone_id = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["AvailabilityZoneId"]

    def matched(name: str, *values: str) -> list[str]:
        found = ec2.describe_network_interfaces(Filters=[
            {"Name": "subnet-id", "Values": [subnet_id]}, {"Name": name, "Values": list(values)}])
        return sorted(e["NetworkInterfaceId"] for e in found["NetworkInterfaces"])

    both = sorted([node.primary_eni_id, loose["NetworkInterfaceId"]])
    assert matched("addresses.primary", "true") == both
    assert matched("addresses.primary", "false") == [node.primary_eni_id]
    assert matched("availability-zone-id", zone_id) == both
    assert matched("availability-zone-id", "no-such-az1") == []
    assert matched("attachment.instance-owner-id", mine["OwnerId"]) == [node.primary_eni_id]
    assert matched("private-dns-name", "ip-192-0-2-1.ec2.internal") == []


def test_get_subnet_cidr_reservations_pages_by_max_results_and_next_token(emulator, ec2):
    """GetSubnetCidrReservations returns at most MaxResults (5 to 1000) and a NextToken for
    the rest (EC2 API reference); 7 reservations come back as pages of 5 and 2."""
    world = world_of(emulator, "m5.large")
    subnet_id = world.subnet_ids[0]
    cidrs = [f"10.0.0.{16 * block}/28" for block in range(1, 8)]
    for cidr in cidrs:
        ec2.create_subnet_cidr_reservation(SubnetId=subnet_id, Cidr=cidr,
                                           ReservationType="explicit")
    first = ec2.get_subnet_cidr_reservations(SubnetId=subnet_id, MaxResults=5)
    assert len(first["SubnetIpv4CidrReservations"]) == 5 and first.get("NextToken")
    second = ec2.get_subnet_cidr_reservations(SubnetId=subnet_id, MaxResults=5,
                                              NextToken=first["NextToken"])
    assert len(second["SubnetIpv4CidrReservations"]) == 2 and not second.get("NextToken")
    paged = first["SubnetIpv4CidrReservations"] + second["SubnetIpv4CidrReservations"]
    assert sorted(r["Cidr"] for r in paged) == sorted(cidrs)
    whole = ec2.get_subnet_cidr_reservations(SubnetId=subnet_id, MaxResults=7)
    assert len(whole["SubnetIpv4CidrReservations"]) == 7 and not whole.get("NextToken")
    refused("InvalidPaginationToken", ec2.get_subnet_cidr_reservations, SubnetId=subnet_id,
            MaxResults=5, NextToken="not-a-token")


def test_assign_answers_name_only_what_was_assigned_with_no_empty_list(emulator, ec2):
    """The EC2 user guide's example of assign-private-ip-addresses --ipv4-prefix-count 1
    answers NetworkInterfaceId and AssignedIpv4Prefixes only."""
    world = world_of(emulator, "m5.large")
    eni_id = world.instances[0].primary_eni_id
    answer = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
    answer.pop("ResponseMetadata")
    assert sorted(answer) == ["AssignedIpv4Prefixes", "NetworkInterfaceId"]
    assert len(answer["AssignedIpv4Prefixes"]) == 1
    answer = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                             SecondaryPrivateIpAddressCount=2)
    answer.pop("ResponseMetadata")
    assert sorted(answer) == ["AssignedPrivateIpAddresses", "NetworkInterfaceId"]
    assert len(answer["AssignedPrivateIpAddresses"]) == 2
