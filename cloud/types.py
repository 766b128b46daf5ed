"""Domain values that cross the cloud boundary. Never boto dicts."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import NewType

InstanceId = NewType("InstanceId", str)
EniId = NewType("EniId", str)
SubnetId = NewType("SubnetId", str)
RouteTableId = NewType("RouteTableId", str)

PREFIX_LEN = 28  # EC2 delegates IPv4 prefixes as /28: 16 addresses in one address slot

TAG_CLUSTER = "underlay.io/cluster"
TAG_NODE = "underlay.io/node"
TAG_CREATED_AT = "underlay.io/created-at"


@dataclass(frozen=True)
class InstanceLimits:
    """What one instance type can hold. ``ips_per_eni`` counts the ENI's primary IP."""

    instance_type: str
    max_enis: int
    ips_per_eni: int
    hypervisor: str = ""  # DescribeInstanceTypes' Hypervisor: "nitro", "xen"; "" for metal
    bare_metal: bool = False

    @property
    def nitro(self) -> bool:
        """Built on the Nitro system, so EC2 delegates /28 prefixes to its ENIs (bare metal
        types name no hypervisor and are counted in, as the AWS VPC CNI does)."""
        return self.hypervisor == "nitro" or self.bare_metal

    @property
    def secondary_ips_per_eni(self) -> int:
        return self.ips_per_eni - 1

    @property
    def max_pods(self) -> int:
        """EC2's own arithmetic: ENIs x (IPs per ENI - 1) + 2 (m5.large: 29)."""
        return self.max_enis * (self.ips_per_eni - 1) + 2


@dataclass(frozen=True)
class Instance:
    id: InstanceId
    instance_type: str
    availability_zone: str
    vpc_id: str
    subnet_id: SubnetId
    primary_ip: str
    primary_eni_id: EniId
    security_groups: tuple[str, ...]
    state: str = ""  # EC2's instance state name: "running", "terminated", ...

    @property
    def gone(self) -> bool:
        return self.state in ("shutting-down", "terminated")


@dataclass(frozen=True)
class Subnet:
    id: SubnetId
    vpc_id: str
    cidr: str
    availability_zone: str
    free_addresses: int

    @property
    def gateway(self) -> str:
        """The VPC router answers on the subnet's network address + 1."""
        return str(ipaddress.ip_network(self.cidr).network_address + 1)

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen


@dataclass(frozen=True)
class Eni:
    id: EniId
    mac: str
    subnet_id: SubnetId
    vpc_id: str
    primary_ip: str
    secondary_ips: tuple[str, ...]
    status: str  # "available" | "in-use" | "attaching" | "detaching"
    instance_id: InstanceId | None = None
    device_index: int | None = None
    attachment_id: str | None = None
    source_dest_check: bool = True
    tags: tuple[tuple[str, str], ...] = ()
    prefixes: tuple[str, ...] = ()  # delegated IPv4 /28 prefixes, each in one address slot

    @property
    def address_slots(self) -> int:
        """Slots of the type's "IPv4 addresses per interface" in use: the primary address,
        each secondary address and each prefix."""
        return 1 + len(self.secondary_ips) + len(self.prefixes)

    def tag(self, key: str) -> str | None:
        return dict(self.tags).get(key)

    @property
    def created_at(self) -> datetime | None:
        value = self.tag(TAG_CREATED_AT)
        if value is None:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None


@dataclass(frozen=True)
class Route:
    destination_cidr: str
    state: str  # "active" | "blackhole"
    eni_id: EniId | None = None
    instance_id: InstanceId | None = None
    gateway_id: str | None = None


@dataclass(frozen=True)
class RouteTable:
    id: RouteTableId
    vpc_id: str
    routes: tuple[Route, ...] = ()
    subnet_ids: tuple[SubnetId, ...] = ()
    tags: tuple[tuple[str, str], ...] = field(default=())
    main: bool = False  # the VPC's main table: it serves subnets without an association
