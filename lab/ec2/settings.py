"""Start-up settings of the emulated EC2 (frozen) and the categories of EC2's request
token buckets.

Token buckets follow EC2's documented request throttling (per account and region):

    category             actions                                             capacity  refill/s
    eni_mutating         Assign/UnassignPrivateIpAddresses, Create/Delete-       100        5
                         NetworkInterface, ModifyNetworkInterfaceAttribute
    tags                 CreateTags, DeleteTags                                  100       10
    mutating             every other non-Describe action (Attach/Detach, ...)     50        5
    describe             Describe* with ids or filters, other Describe*          100       20
    describe_unfiltered  DescribeInstances/DescribeNetworkInterfaces with          50       10
                         neither ids nor filters
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

logger = logging.getLogger(__name__)

ENI_MUTATING_ACTIONS = frozenset({
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "CreateNetworkInterface",
    "DeleteNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
})
TAG_ACTIONS = frozenset({"CreateTags", "DeleteTags"})
UNFILTERED_DESCRIBES = frozenset({"DescribeInstances", "DescribeNetworkInterfaces"})


@dataclass(frozen=True)
class BucketSpec:
    capacity: float
    refill_per_second: float

    def __post_init__(self) -> None:
        if self.capacity < 0 or self.refill_per_second < 0:
            raise ValueError(
                f"bucket capacity and refill must be >= 0, got {self.capacity}, "
                f"{self.refill_per_second}"
            )


DEFAULT_BUCKETS: Mapping[str, BucketSpec] = MappingProxyType({
    "eni_mutating": BucketSpec(100, 5),
    "tags": BucketSpec(100, 10),
    "mutating": BucketSpec(50, 5),
    "describe": BucketSpec(100, 20),
    "describe_unfiltered": BucketSpec(50, 10),
})


# Rules of the strict layer that the control API can switch off, so a test can be shown to
# fail without the rule it checks (every other rule is always on).
SWITCHABLE_RULES: Mapping[str, str] = MappingProxyType({
    "prefix-slots": "each IPv4 prefix takes one of the ENI's address slots (assign, attach)",
    "prefix-blocks": "a prefix is a free aligned /28 (no assigned address, prefix or "
                     "reserved address in it), else InsufficientCidrBlocks; single addresses "
                     "and the subnet's free count leave assigned prefixes alone",
    "prefix-nitro": "prefixes only on Nitro instance types",
    "cidr-reservations": "a prefix reservation is for prefixes only; an explicit one is used "
                         "by neither automatic assignment",
})


def validate_rule_names(names: object) -> frozenset[str]:
    """The rule names as a set, or ValueError naming the unknown one."""
    if isinstance(names, str) or not isinstance(names, (list, tuple, set, frozenset)):
        raise ValueError(f"rules must be a list of rule names, got {names!r}")
    for name in names:
        if name not in SWITCHABLE_RULES:
            raise ValueError(f"unknown rule {name!r}; rules that can be switched off: "
                             f"{sorted(SWITCHABLE_RULES)}")
    return frozenset(names)


def categorise_action(action: str, filtered: bool) -> str:
    """The token-bucket category an EC2 action draws from."""
    if action in ENI_MUTATING_ACTIONS:
        return "eni_mutating"
    if action in TAG_ACTIONS:
        return "tags"
    if action.startswith(("Describe", "Get", "List", "Search")):
        if action in UNFILTERED_DESCRIBES and not filtered:
            return "describe_unfiltered"
        return "describe"
    return "mutating"


@dataclass(frozen=True)
class EmulatorSettings:
    """How an emulator starts; most of it can be changed at run time through the control API.

    attach_latency: seconds AttachNetworkInterface waits before it completes.
    route_table_limit: routes per route table (EC2's default quota is 50).
    buckets_enabled / buckets: EC2's request token buckets (see module docstring).
    seed: seeds fault injection and address choice, so a run can be repeated.
    timeout_fault_seconds: how long an injected "timeout" fault stalls before answering 500.
    rules_off: names from SWITCHABLE_RULES not to enforce (only to show a test needs them).
    """

    attach_latency: float = 0.0
    route_table_limit: int = 50
    buckets_enabled: bool = True
    buckets: Mapping[str, BucketSpec] = field(default_factory=lambda: dict(DEFAULT_BUCKETS))
    seed: int = 0
    timeout_fault_seconds: float = 30.0
    rules_off: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules_off", validate_rule_names(self.rules_off))
        if self.attach_latency < 0:
            raise ValueError(f"attach_latency must be >= 0, got {self.attach_latency}")
        if self.route_table_limit < 1:
            raise ValueError(f"route_table_limit must be >= 1, got {self.route_table_limit}")
        if self.timeout_fault_seconds < 0:
            raise ValueError(
                f"timeout_fault_seconds must be >= 0, got {self.timeout_fault_seconds}"
            )
        unknown = set(self.buckets) - set(DEFAULT_BUCKETS)
        if unknown:
            raise ValueError(
                f"unknown bucket categories {sorted(unknown)}; known: {sorted(DEFAULT_BUCKETS)}"
            )
