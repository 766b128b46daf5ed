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
    """

    attach_latency: float = 0.0
    route_table_limit: int = 50
    buckets_enabled: bool = True
    buckets: Mapping[str, BucketSpec] = field(default_factory=lambda: dict(DEFAULT_BUCKETS))
    seed: int = 0
    timeout_fault_seconds: float = 30.0

    def __post_init__(self) -> None:
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
