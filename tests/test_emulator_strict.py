"""The strict layer's rules, proven over HTTP with plain boto3 against the emulator, each
exactly at its number. Other tests trust these rules, so each one is shown refusing at the
limit and accepting just below it, and that a refusal changes nothing."""
from __future__ import annotations

import ipaddress
import threading

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from emulator_fixtures import *  # noqa: F401,F403 - the emulator and ec2 fixtures
from emulator_fixtures import refused  # returns EC2's message
from lab.ec2 import EmulatedCloud, World, build_world


def world_of(emulator: EmulatedCloud, instance_type: str = "m5.large",
             subnet: str = "10.0.0.0/24", nodes: int = 1) -> World:
    return build_world(emulator.endpoint, region=emulator.region, nodes=nodes,
                       instance_type=instance_type, subnet_cidrs=(subnet,))


def new_eni(ec2, world: World, secondaries: int = 0) -> dict:
    return ec2.create_network_interface(
        SubnetId=world.subnet_ids[0], Groups=[world.security_group_id],
        SecondaryPrivateIpAddressCount=secondaries)["NetworkInterface"]


def addresses_of(ec2, eni_id: str) -> list[str]:
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
    return [a["PrivateIpAddress"] for a in eni["PrivateIpAddresses"]]


def attached_indexes(ec2, instance_id: str) -> list[int]:
    found = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])
    return sorted(n["Attachment"]["DeviceIndex"] for n in found["NetworkInterfaces"])


@pytest.mark.parametrize("instance_type, max_enis", [("m5.large", 3), ("t3.micro", 2)])
def test_eni_limit_refuses_exactly_one_past_the_instance_type(emulator, ec2, instance_type,
                                                               max_enis):
    world = world_of(emulator, instance_type)
    node = world.instances[0]
    for index in range(1, max_enis):
        ec2.attach_network_interface(NetworkInterfaceId=new_eni(ec2, world)["NetworkInterfaceId"],
                                     InstanceId=node.instance_id, DeviceIndex=index)
    extra = new_eni(ec2, world)["NetworkInterfaceId"]
    error = refused("AttachmentLimitExceeded", ec2.attach_network_interface,
                    NetworkInterfaceId=extra, InstanceId=node.instance_id, DeviceIndex=max_enis)
    assert instance_type in str(error)
    assert attached_indexes(ec2, node.instance_id) == list(range(max_enis))
    assert emulator.control.snapshot() and ec2.describe_network_interfaces(
        NetworkInterfaceIds=[extra])["NetworkInterfaces"][0]["Status"] == "available"


@pytest.mark.parametrize("instance_type, per_eni", [("m5.large", 10), ("t3.small", 4)])
def test_ip_limit_counts_the_primary_and_refuses_exactly_one_past(emulator, ec2,
                                                                 instance_type, per_eni):
    world = world_of(emulator, instance_type)
    eni_id = world.instances[0].primary_eni_id
    refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=per_eni)
    assert len(addresses_of(ec2, eni_id)) == 1  # the refused batch changed nothing
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                    SecondaryPrivateIpAddressCount=per_eni - 2)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=1)
    assert len(addresses_of(ec2, eni_id)) == per_eni
    refused("PrivateIpAddressLimitExceeded", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=1)
    assert len(addresses_of(ec2, eni_id)) == per_eni


def test_an_eni_with_more_addresses_than_the_type_allows_cannot_be_attached(emulator, ec2):
    world = world_of(emulator, "m5.large")
    node = world.instances[0]
    too_full = new_eni(ec2, world, secondaries=10)["NetworkInterfaceId"]  # 11 addresses
    full = new_eni(ec2, world, secondaries=9)["NetworkInterfaceId"]  # 10 addresses
    refused("AttachmentLimitExceeded", ec2.attach_network_interface,
            NetworkInterfaceId=too_full, InstanceId=node.instance_id, DeviceIndex=1)
    ec2.attach_network_interface(NetworkInterfaceId=full, InstanceId=node.instance_id,
                                 DeviceIndex=1)
    assert attached_indexes(ec2, node.instance_id) == [0, 1]


def test_a_slash_28_runs_out_after_exactly_11_usable_addresses(emulator, ec2):
    world = world_of(emulator, "m5.24xlarge", subnet="10.0.0.0/28", nodes=0)
    subnet_id = world.subnet_ids[0]

    def free() -> int:
        return ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["AvailableIpAddressCount"]

    assert free() == 11
    first = new_eni(ec2, world, secondaries=6)["NetworkInterfaceId"]  # 7 addresses
    assert free() == 4
    refused("InsufficientFreeAddressesInSubnet", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=first, SecondaryPrivateIpAddressCount=5)
    refused("InsufficientFreeAddressesInSubnet", new_eni, ec2=ec2, world=world, secondaries=4)
    assert free() == 4 and len(addresses_of(ec2, first)) == 7
    second = new_eni(ec2, world, secondaries=2)["NetworkInterfaceId"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=first, SecondaryPrivateIpAddressCount=1)
    assert free() == 0
    refused("InsufficientFreeAddressesInSubnet", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=second, SecondaryPrivateIpAddressCount=1)
    refused("InsufficientFreeAddressesInSubnet", new_eni, ec2=ec2, world=world)
    handed_out = addresses_of(ec2, first) + addresses_of(ec2, second)
    usable = {f"10.0.0.{n}" for n in range(4, 15)}
    assert len(handed_out) == 11 and set(handed_out) == usable


def test_reserved_or_taken_addresses_are_refused_when_asked_for_by_name(emulator, ec2):
    world = world_of(emulator, subnet="10.0.0.0/28")
    taken = world.instances[0].primary_ip
    for reserved in ("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.15"):
        refused("InvalidParameterValue", ec2.create_network_interface,
                SubnetId=world.subnet_ids[0], PrivateIpAddress=reserved)
    refused("InvalidParameterValue", ec2.create_network_interface,
            SubnetId=world.subnet_ids[0], PrivateIpAddress="10.0.1.7")
    refused("InvalidIPAddress.InUse", ec2.create_network_interface,
            SubnetId=world.subnet_ids[0], PrivateIpAddress=taken)
    refused("InvalidIPAddress.InUse", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=world.instances[0].primary_eni_id, PrivateIpAddresses=[taken])
    chosen = ec2.create_network_interface(SubnetId=world.subnet_ids[0],
                                          PrivateIpAddress="10.0.0.14")["NetworkInterface"]
    assert chosen["PrivateIpAddress"] == "10.0.0.14"


def test_no_duplicate_or_reserved_address_is_ever_handed_out(emulator, ec2):
    world = world_of(emulator, "m5.24xlarge", subnet="10.0.0.0/26", nodes=1)
    eni_ids = [world.instances[0].primary_eni_id]
    remaining = 59 - 1
    for batch in (7, 1, 13, 2, 9, 5):
        eni_ids.append(new_eni(ec2, world, secondaries=batch - 1)["NetworkInterfaceId"])
        remaining -= batch
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_ids[1],
                                    SecondaryPrivateIpAddressCount=remaining)
    refused("InsufficientFreeAddressesInSubnet", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=eni_ids[2], SecondaryPrivateIpAddressCount=1)
    every = [a for eni_id in eni_ids for a in addresses_of(ec2, eni_id)]
    network = ipaddress.IPv4Network("10.0.0.0/26")
    usable = {str(network.network_address + n) for n in range(4, 63)}
    assert len(every) == len(set(every)) == 59
    assert set(every) == usable


def test_assign_answers_only_the_new_addresses(emulator, ec2):
    world = world_of(emulator)
    eni_id = world.instances[0].primary_eni_id
    answer = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                             SecondaryPrivateIpAddressCount=3)
    new = [a["PrivateIpAddress"] for a in answer["AssignedPrivateIpAddresses"]]
    assert len(new) == 3 and world.instances[0].primary_ip not in new
    assert sorted(addresses_of(ec2, eni_id)) == sorted([world.instances[0].primary_ip] + new)


def test_device_index_collision_is_refused_in_ec2s_words(emulator, ec2):
    world = world_of(emulator)
    node = world.instances[0]
    first, second = (new_eni(ec2, world)["NetworkInterfaceId"] for _ in range(2))
    ec2.attach_network_interface(NetworkInterfaceId=first, InstanceId=node.instance_id,
                                 DeviceIndex=1)
    for index in (0, 1):
        error = refused("InvalidParameterValue", ec2.attach_network_interface,
                        NetworkInterfaceId=second, InstanceId=node.instance_id,
                        DeviceIndex=index)
        assert f"already has an interface attached at device index '{index}'" in str(error)
    refused("InvalidNetworkInterface.InUse", ec2.attach_network_interface,
            NetworkInterfaceId=first, InstanceId=node.instance_id, DeviceIndex=2)
    assert attached_indexes(ec2, node.instance_id) == [0, 1]


def test_deleting_an_attached_eni_is_refused_until_it_is_detached(emulator, ec2):
    world = world_of(emulator)
    node = world.instances[0]
    eni_id = new_eni(ec2, world)["NetworkInterfaceId"]
    attachment = ec2.attach_network_interface(NetworkInterfaceId=eni_id,
                                              InstanceId=node.instance_id,
                                              DeviceIndex=1)["AttachmentId"]
    refused("InvalidNetworkInterface.InUse", ec2.delete_network_interface,
            NetworkInterfaceId=eni_id)
    refused("OperationNotPermitted", ec2.detach_network_interface,
            AttachmentId=ec2.describe_network_interfaces(
                NetworkInterfaceIds=[node.primary_eni_id])["NetworkInterfaces"][0]
            ["Attachment"]["AttachmentId"])
    ec2.detach_network_interface(AttachmentId=attachment)
    ec2.delete_network_interface(NetworkInterfaceId=eni_id)
    for call, kwargs in (
        (ec2.delete_network_interface, {"NetworkInterfaceId": eni_id}),
        (ec2.describe_network_interfaces, {"NetworkInterfaceIds": [eni_id]}),
        (ec2.assign_private_ip_addresses, {"NetworkInterfaceId": eni_id,
                                           "SecondaryPrivateIpAddressCount": 1}),
        (ec2.attach_network_interface, {"NetworkInterfaceId": eni_id,
                                        "InstanceId": node.instance_id, "DeviceIndex": 1}),
    ):
        refused("InvalidNetworkInterfaceID.NotFound", call, **kwargs)
    refused("InvalidAttachmentID.NotFound", ec2.detach_network_interface, AttachmentId=attachment)


def test_unassign_refuses_the_primary_and_addresses_the_eni_does_not_hold(emulator, ec2):
    world = world_of(emulator)
    node = world.instances[0]
    other = new_eni(ec2, world, secondaries=1)
    foreign = [a["PrivateIpAddress"] for a in other["PrivateIpAddresses"] if not a["Primary"]]
    refused("InvalidParameterValue", ec2.unassign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, PrivateIpAddresses=[node.primary_ip])
    refused("InvalidParameterValue", ec2.unassign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, PrivateIpAddresses=foreign)
    assert len(addresses_of(ec2, other["NetworkInterfaceId"])) == 2
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=other["NetworkInterfaceId"],
                                      PrivateIpAddresses=foreign)
    assert addresses_of(ec2, other["NetworkInterfaceId"]) == [other["PrivateIpAddress"]]


def test_attachment_device_index_filter_is_answered(emulator, ec2):
    world = world_of(emulator, nodes=2)
    node, other_node = world.instances
    eni_id = new_eni(ec2, world, secondaries=1)["NetworkInterfaceId"]
    ec2.attach_network_interface(NetworkInterfaceId=eni_id, InstanceId=node.instance_id,
                                 DeviceIndex=2)

    def ids(*filters) -> set[str]:
        found = ec2.describe_network_interfaces(
            Filters=[{"Name": n, "Values": v} for n, v in filters])["NetworkInterfaces"]
        return {n["NetworkInterfaceId"] for n in found}

    mine = ("attachment.instance-id", [node.instance_id])
    assert ids(mine, ("attachment.device-index", ["2"])) == {eni_id}
    assert ids(mine, ("attachment.device-index", ["0"])) == {node.primary_eni_id}
    assert ids(mine, ("attachment.device-index", ["1"])) == set()
    assert ids(("vpc-id", [world.vpc_id]), ("attachment.device-index", ["0"])) == {
        node.primary_eni_id, other_node.primary_eni_id}
    secondary = [a for a in addresses_of(ec2, eni_id) if a != addresses_of(ec2, eni_id)[0]]
    assert ids(("private-ip-address", secondary)) == {eni_id}


def test_routes_refuse_duplicates_and_the_table_limit(emulator, ec2):
    world = world_of(emulator, nodes=1)
    table = world.route_table_ids[0]
    eni_id = world.instances[0].primary_eni_id
    emulator.control.set_route_table_limit(3)
    try:
        for n in range(3):
            ec2.create_route(RouteTableId=table, DestinationCidrBlock=f"10.1.{n}.0/24",
                             NetworkInterfaceId=eni_id)
        refused("RouteAlreadyExists", ec2.create_route, RouteTableId=table,
                DestinationCidrBlock="10.1.0.0/24", NetworkInterfaceId=eni_id)
        refused("RouteLimitExceeded", ec2.create_route, RouteTableId=table,
                DestinationCidrBlock="10.1.9.0/24", NetworkInterfaceId=eni_id)
        ec2.delete_route(RouteTableId=table, DestinationCidrBlock="10.1.2.0/24")
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="10.1.9.0/24",
                         NetworkInterfaceId=eni_id)
    finally:
        emulator.control.set_route_table_limit(50)
    snapshot = {t["id"]: t for t in emulator.control.snapshot()["route_tables"]}
    routes = {r["destination"]: r["eni_id"] for r in snapshot[table]["routes"] if not r["local"]}
    assert routes == {"10.1.0.0/24": eni_id, "10.1.1.0/24": eni_id, "10.1.9.0/24": eni_id}
    refused("InvalidRouteTableID.NotFound", ec2.create_route, RouteTableId="rtb-0000000000",
            DestinationCidrBlock="10.2.0.0/24", NetworkInterfaceId=eni_id)


def test_snapshot_reports_enis_as_the_fabric_needs_them(emulator, ec2):
    world = world_of(emulator)
    node = world.instances[0]
    eni = new_eni(ec2, world, secondaries=2)
    ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                 InstanceId=node.instance_id, DeviceIndex=1)
    ec2.modify_network_interface_attribute(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                           SourceDestCheck={"Value": False})
    by_id = {e["id"]: e for e in emulator.control.snapshot()["enis"]}
    seen = by_id[eni["NetworkInterfaceId"]]
    assert seen["instance_id"] == node.instance_id and seen["device_index"] == 1
    assert seen["mac"] == eni["MacAddress"] and seen["source_dest_check"] is False
    assert seen["ips"][0] == eni["PrivateIpAddress"] and len(seen["ips"]) == 3
    assert by_id[node.primary_eni_id]["ips"] == [node.primary_ip]


def test_concurrent_clients_cannot_overshoot_a_limit_or_share_an_address(emulator):
    """Check-then-act is atomic: twelve parallel single-IP assigns on one m5.large ENI
    holding 1 address: exactly nine succeed, and no address is handed out twice."""
    world = world_of(emulator, "m5.large")
    eni_id = world.instances[0].primary_eni_id
    outcomes: list[str] = []

    def assign() -> None:
        client = boto3.client(
            "ec2", endpoint_url=emulator.endpoint, region_name=emulator.region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10))
        try:
            client.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                               SecondaryPrivateIpAddressCount=1)
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    workers = [threading.Thread(target=assign) for _ in range(12)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(outcomes) == ["PrivateIpAddressLimitExceeded"] * 3 + ["ok"] * 9
    held = emulator.control.snapshot()
    every = [a for e in held["enis"] if e["subnet_id"] == world.subnet_ids[0] for a in e["ips"]]
    assert len(every) == len(set(every)) == 10


def test_run_instances_gets_a_usable_unique_address_or_a_clear_refusal(emulator, ec2):
    world = world_of(emulator, subnet="10.0.0.0/28", nodes=1)
    subnet_id = world.subnet_ids[0]
    image = ec2.describe_images(ImageIds=["ami-760aaa0f"])["Images"][0]["ImageId"]
    launched = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet_id,
                                 InstanceType="t3.micro")["Instances"][0]
    address = ipaddress.IPv4Address(launched["PrivateIpAddress"])
    assert 4 <= int(address) - int(ipaddress.IPv4Address("10.0.0.0")) <= 14
    assert launched["PrivateIpAddress"] != world.instances[0].primary_ip
    refused("InvalidParameterValue", ec2.run_instances, ImageId=image, MinCount=1, MaxCount=1,
            SubnetId=subnet_id, PrivateIpAddress="10.0.0.2")
    refused("InvalidIPAddress.InUse", ec2.run_instances, ImageId=image, MinCount=1, MaxCount=1,
            SubnetId=subnet_id, PrivateIpAddress=launched["PrivateIpAddress"])
    error = refused("InvalidParameterValue", ec2.run_instances, ImageId=image, MinCount=2,
                    MaxCount=2, SubnetId=subnet_id)
    assert "MaxCount must be 1" in str(error)
    refused("InvalidParameterValue", ec2.run_instances, ImageId=image, MinCount=1, MaxCount=1,
            SubnetId=subnet_id, InstanceType="z9.nonexistent")
    assert ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0][
        "AvailableIpAddressCount"] == 9


def test_reassignment_moves_a_secondary_address_only_when_allowed(emulator, ec2):
    world = world_of(emulator)
    node = world.instances[0]
    other = new_eni(ec2, world, secondaries=1)
    moved = [a["PrivateIpAddress"] for a in other["PrivateIpAddresses"] if not a["Primary"]]
    refused("InvalidIPAddress.InUse", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, PrivateIpAddresses=moved)
    refused("InvalidIPAddress.InUse", ec2.assign_private_ip_addresses,
            NetworkInterfaceId=node.primary_eni_id, AllowReassignment=True,
            PrivateIpAddresses=[other["PrivateIpAddress"]])  # a primary never moves
    ec2.assign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                    AllowReassignment=True, PrivateIpAddresses=moved)
    assert addresses_of(ec2, node.primary_eni_id) == [node.primary_ip] + moved
    assert addresses_of(ec2, other["NetworkInterfaceId"]) == [other["PrivateIpAddress"]]


def test_delete_on_termination_and_status_filters(emulator, ec2):
    world = world_of(emulator)
    node = world.instances[0]
    attached, loose = (new_eni(ec2, world)["NetworkInterfaceId"] for _ in range(2))
    attachment = ec2.attach_network_interface(NetworkInterfaceId=attached,
                                              InstanceId=node.instance_id,
                                              DeviceIndex=1)["AttachmentId"]
    ec2.modify_network_interface_attribute(
        NetworkInterfaceId=attached,
        Attachment={"AttachmentId": attachment, "DeleteOnTermination": True})
    refused("InvalidAttachmentID.NotFound", ec2.modify_network_interface_attribute,
            NetworkInterfaceId=loose,
            Attachment={"AttachmentId": attachment, "DeleteOnTermination": True})
    seen = ec2.describe_network_interfaces(NetworkInterfaceIds=[attached])["NetworkInterfaces"][0]
    assert seen["Attachment"]["DeleteOnTermination"] is True

    def ids(name: str, value: str) -> set[str]:
        found = ec2.describe_network_interfaces(Filters=[
            {"Name": "subnet-id", "Values": [world.subnet_ids[0]]},
            {"Name": name, "Values": [value]}])["NetworkInterfaces"]
        return {n["NetworkInterfaceId"] for n in found}

    assert ids("status", "available") == {loose}
    assert ids("status", "in-use") == {attached, node.primary_eni_id}
    assert ids("attachment.status", "attached") == {attached, node.primary_eni_id}
