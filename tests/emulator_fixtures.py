"""Fixtures for the emulated EC2's prefix tests: one emulator per test module (its strict
rules switched off as ``--emulator-rules-off`` asks), a plain boto3 client, a fresh VPC
world per test, and the look-ups the tests share. Nothing here touches the kernel: the
emulator is an HTTP server on 127.0.0.1 and its VPC addresses are only data.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from lab.ec2 import EmulatedCloud, EmulatorSettings, World, build_world

# the fixtures, for `from emulator_fixtures import *` in the test modules
__all__ = ["emulator", "ec2"]


@pytest.fixture(scope="module")
def emulator(emulator_rules_off) -> Iterator[EmulatedCloud]:
    settings = EmulatorSettings(buckets_enabled=False, rules_off=emulator_rules_off)
    cloud = EmulatedCloud.start(settings=settings)
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def ec2(emulator: EmulatedCloud):
    return boto3.client(
        "ec2", endpoint_url=emulator.endpoint, region_name=emulator.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=30),
    )


def refused(code: str, call, **kwargs) -> str:
    """The call fails with EC2 error ``code``; returns the message."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value.response["Error"]
    assert error["Code"] == code, error
    return error["Message"]


def world_of(emulator: EmulatedCloud, instance_type: str = "m5.large",
             subnet: str = "10.0.0.0/24", nodes: int = 1) -> World:
    return build_world(emulator.endpoint, region=emulator.region, nodes=nodes,
                       instance_type=instance_type, subnet_cidrs=(subnet,))


def described(ec2, eni_id: str) -> dict:
    return ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]


def prefixes_of(ec2, eni_id: str) -> list[str]:
    return [p["Ipv4Prefix"] for p in described(ec2, eni_id).get("Ipv4Prefixes", [])]


def addresses_of(ec2, eni_id: str) -> list[str]:
    return [a["PrivateIpAddress"] for a in described(ec2, eni_id)["PrivateIpAddresses"]]


def assign_prefixes(ec2, eni_id: str, count: int) -> list[str]:
    answer = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=count)
    return [p["Ipv4Prefix"] for p in answer["AssignedIpv4Prefixes"]]


def free_count(ec2, subnet_id: str) -> int:
    return ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["AvailableIpAddressCount"]


def eni_with(ec2, world: World, addresses: list[str]) -> str:
    """An unattached ENI holding exactly these addresses (the first is its primary)."""
    return ec2.create_network_interface(
        SubnetId=world.subnet_ids[0],
        PrivateIpAddresses=[{"PrivateIpAddress": a, "Primary": i == 0}
                            for i, a in enumerate(addresses)])["NetworkInterface"][
        "NetworkInterfaceId"]


def inside(prefixes: list[str], address: str) -> bool:
    return any(ipaddress.IPv4Address(address) in ipaddress.IPv4Network(p) for p in prefixes)
