"""The pool's decision step: whether, and what, the pool loop does at a given moment. Pure:
no cloud, no store, no kernel, no clock of its own. The caller passes ``now`` (monotonic
seconds), the per-ENI counts, the borrows waiting and the cordon; it does the I/O and
reports the outcome. The agent's loop (``ipam_daemon.pool.Pool``) and the pool simulator
(``bench.pool_loops``) drive this one class, so a pool-efficiency figure is the shipped
code's.

A look of the loop, in order:

    chores_due(now)  RECONCILE when reconcile_interval has passed since the last one
                     (sooner after some failures), COLLECT_LEAKED_ENIS every
                     leaked_eni_interval; the caller does them before the step
    step(now, ...)   back-off      after a failed action, nothing until it has run out
                     demand        the assigned count into a PeakWindow(eni_min_age), plus
                                   the borrows waiting for an address
                     decide        ipam_daemon.policy.decide (injectable for tests)
                     gates         the policy has nothing to do       -> AT_TARGET
                                   cordoned, and the action grows     -> CORDONED
                                   empty ENI ahead while paused       -> NO_ENI_AHEAD
                                   shrink within shrink_interval      -> SHRINK_INTERVAL
    succeeded() / failed(now, kind)   after the action

A gated ``Step`` says when to look again at the latest (``until``): the gate's end, the
next chore, or ``pool_interval`` from now, whichever is first (counts change without the
stepper knowing: a cooldown ends, a borrow comes; a borrow also wakes the loop early).

Waits after a failed action, by ``Failure`` (the caller maps its cloud errors to a kind):

    SUBNET_FULL          subnet_full_backoff
    ENI_LIMIT            subnet_full_backoff; reconcile at the next look (stale view?)
    IP_LIMIT             pool_interval; reconcile at the next look
    PERMISSION_DENIED    max_backoff
    RETRYABLE            pool_interval, doubled per retryable failure since the last
                         success, plus up to pool_interval of jitter (so a fleet of nodes
                         throttled together does not retry in step), at most max_backoff
                         (throttled, unavailable)
    OTHER                pool_interval; reconcile at the next look
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from ipam_daemon import policy
from ipam_daemon.policy import Action, EniCounts, Kind, Limits, PeakWindow, Targets

Decide = Callable[..., Action]  # (enis, targets, limits, demand) -> Action
Jitter = Callable[[float], float]  # limit -> a wait to add, in [0, limit]


def uniform_jitter(limit: float) -> float:
    return random.uniform(0.0, limit)

GROW = frozenset({Kind.ASSIGN, Kind.CREATE_ENI})
SHRINK = frozenset({Kind.UNASSIGN, Kind.DELETE_ENI, Kind.RETIRE})


class Chore(str, Enum):
    RECONCILE = "reconcile"
    COLLECT_LEAKED_ENIS = "collect_leaked_enis"


class Failure(str, Enum):
    """What kind of failure an action met: it chooses the wait (see the module docstring)."""

    SUBNET_FULL = "subnet_full"
    ENI_LIMIT = "eni_limit"
    IP_LIMIT = "ip_limit"
    PERMISSION_DENIED = "permission_denied"
    RETRYABLE = "retryable"
    OTHER = "other"


class Gate(str, Enum):
    """Why a step does not act (NONE: it does)."""

    NONE = "none"
    BACKOFF = "backoff"
    AT_TARGET = "at_target"
    CORDONED = "cordoned"
    NO_ENI_AHEAD = "no_eni_ahead"
    SHRINK_INTERVAL = "shrink_interval"


class IntervalSource(Protocol):
    """The agent's configuration, or anything with its names (the simulator's)."""

    pool_interval: float
    shrink_interval: float
    reconcile_interval: float
    leaked_eni_interval: float
    subnet_full_backoff: float
    max_backoff: float


@dataclass(frozen=True)
class Intervals:
    pool: float
    shrink: float
    reconcile: float
    leaked_eni_gc: float
    subnet_full_backoff: float
    max_backoff: float

    @classmethod
    def from_config(cls, config: IntervalSource) -> Intervals:
        return cls(pool=config.pool_interval, shrink=config.shrink_interval,
                   reconcile=config.reconcile_interval,
                   leaked_eni_gc=config.leaked_eni_interval,
                   subnet_full_backoff=config.subnet_full_backoff,
                   max_backoff=config.max_backoff)


@dataclass(frozen=True)
class Step:
    """The policy's action, and whether to do it now; gated: look again by ``until``."""

    action: Action
    gate: Gate = Gate.NONE
    until: float = 0.0

    @property
    def go(self) -> bool:
        return self.gate is Gate.NONE


NOT_ASKED = Action(Kind.NOTHING, reason="backing off after a failure; the policy not asked")


class PoolStepper:
    def __init__(self, targets: Targets, limits: Limits, intervals: Intervals, *,
                 decide: Decide = policy.decide, jitter: Jitter = uniform_jitter) -> None:
        self.targets = targets
        self.limits = limits
        self.intervals = intervals
        self._decide = decide
        self._jitter = jitter
        self._peaks = PeakWindow(targets.eni_min_age)  # demand history for ENI deletion
        self._backoff = 0.0  # the last retryable failure's wait; 0 after a success
        self._backoff_until = -math.inf
        self._last_shrink = -math.inf
        self._no_ahead_until = -math.inf  # an ENI ahead would take an address a pod could use
        self._next_reconcile = 0.0  # both due at the first look
        self._next_leak_gc = 0.0

    def configure(self, targets: Targets, intervals: Intervals) -> None:
        """New targets and intervals (a configuration that arrived while running)."""
        self.targets, self.intervals = targets, intervals

    # ---- the schedule -------------------------------------------------------------------

    def chores_due(self, now: float) -> tuple[Chore, ...]:
        due = []
        if now >= self._next_reconcile:
            due.append(Chore.RECONCILE)
        if now >= self._next_leak_gc:
            due.append(Chore.COLLECT_LEAKED_ENIS)
        return tuple(due)

    def reconciled(self, now: float) -> None:
        self._next_reconcile = now + self.intervals.reconcile

    def start_leak_gc(self, now: float) -> None:
        """A leaked-ENI GC begins: the next is an interval away, whether this one fails."""
        self._next_leak_gc = now + self.intervals.leaked_eni_gc

    def chore_failed(self, now: float) -> None:
        """A reconcile or GC failed: reconcile again a pool interval from now."""
        self._next_reconcile = now + self.intervals.pool

    def reconcile_soon(self, now: float) -> None:
        """Our view of the cloud may be wrong: reconcile at the next look."""
        self._next_reconcile = now

    # ---- one step -----------------------------------------------------------------------

    def step(self, now: float, counts: tuple[EniCounts, ...], *, waiting: int = 0,
             cordoned: bool = False) -> Step:
        """Whether to act now, and on what. Handing out a shrink starts its interval."""
        if now < self._backoff_until:
            return Step(NOT_ASKED, Gate.BACKOFF, self._look_again(now, self._backoff_until))
        self._peaks.window = self.targets.eni_min_age
        demand = replace(self._peaks.observe(now, sum(c.assigned for c in counts)),
                         waiting=waiting)
        action = self._decide(counts, self.targets, self.limits, demand)
        if action.kind is Kind.NOTHING:
            return Step(action, Gate.AT_TARGET, self._look_again(now))
        if cordoned and action.kind in GROW:
            return Step(action, Gate.CORDONED, self._look_again(now))
        if action.kind is Kind.CREATE_ENI and not action.count and now < self._no_ahead_until:
            return Step(action, Gate.NO_ENI_AHEAD, self._look_again(now, self._no_ahead_until))
        if action.kind in SHRINK:
            shrink_at = self._last_shrink + self.intervals.shrink
            if now < shrink_at:
                return Step(action, Gate.SHRINK_INTERVAL, self._look_again(now, shrink_at))
            self._last_shrink = now
        return Step(action, until=now)

    def _look_again(self, now: float, gate_end: float = math.inf) -> float:
        return max(min(gate_end, now + self.intervals.pool, self._next_reconcile,
                       self._next_leak_gc), now)

    # ---- outcomes -----------------------------------------------------------------------

    def succeeded(self) -> None:
        self._backoff = 0.0

    def pause_eni_ahead(self, now: float) -> None:
        """The subnet cannot spare an address for an empty ENI ahead: no such ENI for
        ``subnet_full_backoff`` (an ENI a shortfall needs is not held back)."""
        self._no_ahead_until = now + self.intervals.subnet_full_backoff

    def failed(self, now: float, kind: Failure) -> float:
        """An action failed: back off by its kind; the wait, in seconds."""
        i = self.intervals
        if kind is Failure.SUBNET_FULL:
            wait = i.subnet_full_backoff
        elif kind is Failure.ENI_LIMIT:
            wait = i.subnet_full_backoff
            self.reconcile_soon(now)
        elif kind is Failure.PERMISSION_DENIED:
            wait = i.max_backoff
        elif kind is Failure.RETRYABLE:
            self._backoff = min(max(self._backoff * 2, i.pool), i.max_backoff)
            wait = min(self._backoff + self._jitter(i.pool), i.max_backoff)
        else:  # IP_LIMIT, OTHER
            wait = i.pool
            self.reconcile_soon(now)
        self._backoff_until = now + wait
        return wait
