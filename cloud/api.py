"""The ``Cloud`` Protocol: only the EC2 calls underlay uses, in our types."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cloud.types import (
    Eni,
    EniId,
    Instance,
    InstanceId,
    InstanceLimits,
    RouteTable,
    RouteTableId,
    Subnet,
    SubnetId,
)


class Cloud(Protocol):
    def describe_instance(self, instance_id: InstanceId) -> Instance: ...

    def instance_limits(self, instance_type: str) -> InstanceLimits:
        """From DescribeInstanceTypes; cached per type."""

    def describe_subnets(self, subnet_ids: Sequence[SubnetId]) -> list[Subnet]: ...

    def list_enis(self, instance_id: InstanceId) -> list[Eni]:
        """ENIs attached to the instance, ordered by device index."""

    def describe_eni(self, eni_id: EniId) -> Eni: ...

    def create_eni(
        self,
        subnet_id: SubnetId,
        security_groups: Sequence[str],
        secondary_ips: int,
        *,
        cluster: str,
        node: str,
        prefix_count: int = 0,
    ) -> Eni:
        """A new ENI pre-filled with ``secondary_ips`` secondary IPs or ``prefix_count``
        /28 prefixes (not both), tagged as ours."""

    def attach_eni(self, eni_id: EniId, instance_id: InstanceId, device_index: int) -> str:
        """Attach and set DeleteOnTermination; returns the attachment id."""

    def detach_eni(self, attachment_id: str, *, force: bool = False) -> None: ...

    def delete_eni(self, eni_id: EniId) -> None: ...

    def assign_ips(self, eni_id: EniId, count: int) -> tuple[str, ...]:
        """One AssignPrivateIpAddresses call; returns the new addresses."""

    def unassign_ips(self, eni_id: EniId, ips: Sequence[str]) -> None: ...

    def assign_prefixes(self, eni_id: EniId, count: int) -> tuple[str, ...]:
        """One AssignPrivateIpAddresses call for ``count`` /28 prefixes; returns the new
        prefixes. A subnet with free addresses but no free aligned /28 raises
        SubnetFragmented naming the subnet."""

    def unassign_prefixes(self, eni_id: EniId, prefixes: Sequence[str]) -> None: ...

    def list_leaked_enis(self, cluster: str, older_than_seconds: float) -> list[Eni]:
        """Our ENIs (tagged with this cluster) in state ``available``, older than the
        threshold. Never untagged or foreign ones."""

    def set_source_dest_check(self, eni_id: EniId, enabled: bool) -> None: ...

    def describe_route_tables(self, vpc_id: str) -> list[RouteTable]: ...

    def create_route(self, table_id: RouteTableId, cidr: str, eni_id: EniId) -> None: ...

    def replace_route(self, table_id: RouteTableId, cidr: str, eni_id: EniId) -> None: ...

    def delete_route(self, table_id: RouteTableId, cidr: str) -> None: ...
