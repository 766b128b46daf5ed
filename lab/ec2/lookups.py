"""What every rule of the strict layer works with: the Verdict a check returns, the
RuleContext it reads (moto's backend, the address allocator, the runtime knobs), and the
lookups that answer EC2's MissingParameter and NotFound errors."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from lab.ec2.addresses import AddressAllocator
from lab.ec2.snapshot import iterate_instances, iterate_subnets
from lab.ec2.wire import ApiRequest, Refusal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    params: list[tuple[str, str]] | None = None  # the request moto gets instead
    before: Callable[[], None] | None = None  # runs under the lock just before moto
    after: Callable[[bytes], bytes] | None = None  # rewrites moto's successful answer


@dataclass(frozen=True)
class RuleContext:
    backend: Any
    allocator: AddressAllocator
    route_table_limit: int
    rules_off: frozenset[str] = frozenset()  # settings.SWITCHABLE_RULES not enforced

    def enforces(self, rule: str) -> bool:
        return rule not in self.rules_off


def require(request: ApiRequest, name: str) -> str:
    value = request.get(name)
    if not value:
        raise Refusal("MissingParameter", f"The request must contain the parameter {name}")
    return value


def find_eni(context: RuleContext, eni_id: str) -> Any:
    eni = context.backend.enis.get(eni_id)
    if eni is None:
        raise Refusal("InvalidNetworkInterfaceID.NotFound",
                      f"The networkInterface ID '{eni_id}' does not exist")
    return eni


def find_instance(context: RuleContext, instance_id: str) -> Any:
    for instance in iterate_instances(context.backend):
        if instance.id == instance_id:
            return instance
    raise Refusal("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")


def find_subnet(context: RuleContext, subnet_id: str) -> Any:
    for subnet in iterate_subnets(context.backend):
        if subnet.id == subnet_id:
            return subnet
    raise Refusal("InvalidSubnetID.NotFound", f"The subnet ID '{subnet_id}' does not exist")


def check_groups(context: RuleContext, group_ids: list[str], vpc_id: str) -> None:
    """Each security group must exist in ``vpc_id``: EC2's error codes list
    InvalidGroup.NotFound for a group that does not exist or is in another VPC than the
    request (moto takes any group id)."""
    for group_id in group_ids:
        group = context.backend.get_security_group_from_id(group_id)
        if group is None or group.vpc_id != vpc_id:
            raise Refusal("InvalidGroup.NotFound",
                          f"The security group '{group_id}' does not exist in VPC '{vpc_id}'")
