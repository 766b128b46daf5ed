"""A discrete-event simulation of one node's address pool, replaying a churn trace
(``bench.trace``) through a pool loop driven by real policy functions.

The node has the instance limits (ENIs x address slots per ENI, the primary ENI's own
address not for pods) and a cloud whose calls take simulated time: AssignPrivateIpAddresses and
UnassignPrivateIpAddresses ``assign_latency``, create + attach of a new (pre-filled) ENI
``create_eni_latency``, detach + delete ``delete_eni_latency``. One loop thread makes the
calls one at a time, as both agents do. A released address cools for ``cooldown`` seconds
and is never handed out while cooling, whatever the policy counts. A reconcile or a
leaked-ENI GC is one DescribeNetworkInterfaces (``describe_latency``) that finds the node as
it is (counted apart from the mutating calls); the simulated cloud never fails a call.

Prefix delegation (``prefix_delegation``): each address slot holds a /28 prefix of 16
addresses, one Assign or Unassign call for any number of prefixes of one ENI, an ENI
created pre-filled with prefixes; a prefix goes back whole or not at all. Whose rules
hold the addresses is the node's ``datastore``:

- ``UNDERLAY`` (the agent's store, ``ipam_daemon.store``): a borrow takes the lowest device
  index, then the mode's kind of address, then the prefix with the fewest borrowable
  addresses (prefixes fill one by one); a prefix goes back only when all 16 addresses are
  free and cooled, the highest first; the loop sees the store's counts through the shipped
  ``ipam_daemon.policy.eni_counts``. ``tests/test_bench_prefix.py`` checks the borrow and
  give-back choices against the real store, step by step.
- ``IPAMD`` (AWS VPC CNI's datastore, ``pkg/ipamd/datastore``): a borrow takes any prefix
  with a borrowable address, ENIs and prefixes in Go's randomized map order (a seeded
  uniform choice here); a prefix none of whose addresses is assigned may go back, cooling
  ones included, as FindFreeableCidrs does; whole free prefixes are counted the same way
  (GetFreePrefixes), in ``EniCounts.giveable``.
- ``IPAMD_PACKED``: ipamd's rules with the store's packed borrows, to tell the policy's
  share of a difference from the packing's.

In secondary-address mode every datastore borrows the lowest device index, lowest
address first (the figures from before prefix delegation are unchanged).

Two loops (``bench.pool_loops``):
- ``UnderlayLoop`` drives the agent's own ``ipam_daemon.stepper.PoolStepper`` on the
  simulated clock, as ``ipam_daemon.pool.Pool.run`` does on the real one: the due chores,
  then one step; after an action it looks again at once, else it sleeps until the step says
  or a borrow or a release wakes it (same gates, back-off and schedule as on a node).
- ``AwsLoop`` mirrors ipamd's ticker: every ``pool_interval`` after the previous pass, grow
  or shrink (shrink at most every ``shrink_interval``, freeing over every ENI), then remove
  at most one unused ENI; nothing wakes it early.

An ADD that finds no borrowable address waits (the kubelet's retries) in FIFO order; it is
a pool miss. Measures: idle IP-seconds (addresses held but not assigned, cooling and
releasing included), ENI-seconds, misses, ADD waits, cloud calls by EC2 action.
"""
from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable

from ipam_daemon.policy import (
    PREFIX_SIZE, Action, EniCounts, Holdings, Kind, Limits, eni_counts,
)
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


class Datastore(str, Enum):
    """Whose rules hold the node's addresses (see the module docstring)."""

    UNDERLAY = "underlay"
    IPAMD = "ipamd"
    IPAMD_PACKED = "ipamd-packed"


@dataclass(frozen=True)
class SimConfig:
    max_enis: int = 3  # m5.large
    ips_per_eni: int = 10  # address slots, the ENI's primary address's included
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
    prefix_delegation: bool = False  # a slot holds a /28 prefix, not one address
    datastore: Datastore = Datastore.UNDERLAY
    seed: int = 0  # ipamd's map order

    @property
    def limits(self) -> Limits:
        return Limits(self.max_enis, self.ips_per_eni,
                      PREFIX_SIZE if self.prefix_delegation else 1)

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
    prefixes: dict[int, tuple[int, ...]] = field(default_factory=dict)  # id -> its 16 ips
    prefix_of: dict[int, int] = field(default_factory=dict)  # ip -> prefix id
    deleting: bool = False

    @property
    def held(self) -> int:
        return len(self.free) + len(self.assigned) + len(self.cooling) + len(self.releasing)

    @property
    def slots(self) -> int:
        """Address slots in use besides the ENI's primary address."""
        return self.held - len(self.prefix_of) + len(self.prefixes)

    def whole_free(self) -> list[int]:
        """Prefixes whose 16 addresses are all free (cooled), by id."""
        return [p for p, ips in sorted(self.prefixes.items()) if self.free.issuperset(ips)]

    def unassigned(self) -> list[int]:
        """Prefixes none of whose addresses is assigned (ipamd's free prefixes), by id."""
        return [p for p, ips in sorted(self.prefixes.items())
                if not any(ip in self.assigned or ip in self.releasing for ip in ips)]

    def holdings(self) -> Holdings:
        free_singles = sum(ip not in self.prefix_of for ip in self.free)
        singles = self.held - len(self.prefix_of)
        return Holdings(len(self.free), len(self.assigned), len(self.cooling),
                        len(self.releasing), singles, free_singles, len(self.prefixes),
                        len(self.whole_free()))


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
    eni_seconds: float = 0.0  # ENIs attached, integrated over the trace

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
        self._prefix_ids = itertools.count(1)
        self._eni_ids = itertools.count(1)
        self._rng = random.Random(config.seed)  # ipamd's map order
        self.calls: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self.describes = 0
        self.peak_held = 0
        self.peak_enis = 1

    @property
    def _packed(self) -> bool:
        return self.config.datastore is not Datastore.IPAMD

    def settle(self) -> None:
        for eni in self.enis:
            for ip, until in list(eni.cooling.items()):
                if until <= self.now:
                    del eni.cooling[ip]
                    eni.free.add(ip)

    def counts(self) -> tuple[EniCounts, ...]:
        """What the loop sees: the agent's counts (``eni_counts``) over the store's; with
        ipamd's datastore, its free prefixes (no address assigned) as ``giveable``."""
        self.settle()
        out = []
        for e in self.enis:
            if e.deleting:
                continue
            counts = eni_counts(e.eni_id, e.holdings(), self.config.limits,
                                prefix_delegation=self.config.prefix_delegation,
                                is_primary=e.device == 0, age=self.now - e.created_at)
            if self.config.datastore is not Datastore.UNDERLAY and e.prefixes:
                counts = replace(counts, giveable=len(e.unassigned()))
            out.append(counts)
        return tuple(out)

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
        enis = [e for e in sorted(self.enis, key=lambda e: e.device)
                if e.free and not e.deleting]
        if not enis:
            return None
        if not self.config.prefix_delegation:
            eni, ip = enis[0], min(enis[0].free)
        elif self._packed:
            eni, ip = enis[0], self._packed_choice(enis[0])
        else:
            eni, ip = self._map_order_choice(enis)
            if eni is None:
                return None
        eni.free.remove(ip)
        eni.assigned[ip] = pod
        return ip

    @staticmethod
    def _packed_choice(eni: SimEni) -> int:
        """The store's order on one ENI: prefix addresses first (secondary ones in secondary
        mode), then the prefix with the fewest borrowable addresses, then the prefix, then
        the address."""
        open_ = {p: sum(ip in eni.free for ip in ips) for p, ips in eni.prefixes.items()}
        return min(eni.free, key=lambda ip: (ip not in eni.prefix_of,
                                             open_.get(eni.prefix_of.get(ip, 0), 0),
                                             eni.prefix_of.get(ip, 0), ip))

    def _map_order_choice(self, enis: list[SimEni]) -> tuple[SimEni | None, int]:
        """ipamd: ENIs and prefixes in Go's randomized map order, the first with a borrowable
        address of a prefix (its secondary addresses are not used in prefix mode)."""
        enis = enis[:]
        self._rng.shuffle(enis)
        for eni in enis:
            open_ = [p for p, ips in eni.prefixes.items() if eni.free.intersection(ips)]
            if open_:
                prefix = self._rng.choice(sorted(open_))
                return eni, min(eni.free.intersection(eni.prefixes[prefix]))
        return None, 0

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
        slots = self.config.limits.secondary_per_eni
        if action.kind is Kind.ASSIGN:
            eni = self.find(action.eni_id)
            if not 0 < action.count <= slots - eni.slots:
                raise SimulationError(f"assign {action.count} to {eni.eni_id} using"
                                      f" {eni.slots} of {slots} slots")
            return self.config.assign_latency
        if action.kind is Kind.CREATE_ENI:
            if len(self.enis) >= self.config.max_enis:
                raise SimulationError(f"a new ENI past the limit of {self.config.max_enis}")
            if not 0 <= action.count <= slots:
                raise SimulationError(f"a new ENI with {action.count} of {slots} slots")
            return self.config.create_eni_latency
        if action.kind is Kind.UNASSIGN:
            self._reserve(self.find(action.eni_id), action.count)
            return self.config.assign_latency
        if action.kind is Kind.DELETE_ENI:
            eni = self.find(action.eni_id)
            if eni.device == 0 or eni.assigned or eni.cooling or eni.releasing:
                raise SimulationError(f"delete {eni.eni_id}: primary or in use")
            eni.deleting = True
            return self.config.delete_eni_latency
        raise SimulationError(f"unknown action {action.kind}")

    def _reserve(self, eni: SimEni, count: int) -> None:
        """What an Unassign of ``count`` gives back: free addresses, or whole prefixes (the
        store's: all 16 free and cooled, highest first; ipamd's: none assigned, any)."""
        if not eni.prefixes:
            ips = sorted(eni.free)[:count]
        else:
            if self.config.datastore is Datastore.UNDERLAY:
                chosen = eni.whole_free()[::-1][:count]
            else:
                chosen = eni.unassigned()
                self._rng.shuffle(chosen)
                chosen = chosen[:count]
            ips = [ip for p in chosen for ip in eni.prefixes[p]]
            if any(ip in eni.assigned for ip in ips):
                raise SimulationError(f"{eni.eni_id}: a prefix with an assigned address"
                                      " would go back")
        for ip in ips:
            eni.free.discard(ip)
            eni.cooling.pop(ip, None)
            eni.releasing.add(ip)

    def finish(self, action: Action) -> None:
        if action.kind is Kind.ASSIGN:
            self._fill(self.find(action.eni_id), action.count)
        elif action.kind is Kind.CREATE_ENI:
            taken = {e.device for e in self.enis}
            device = min(set(range(self.config.max_enis)) - taken)
            eni = SimEni(f"eni-{next(self._eni_ids)}", device, self.now)
            self._fill(eni, action.count)
            self.enis.append(eni)
        elif action.kind is Kind.UNASSIGN:
            eni = self.find(action.eni_id)
            for ip in eni.releasing:
                prefix = eni.prefix_of.pop(ip, None)
                if prefix is not None:
                    eni.prefixes.pop(prefix, None)
            eni.releasing.clear()
        elif action.kind is Kind.DELETE_ENI:
            self.enis = [e for e in self.enis if e.eni_id != action.eni_id]
        self.check()

    def _fill(self, eni: SimEni, count: int) -> None:
        """``count`` slots of new addresses: prefixes of 16, or single addresses."""
        if not self.config.prefix_delegation:
            eni.free.update(next(self._ips) for _ in range(count))
            return
        for _ in range(count):
            prefix = next(self._prefix_ids)
            eni.prefixes[prefix] = tuple(next(self._ips) for _ in range(PREFIX_SIZE))
            eni.prefix_of.update((ip, prefix) for ip in eni.prefixes[prefix])
            eni.free.update(eni.prefixes[prefix])

    def check(self) -> None:
        slots = self.config.limits.secondary_per_eni
        if len(self.enis) > self.config.max_enis:
            raise SimulationError(f"{len(self.enis)} ENIs > {self.config.max_enis}")
        seen: set[int] = set()
        for eni in self.enis:
            if eni.slots > slots:
                raise SimulationError(f"{eni.eni_id} uses {eni.slots} > {slots} slots")
            ips = [*eni.free, *eni.assigned, *eni.cooling, *eni.releasing]
            if len(set(ips)) != len(ips) or seen & set(ips):
                raise SimulationError("an address is in two states or on two ENIs")
            seen |= set(ips)
            in_prefixes = [ip for held in eni.prefixes.values() for ip in held]
            if sorted(in_prefixes) != sorted(eni.prefix_of) or \
                    not set(in_prefixes) <= set(ips):
                raise SimulationError(f"{eni.eni_id}: a prefix is held in part")
        self.peak_held = max(self.peak_held, self.held())
        self.peak_enis = max(self.peak_enis, len(self.enis))
