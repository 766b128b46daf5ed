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
