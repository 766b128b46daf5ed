"""The emulated EC2's ENI, describe and route calls against EC2's published API behaviour,
over HTTP with plain boto3 (the prefix and reservation calls are test_emulator_published.py's).
Sources:

- EC2 API reference, "Error codes for the Amazon EC2 API"
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html):
  InvalidNetworkInterfaceId.Malformed (eni-xxxxxxxxxxxxxxxxx),
  InvalidNetworkInterfaceAttachmentId.Malformed (eni-attach-...), InvalidSubnetID.Malformed,
  InvalidInstanceID.Malformed (i-xxxxxxxx or i-xxxxxxxxxxxxxxxxx),
  InvalidRouteTableId.Malformed, InvalidGroupId.Malformed; InvalidGroup.NotFound (also for a
  security group in another VPC than the request).
- EC2 API reference, DescribeNetworkInterfaces / DescribeSubnets / DescribeInstanceTypes
  (MaxResults ranges 5-1000, 5-1000, 5-100; NextToken; DescribeNetworkInterfaces'
  MaxResults not with NetworkInterfaceIds) and DescribeInstances' network-interface.*
  filters.
- EC2 user guide, "Attach a network interface to an instance": the network interface and the
  instance must be in the same Availability Zone.

None of these is a switchable rule: they are parameter checks and answer shapes.
"""
from __future__ import annotations

import pytest

from emulator_fixtures import refused, world_of
from emulator_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(180)


def new_eni(ec2, subnet_id: str, **extra) -> str:
    return ec2.create_network_interface(SubnetId=subnet_id, **extra)["NetworkInterface"][
        "NetworkInterfaceId"]


def eni_count(ec2) -> int:
    return len(ec2.describe_network_interfaces()["NetworkInterfaces"])


@pytest.mark.parametrize("bad", ["bogus", "eni-xyz", "eni-", "eni-123", "ENI-12345678"])
def test_malformed_eni_ids_are_refused_as_malformed_by_every_eni_call(emulator, ec2, bad):
    world = world_of(emulator)
    node = world.instances[0]
    calls = [
        (ec2.delete_network_interface, {"NetworkInterfaceId": bad}),
        (ec2.describe_network_interfaces, {"NetworkInterfaceIds": [bad]}),
        (ec2.attach_network_interface, {"NetworkInterfaceId": bad,
                                        "InstanceId": node.instance_id, "DeviceIndex": 1}),
        (ec2.assign_private_ip_addresses, {"NetworkInterfaceId": bad,
                                           "SecondaryPrivateIpAddressCount": 1}),
        (ec2.unassign_private_ip_addresses, {"NetworkInterfaceId": bad,
                                             "PrivateIpAddresses": ["10.0.0.9"]}),
        (ec2.modify_network_interface_attribute, {"NetworkInterfaceId": bad,
                                                  "SourceDestCheck": {"Value": False}}),
        (ec2.create_route, {"RouteTableId": world.route_table_ids[0],
                            "DestinationCidrBlock": "10.9.0.0/32", "NetworkInterfaceId": bad}),
    ]
    for call, kwargs in calls:
        assert bad in refused("InvalidNetworkInterfaceId.Malformed", call, **kwargs)
    # well-formed ids of both lengths are only not found
    for unknown in ("eni-12345678", "eni-0123456789abcdef0"):
        refused("InvalidNetworkInterfaceID.NotFound", ec2.delete_network_interface,
                NetworkInterfaceId=unknown)


def test_malformed_subnet_instance_table_attachment_and_group_ids(emulator, ec2):
    world = world_of(emulator)
    subnet_id, node = world.subnet_ids[0], world.instances[0]
    eni = new_eni(ec2, subnet_id)
    before = eni_count(ec2)
    refused("InvalidSubnetID.Malformed", ec2.create_network_interface, SubnetId="bogus")
    refused("InvalidSubnetID.Malformed", ec2.describe_subnets, SubnetIds=["subnet-xyz"])
    refused("InvalidSubnetID.NotFound", ec2.describe_subnets, SubnetIds=["subnet-12345678"])
    refused("InvalidInstanceID.Malformed", ec2.describe_instances, InstanceIds=["i-bogus"])
    refused("InvalidInstanceID.Malformed", ec2.attach_network_interface,
            NetworkInterfaceId=eni, InstanceId="bogus", DeviceIndex=1)
    refused("InvalidInstanceID.NotFound", ec2.describe_instances, InstanceIds=["i-12345678"])
    refused("InvalidRouteTableId.Malformed", ec2.describe_route_tables, RouteTableIds=["bogus"])
    refused("InvalidRouteTableId.Malformed", ec2.create_route, RouteTableId="rtb-x",
            DestinationCidrBlock="10.9.0.0/32", NetworkInterfaceId=eni)
    refused("InvalidRouteTableID.NotFound", ec2.describe_route_tables,
            RouteTableIds=["rtb-12345678"])
    refused("InvalidNetworkInterfaceAttachmentId.Malformed", ec2.detach_network_interface,
            AttachmentId=eni)  # an ENI id where the attachment id belongs
    refused("InvalidAttachmentID.NotFound", ec2.detach_network_interface,
            AttachmentId="eni-attach-0123456789abcdef0")
    refused("InvalidGroupId.Malformed", ec2.create_network_interface, SubnetId=subnet_id,
            Groups=["bogus"])
    assert eni_count(ec2) == before
    ec2.delete_network_interface(NetworkInterfaceId=eni)
    assert node.instance_id  # the world's own ids are all well formed


def test_create_eni_refuses_unknown_groups_and_groups_of_another_vpc(emulator, ec2):
    world = world_of(emulator)
    subnet_id = world.subnet_ids[0]
    other_vpc = ec2.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    foreign = ec2.create_security_group(GroupName="foreign", Description="another VPC",
                                        VpcId=other_vpc)["GroupId"]
    before = eni_count(ec2)
    try:
        refused("InvalidGroup.NotFound", ec2.create_network_interface, SubnetId=subnet_id,
                Groups=["sg-0123456789abcdef0"])
        refused("InvalidGroup.NotFound", ec2.create_network_interface, SubnetId=subnet_id,
                Groups=[world.security_group_id, foreign])
        assert eni_count(ec2) == before
        eni = new_eni(ec2, subnet_id, Groups=[world.security_group_id])
        refused("InvalidGroup.NotFound", ec2.modify_network_interface_attribute,
                NetworkInterfaceId=eni, Groups=[foreign])
        ec2.delete_network_interface(NetworkInterfaceId=eni)
    finally:
        ec2.delete_security_group(GroupId=foreign)
        ec2.delete_vpc(VpcId=other_vpc)


def pages(call, key: str, **kwargs) -> list[list[dict]]:
    found, token = [], None
    while True:
        answer = call(**kwargs, **({"NextToken": token} if token else {}))
        found.append(answer[key])
        token = answer.get("NextToken")
        if not token:
            return found


def test_describe_enis_and_subnets_page_by_max_results_and_next_token(emulator, ec2):
    world = world_of(emulator)
    subnet_id = world.subnet_ids[0]
    made = [new_eni(ec2, subnet_id) for _ in range(7)]
    by_subnet = [{"Name": "subnet-id", "Values": [subnet_id]}]
    listed = pages(ec2.describe_network_interfaces, "NetworkInterfaces", MaxResults=5,
                   Filters=by_subnet)
    assert [len(p) for p in listed] == [5, 3]  # the node's primary ENI and the 7 made
    ids = [e["NetworkInterfaceId"] for p in listed for e in p]
    assert len(set(ids)) == 8 and set(made) <= set(ids)
    subnets = pages(ec2.describe_subnets, "Subnets", MaxResults=5)
    every = ec2.describe_subnets()["Subnets"]
    assert len(every) > 5 and all(len(p) <= 5 for p in subnets) and len(subnets[0]) == 5
    assert sorted(s["SubnetId"] for p in subnets for s in p) == sorted(
        s["SubnetId"] for s in every)
    for eni in made:
        ec2.delete_network_interface(NetworkInterfaceId=eni)


def test_describe_max_results_out_of_range_or_with_ids_is_refused(emulator, ec2):
    world = world_of(emulator)
    eni = world.instances[0].primary_eni_id
    refused("InvalidParameterValue", ec2.describe_network_interfaces, MaxResults=1001)
    refused("InvalidParameterCombination", ec2.describe_network_interfaces, MaxResults=5,
            NetworkInterfaceIds=[eni])
    refused("InvalidParameterValue", ec2.describe_subnets, MaxResults=1001)
    refused("InvalidParameterValue", ec2.describe_instance_types, MaxResults=101)
    assert len(ec2.describe_instance_types(MaxResults=100)["InstanceTypes"]) == 100
    assert len(ec2.describe_instances(MaxResults=5)["Reservations"]) >= 1


def test_describe_instances_answers_the_documented_network_interface_filters(emulator, ec2):
    world = world_of(emulator, nodes=2)
    node, other = world.instances
    eni = new_eni(ec2, world.subnet_ids[0], SecondaryPrivateIpAddressCount=1)
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=node.instance_id,
                                 DeviceIndex=1)
    secondary = [a["PrivateIpAddress"] for a in ec2.describe_network_interfaces(
        NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]["PrivateIpAddresses"]][1]

    def found(name: str, value: str) -> list[str]:
        answer = ec2.describe_instances(Filters=[{"Name": name, "Values": [value]}])
        return [i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]]

    assert found("network-interface.network-interface-id", eni) == [node.instance_id]
    assert found("network-interface.addresses.private-ip-address", secondary) == [
        node.instance_id]
    assert found("network-interface.attachment.device-index", "1") == [node.instance_id]
    assert sorted(found("network-interface.subnet-id", world.subnet_ids[0])) == sorted(
        [node.instance_id, other.instance_id])
    assert found("network-interface.network-interface-id", "eni-12345678") == []
    listed = ec2.describe_network_interfaces(Filters=[{"Name": "group-name",
                                                       "Values": ["default"]}])
    assert eni in [e["NetworkInterfaceId"] for e in listed["NetworkInterfaces"]]


def test_an_eni_in_another_availability_zone_cannot_be_attached(emulator, ec2):
    world = world_of(emulator)
    node = world.instances[0]
    zone_b = ec2.create_subnet(VpcId=world.vpc_id, CidrBlock="10.0.200.0/24",
                               AvailabilityZone=f"{emulator.region}b")["Subnet"]["SubnetId"]
    eni = new_eni(ec2, zone_b)
    try:
        message = refused("InvalidParameterValue", ec2.attach_network_interface,
                          NetworkInterfaceId=eni, InstanceId=node.instance_id, DeviceIndex=1)
        assert "availability zone" in message.lower()
        status = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])[
            "NetworkInterfaces"][0]["Status"]
        assert status == "available"
    finally:
        ec2.delete_network_interface(NetworkInterfaceId=eni)
        ec2.delete_subnet(SubnetId=zone_b)
