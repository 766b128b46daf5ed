"""The event engine, the two pool loops (underlay's and ipamd's) and ``simulate``, which
replays a trace through one of them on a simulated node (``bench.node_sim``)."""
from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from typing import Callable

from ipam_daemon.policy import Action, Kind, Targets
from ipam_daemon.stepper import Chore, PoolStepper

from bench.node_sim import Decide, SimConfig, SimNode, SimResult
from bench.trace import Trace

logger = logging.getLogger(__name__)


class Engine:
    """A clock and a queue of callbacks; ``run`` integrates the idle addresses and the
    attached ENIs over time."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.idle_ip_seconds = 0.0
        self.cooling_ip_seconds = 0.0
        self.eni_seconds = 0.0

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (max(when, self.node.now), next(self._seq), callback))

    def run(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, callback = heapq.heappop(self._queue)
            self._advance(when)
            callback()
        self._advance(until)

    def _advance(self, when: float) -> None:
        idle = self.node.held() - self.node.assigned()
        self.idle_ip_seconds += idle * (when - self.node.now)
        self.cooling_ip_seconds += self.node.cooling_between(self.node.now, when)
        self.eni_seconds += len(self.node.enis) * (when - self.node.now)
        self.node.now = when


class UnderlayLoop:
    """``ipam_daemon.pool.Pool.run`` on the simulated clock, driving the agent's own
    ``PoolStepper``: the due chores first (a reconcile or a leaked-ENI GC is one Describe
    that finds the node as it is), then one step; after an action, look again at once; else
    sleep until the step's ``until`` or a wake-up (a borrow, a release, a served ADD)."""

    def __init__(self, sim: "Simulation", decide: Decide, targets: Targets) -> None:
        self.sim = sim
        self.stepper = PoolStepper(targets, sim.config.limits, sim.config.intervals,
                                   decide=decide)
        self.sleeping = False
        self._generation = 0

    def start(self) -> None:
        self.sim.engine.at(0.0, self.step)

    def wake(self) -> None:
        if self.sleeping:
            self.sleeping = False
            self._generation += 1
            self.sim.engine.at(self.sim.node.now, self.step)

    def step(self) -> None:
        self.sleeping = False
        node = self.sim.node
        chores = self.stepper.chores_due(node.now)
        if chores:
            return self._do_chore(chores[0])
        step = self.stepper.step(node.now, node.counts(), waiting=len(self.sim.pending))
        if not step.go:
            return self._sleep(step.until)
        self.sim.call(step.action, self._acted)

    def _do_chore(self, chore: Chore) -> None:
        if chore is Chore.RECONCILE:
            def reconciled() -> None:
                self.stepper.reconciled(self.sim.node.now)
                self.step()
            return self.sim.describe(reconciled)
        self.stepper.start_leak_gc(self.sim.node.now)
        self.sim.describe(self.step)

    def _acted(self) -> None:
        self.stepper.succeeded()
        self.step()

    def _sleep(self, until: float) -> None:
        self.sleeping = True
        self._generation += 1
        generation = self._generation
        self.sim.engine.at(until, lambda: self._tick(generation))

    def _tick(self, generation: int) -> None:
        if self.sleeping and generation == self._generation:
            self.step()


class AwsLoop:
    """ipamd's ticker: a pass every ``pool_interval`` after the last one ends; grow or shrink
    (at most every ``shrink_interval``, over every ENI), then remove at most one unused ENI.
    Borrows and releases do not wake it."""

    def __init__(self, sim: "Simulation", decide_pool: Decide, decide_free_eni: Decide,
                 targets: Targets) -> None:
        self.sim, self.targets = sim, targets
        self.decide_pool, self.decide_free_eni = decide_pool, decide_free_eni
        self._last_decrease = -float("inf")

    def start(self) -> None:
        self.sim.engine.at(0.0, self.tick)

    def wake(self) -> None:
        pass

    def _decide(self, decide: Decide) -> Action:
        return decide(self.sim.node.counts(), self.targets, self.sim.config.limits)

    def tick(self) -> None:
        action = self._decide(self.decide_pool)
        if action.kind in (Kind.ASSIGN, Kind.CREATE_ENI):
            return self.sim.call(action, self.free_eni)
        if action.kind is Kind.UNASSIGN:
            if self.sim.node.now - self._last_decrease >= self.sim.config.shrink_interval:
                self._last_decrease = self.sim.node.now
                return self.sim.call(action, self.decrease_more)
        self.free_eni()

    def decrease_more(self) -> None:
        action = self._decide(self.decide_pool)
        if action.kind is Kind.UNASSIGN:
            return self.sim.call(action, self.decrease_more)
        self.free_eni()

    def free_eni(self) -> None:
        action = self._decide(self.decide_free_eni)
        if action.kind is Kind.DELETE_ENI:
            return self.sim.call(action, self.sleep)
        self.sleep()

    def sleep(self) -> None:
        self.sim.engine.at(self.sim.node.now + self.sim.config.pool_interval, self.tick)


class Simulation:
    def __init__(self, trace: Trace, config: SimConfig) -> None:
        self.trace, self.config = trace, config
        self.node = SimNode(config)
        self.engine = Engine(self.node)
        self.loop: UnderlayLoop | AwsLoop | None = None
        self.pending: deque[tuple[str, float]] = deque()
        self.running: set[str] = set()
        self.waits: list[float] = []
        self.misses = 0
        self.cancelled = 0
        self.busy = False

    def call(self, action: Action, then: Callable[[], None]) -> None:
        """Make ``action``'s cloud call; when it returns, serve waiting ADDs, then ``then``."""
        def done() -> None:
            self.node.finish(action)
            self.serve()
            then()
        self._hold_loop(self.node.begin(action), done)

    def describe(self, then: Callable[[], None]) -> None:
        """A Describe call (reconcile, leaked-ENI GC): it changes nothing, but the loop waits
        for it; then ``then``."""
        self._hold_loop(self.node.describe(), then)

    def _hold_loop(self, latency: float, done: Callable[[], None]) -> None:
        if self.busy:
            raise AssertionError("two cloud calls at once from one loop")
        self.busy = True

        def returned() -> None:
            self.busy = False
            done()
        self.engine.at(self.node.now + latency, returned)

    def add(self, pod: str) -> None:
        if not self.pending and self.node.borrow(pod) is not None:
            self.running.add(pod)
            self.waits.append(0.0)
        else:
            self.misses += 1
            self.pending.append((pod, self.node.now))
        self.node.check()
        self.loop.wake()

    def delete(self, pod: str) -> None:
        if pod in self.running:
            self.running.remove(pod)
            self.node.release(pod)
            self.engine.at(self.node.now + self.config.cooldown, self.serve)
        else:
            waiting = [p for p in self.pending if p[0] == pod]
            for entry in waiting:
                self.pending.remove(entry)
                self.cancelled += 1
        self.node.check()
        self.loop.wake()

    def serve(self) -> None:
        served = False
        while self.pending:
            pod, since = self.pending[0]
            if self.node.borrow(pod) is None:
                break
            self.pending.popleft()
            self.running.add(pod)
            self.waits.append(self.node.now - since)
            served = True
        if served:
            self.node.check()
            self.loop.wake()


def simulate(name: str, trace: Trace, config: SimConfig,
             make_loop: Callable[[Simulation], UnderlayLoop | AwsLoop]) -> SimResult:
    sim = Simulation(trace, config)
    sim.loop = make_loop(sim)
    for event in trace.events():
        handler = sim.add if event.kind == "add" else sim.delete
        sim.engine.at(event.time, lambda h=handler, p=event.pod: h(p))
    sim.loop.start()
    sim.engine.run(trace.duration)
    idle = sim.engine.idle_ip_seconds
    return SimResult(name, idle, sim.engine.cooling_ip_seconds, idle / trace.duration,
                     sim.node.peak_held,
                     sim.node.peak_enis, len(sim.waits) + len(sim.pending) + sim.cancelled,
                     sim.misses, sim.cancelled, tuple(sim.waits), dict(sim.node.calls),
                     dict(sim.node.actions), sim.node.describes, sim.engine.eni_seconds)


def underlay_loop(decide: Decide, targets: Targets) -> Callable[[Simulation], UnderlayLoop]:
    return lambda sim: UnderlayLoop(sim, decide, targets)


def aws_loop(decide_pool: Decide, decide_free_eni: Decide,
             targets: Targets) -> Callable[[Simulation], AwsLoop]:
    return lambda sim: AwsLoop(sim, decide_pool, decide_free_eni, targets)
