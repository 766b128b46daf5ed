"""Build a small emulated world through plain boto3 against an emulator endpoint: one VPC,
its subnets (all in ``<region>a``), a security group, and N instances whose primary IPs are
chosen explicitly from their subnet's usable range (never a reserved address).

World-building calls carry the set-up header, so they neither draw from the agent's
request token buckets nor count in the call counts nor meet injected faults; the strict
rules still apply to them."""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import boto3
from botocore.config import Config

logger = logging.getLogger(__name__)

SETUP_HEADER = "X-Underlay-Emulator-Setup"
# the first address after the four AWS reserves, so a small subnet still fits a node
FIRST_HOST_OFFSET = 4
# an Amazon Linux image moto ships in every region (listing all images takes seconds)
IMAGE_ID = "ami-760aaa0f"


@dataclass(frozen=True)
class WorldInstance:
    instance_id: str
    primary_eni_id: str
    primary_ip: str
    private_dns: str
    name: str
    subnet_id: str


@dataclass(frozen=True)
class World:
    endpoint: str
    region: str
    cluster: str
    vpc_id: str
    vpc_cidr: str
    subnet_ids: tuple[str, ...]
    subnet_cidrs: tuple[str, ...]
    security_group_id: str
    route_table_ids: tuple[str, ...]
    instances: tuple[WorldInstance, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_setup_client(endpoint: str, region: str) -> Any:
    """A boto3 EC2 client for set-up work: test credentials, timeouts, the set-up header."""
    client = boto3.client(
        "ec2", endpoint_url=endpoint, region_name=region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 3, "mode": "standard"},
                      connect_timeout=5, read_timeout=30),
    )

    def mark_setup(request: Any, **_: Any) -> None:
        request.headers[SETUP_HEADER] = "1"

    client.meta.events.register("before-sign.ec2.*", mark_setup)
    return client


def validate_layout(vpc_cidr: str, subnet_cidrs: Sequence[str], nodes: int) -> None:
    """Raise ValueError naming the problem before anything is created."""
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    if not subnet_cidrs:
        raise ValueError("at least one subnet CIDR is needed")
    vpc = ipaddress.IPv4Network(vpc_cidr)
    subnets = [ipaddress.IPv4Network(c) for c in subnet_cidrs]
    for cidr, net in zip(subnet_cidrs, subnets):
        if not net.subnet_of(vpc):
            raise ValueError(f"subnet {cidr} is not inside the VPC {vpc_cidr}")
        if not 16 <= net.prefixlen <= 28:
            raise ValueError(f"subnet {cidr}: EC2 subnets are /16 to /28")
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            if a.overlaps(b):
                raise ValueError(f"subnets {a} and {b} overlap")
    for index, net in enumerate(subnets):
        count = len(range(index, nodes, len(subnets)))
        usable = net.num_addresses - 5
        if count > usable:
            raise ValueError(f"subnet {net} has {usable} usable addresses, {count} nodes need one each")


def build_world(endpoint: str, *, region: str = "us-east-1", nodes: int = 1,
                instance_type: str = "m5.large", vpc_cidr: str = "10.0.0.0/16",
                subnet_cidrs: Sequence[str] = ("10.0.0.0/24",),
                cluster: str = "underlay-test") -> World:
    validate_layout(vpc_cidr, subnet_cidrs, nodes)
    ec2 = make_setup_client(endpoint, region)
    zone = f"{region}a"
    vpc_id = ec2.create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "Name", "Value": cluster}])
    subnet_ids = tuple(
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for cidr in subnet_cidrs
    )
    group_id = ec2.create_security_group(
        GroupName=f"{cluster}-nodes", Description=f"nodes of {cluster}", VpcId=vpc_id)["GroupId"]
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    route_table_ids = tuple(t["RouteTableId"] for t in tables["RouteTables"])
    image_id = ec2.describe_images(ImageIds=[IMAGE_ID])["Images"][0]["ImageId"]
    instances = []
    for index in range(nodes):
        slot = index % len(subnet_ids)
        network = ipaddress.IPv4Network(subnet_cidrs[slot])
        address = str(network.network_address + FIRST_HOST_OFFSET + index // len(subnet_ids))
        name = f"{cluster}-node-{index}"
        made = ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1, InstanceType=instance_type,
            SubnetId=subnet_ids[slot], PrivateIpAddress=address, SecurityGroupIds=[group_id],
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": "Name", "Value": name},
                {"Key": "underlay.io/cluster", "Value": cluster},
            ]}],
        )["Instances"][0]
        eni = next(n for n in made["NetworkInterfaces"]
                   if n["Attachment"]["DeviceIndex"] == 0)
        instances.append(WorldInstance(
            instance_id=made["InstanceId"], primary_eni_id=eni["NetworkInterfaceId"],
            primary_ip=made["PrivateIpAddress"], private_dns=made.get("PrivateDnsName", ""),
            name=name, subnet_id=subnet_ids[slot],
        ))
    world = World(endpoint=endpoint, region=region, cluster=cluster, vpc_id=vpc_id,
                  vpc_cidr=vpc_cidr, subnet_ids=subnet_ids, subnet_cidrs=tuple(subnet_cidrs),
                  security_group_id=group_id, route_table_ids=route_table_ids,
                  instances=tuple(instances))
    logger.info("built world %s: vpc %s, %d subnets, %d instances",
                cluster, vpc_id, len(subnet_ids), len(instances))
    return world
