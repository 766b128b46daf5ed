"""A discrete-event simulation of one node's address pool, replaying a churn trace
(``bench.trace``) through a pool loop driven by real policy functions.

The node has the instance limits (ENIs x addresses per ENI, the primary ENI's own address not
for pods) and a cloud whose calls take simulated time: AssignPrivateIpAddresses and
UnassignPrivateIpAddresses ``assign_latency``, create + attach of a new (pre-filled) ENI
``create_eni_latency``, detach + delete ``delete_eni_latency``. One loop thread makes the
calls one at a time, as both agents do. A released address cools for ``cooldown`` seconds
and is never handed out while cooling, whatever the policy counts. A reconcile or a
leaked-ENI GC is one DescribeNetworkInterfaces (``describe_latency``) that finds the node as
it is (counted apart from the mutating calls); the simulated cloud never fails a call.

Two loops (``bench.pool_loops``):
- ``UnderlayLoop`` drives the agent's own ``ipam_daemon.stepper.PoolStepper`` on the
  simulated clock, as ``ipam_daemon.pool.Pool.run`` does on the real one: the due chores,
  then one step; after an action it looks again at once, else it sleeps until the step says
  or a borrow or a release wakes it (same gates, back-off and schedule as on a node).
- ``AwsLoop`` mirrors ipamd's ticker: every ``pool_interval`` after the previous pass, grow
  or shrink (shrink at most every ``shrink_interval``, freeing over every ENI), then remove
  at most one unused ENI; nothing wakes it early.

An ADD that finds no borrowable address waits (the kubelet's retries) in FIFO order; it is
a pool miss. Measures: idle IP-seconds (secondary addresses held but not assigned, cooling
included), misses, ADD waits, cloud calls by EC2 action.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

from ipam_daemon.policy import Action, EniCounts, Kind, Limits
from ipam_daemon.stepper import Intervals


logger = logging.getLogger(__name__)

Decide = Callable[..., Action]  # (enis, targets, limits[, demand]) -> Action

EC2_CALLS = {
    Kind.ASSIGN: ("AssignPrivateIpAddresses",),
    Kind.UNASSIGN: ("UnassignPrivateIpAddresses",),
    Kind.CREATE_ENI: ("CreateNetworkInterface", "AttachNetworkInterface",
                      "ModifyNetworkInterfaceAttribute"),
    Kind.DELETE_ENI: ("DetachNetworkInterface", "DeleteNetworkInterface"),
}
DESCRIBE_CALL = "DescribeNetworkInterfaces"  # what a reconcile and a leaked-ENI GC ask


class SimulationError(AssertionError):
    """The simulated node broke an invariant (a policy asked for the impossible)."""


@dataclass(frozen=True)
class SimConfig:
    max_enis: int = 3  # m5.large
    ips_per_eni: int = 10
    assign_latency: float = 0.3
    create_eni_latency: float = 3.0
    delete_eni_latency: float = 1.0
    describe_latency: float = 0.1
    cooldown: float = 30.0
    # the agent's names, so that ``Intervals.from_config`` reads this as it reads AgentConfig
    pool_interval: float = 5.0
    shrink_interval: float = 30.0
    reconcile_interval: float = 60.0
    leaked_eni_interval: float = 3600.0
    subnet_full_backoff: float = 120.0
    max_backoff: float = 30.0

    @property
    def limits(self) -> Limits:
        return Limits(self.max_enis, self.ips_per_eni)

    @property
    def intervals(self) -> Intervals:
        return Intervals.from_config(self)


@dataclass
class SimEni:
    eni_id: str
    device: int
    created_at: float
    free: set[int] = field(default_factory=set)
    assigned: dict[int, str] = field(default_factory=dict)  # ip -> pod
    cooling: dict[int, float] = field(default_factory=dict)  # ip -> cooldown end
    releasing: set[int] = field(default_factory=set)
    deleting: bool = False

    @property
    def held(self) -> int:
        return len(self.free) + len(self.assigned) + len(self.cooling) + len(self.releasing)


@dataclass(frozen=True)
class SimResult:
    name: str
    idle_ip_seconds: float
    cooling_ip_seconds: float  # the part of the idle IP-seconds spent cooling
    mean_idle_ips: float
    peak_held: int
    peak_enis: int
    adds: int
    misses: int
    cancelled: int
    waits: tuple[float, ...]
    calls: dict[str, int]  # mutating EC2 calls by action
    actions: dict[str, int]
    describes: int = 0  # DescribeNetworkInterfaces of reconciles and leaked-ENI GCs

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


class SimNode:
    """The node's ENIs and addresses, and the clock; checks its invariants on every change."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.enis: list[SimEni] = [SimEni("eni-0", 0, 0.0)]
        self.now = 0.0
        self._ips = itertools.count(1)
        self._eni_ids = itertools.count(1)
        self.calls: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self.describes = 0
        self.peak_held = 0
        self.peak_enis = 1

    def settle(self) -> None:
        for eni in self.enis:
            for ip, until in list(eni.cooling.items()):
                if until <= self.now:
                    del eni.cooling[ip]
                    eni.free.add(ip)

    def counts(self) -> tuple[EniCounts, ...]:
        self.settle()
        per_eni = self.config.limits.secondary_per_eni
        return tuple(EniCounts(e.eni_id, per_eni, len(e.free), len(e.assigned), len(e.cooling),
                               len(e.releasing), e.device == 0, self.now - e.created_at)
                     for e in self.enis if not e.deleting)

    def cooling_between(self, start: float, end: float) -> float:
        """IP-seconds spent cooling in [start, end] (cooldowns end on their own)."""
        return sum(max(min(until, end) - start, 0.0)
                   for e in self.enis for until in e.cooling.values())

    def held(self) -> int:
        return sum(e.held for e in self.enis)

    def assigned(self) -> int:
        return sum(len(e.assigned) for e in self.enis)

    def borrow(self, pod: str) -> int | None:
        self.settle()
        for eni in sorted(self.enis, key=lambda e: e.device):
            if eni.free and not eni.deleting:
                ip = min(eni.free)
                eni.free.remove(ip)
                eni.assigned[ip] = pod
                return ip
        return None

    def release(self, pod: str) -> bool:
        for eni in self.enis:
            for ip, owner in eni.assigned.items():
                if owner == pod:
                    del eni.assigned[ip]
                    eni.cooling[ip] = self.now + self.config.cooldown
                    return True
        return False

    def find(self, eni_id: str) -> SimEni:
        for eni in self.enis:
            if eni.eni_id == eni_id and not eni.deleting:
                return eni
        raise SimulationError(f"{eni_id} is not attached")

    def describe(self) -> float:
        """A DescribeNetworkInterfaces (reconcile, GC): the node as it is; its latency."""
        self.describes += 1
        return self.config.describe_latency

    def begin(self, action: Action) -> float:
        """Start ``action``'s cloud call; its latency."""
        self.settle()
        self.actions[action.kind.value] = self.actions.get(action.kind.value, 0) + 1
        for call in EC2_CALLS[action.kind]:
            self.calls[call] = self.calls.get(call, 0) + 1
        per_eni = self.config.limits.secondary_per_eni
        if action.kind is Kind.ASSIGN:
            eni = self.find(action.eni_id)
            if not 0 < action.count <= per_eni - eni.held:
                raise SimulationError(f"assign {action.count} to {eni.eni_id} holding"
                                      f" {eni.held} of {per_eni}")
            return self.config.assign_latency
        if action.kind is Kind.CREATE_ENI:
            if len(self.enis) >= self.config.max_enis:
                raise SimulationError(f"a new ENI past the limit of {self.config.max_enis}")
            if not 0 <= action.count <= per_eni:
                raise SimulationError(f"a new ENI with {action.count} addresses")
            return self.config.create_eni_latency
        if action.kind is Kind.UNASSIGN:
            eni = self.find(action.eni_id)
            for ip in sorted(eni.free)[:action.count]:
                eni.free.remove(ip)
                eni.releasing.add(ip)
            return self.config.assign_latency
        if action.kind is Kind.DELETE_ENI:
            eni = self.find(action.eni_id)
            if eni.device == 0 or eni.assigned or eni.cooling or eni.releasing:
                raise SimulationError(f"delete {eni.eni_id}: primary or in use")
            eni.deleting = True
            return self.config.delete_eni_latency
        raise SimulationError(f"unknown action {action.kind}")

    def finish(self, action: Action) -> None:
        if action.kind is Kind.ASSIGN:
            self.find(action.eni_id).free.update(next(self._ips) for _ in range(action.count))
        elif action.kind is Kind.CREATE_ENI:
            taken = {e.device for e in self.enis}
            device = min(set(range(self.config.max_enis)) - taken)
            eni = SimEni(f"eni-{next(self._eni_ids)}", device, self.now)
            eni.free.update(next(self._ips) for _ in range(action.count))
            self.enis.append(eni)
        elif action.kind is Kind.UNASSIGN:
            self.find(action.eni_id).releasing.clear()
        elif action.kind is Kind.DELETE_ENI:
            self.enis = [e for e in self.enis if e.eni_id != action.eni_id]
        self.check()

    def check(self) -> None:
        per_eni = self.config.limits.secondary_per_eni
        if len(self.enis) > self.config.max_enis:
            raise SimulationError(f"{len(self.enis)} ENIs > {self.config.max_enis}")
        seen: set[int] = set()
        for eni in self.enis:
            if eni.held > per_eni:
                raise SimulationError(f"{eni.eni_id} holds {eni.held} > {per_eni}")
            ips = [*eni.free, *eni.assigned, *eni.cooling, *eni.releasing]
            if len(set(ips)) != len(ips) or seen & set(ips):
                raise SimulationError("an address is in two states or on two ENIs")
            seen |= set(ips)
        self.peak_held = max(self.peak_held, self.held())
        self.peak_enis = max(self.peak_enis, len(self.enis))
