"""A seeded synthetic churn trace for one node: steady load, bursts and drains over several
hours of simulated time. Pure data: the same seed gives the same trace, byte for byte.

Shape (all draws from one ``random.Random(seed)``):

- steady load in segments of 20-60 min, each with its own level of live pods; arrivals are
  Poisson at ``level / mean lifetime`` per second;
- lifetimes from a mixture: mostly short-lived pods (exponential, mean 5 min, at least
  30 s) and some long-lived ones (log-normal, median 1 h);
- bursts: 8-16 pods (a rollout, a batch of jobs) arriving within 15 s, living 2-15 min;
- drains: every live pod leaves within 30 s, then nothing arrives for 5-15 min.

Arrivals that would take the node past ``max_pods`` live pods are dropped, as the scheduler
would not place them. Each pod departs at ``min(arrive + lifetime, next drain)``.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SHORT_MEAN = 300.0
SHORT_MIN = 30.0
LONG_MEDIAN = 3600.0
LONG_SHARE = 0.3


@dataclass(frozen=True)
class TracePod:
    name: str
    arrive: float
    depart: float


@dataclass(frozen=True)
class TraceEvent:
    time: float
    kind: str  # "add" or "del"
    pod: str


@dataclass(frozen=True)
class Trace:
    seed: int
    duration: float
    pods: tuple[TracePod, ...]
    drains: tuple[float, ...]
    bursts: tuple[float, ...]

    def events(self) -> tuple[TraceEvent, ...]:
        """ADDs and DELs in time order (at equal times a DEL comes first)."""
        events = [TraceEvent(p.arrive, "add", p.name) for p in self.pods]
        events += [TraceEvent(p.depart, "del", p.name) for p in self.pods
                   if p.depart < self.duration]
        return tuple(sorted(events, key=lambda e: (e.time, e.kind != "del", e.pod)))

    def max_live(self) -> int:
        live = peak = 0
        for event in self.events():
            live += 1 if event.kind == "add" else -1
            peak = max(peak, live)
        return peak


def draw_lifetime(rng: random.Random) -> float:
    if rng.random() < LONG_SHARE:
        return rng.lognormvariate(math.log(LONG_MEDIAN), 0.6)
    return max(rng.expovariate(1.0 / SHORT_MEAN), SHORT_MIN)


def make_trace(seed: int, hours: float = 6.0, max_pods: int = 24,
               level_range: tuple[int, int] = (3, 14)) -> Trace:
    """The churn trace for ``seed``: ``hours`` of simulated time on one node."""
    if hours <= 0:
        raise ValueError(f"hours must be > 0, got {hours!r}")
    if max_pods < 1:
        raise ValueError(f"max_pods must be >= 1, got {max_pods!r}")
    if not 0 <= level_range[0] <= level_range[1]:
        raise ValueError(f"level_range must be (low, high) with 0 <= low <= high,"
                         f" got {level_range!r}")
    rng = random.Random(seed)
    duration = hours * 3600.0
    mean_life = LONG_SHARE * LONG_MEDIAN * math.exp(0.18) + (1 - LONG_SHARE) * SHORT_MEAN
    drains = _schedule(rng, duration, mean_gap=2 * 3600.0, first=1800.0)
    bursts = _schedule(rng, duration, mean_gap=1800.0, first=300.0)
    arrivals: list[tuple[float, float]] = []  # (arrive, lifetime)
    t = 0.0
    while t < duration:
        seg_end = min(t + rng.uniform(1200.0, 3600.0), duration)
        rate = rng.randint(*level_range) / mean_life
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= seg_end:
                break
            arrivals.append((t, draw_lifetime(rng)))
        t = seg_end
    for start in bursts:
        for _ in range(rng.randint(8, 16)):
            arrivals.append((start + rng.uniform(0.0, 15.0), rng.uniform(120.0, 900.0)))
    quiet = [(d, d + 30.0 + rng.uniform(300.0, 900.0)) for d in drains]
    return Trace(seed, duration, _admit(rng, sorted(arrivals), drains, quiet, max_pods,
                                        duration), drains, bursts)


def _schedule(rng: random.Random, duration: float, mean_gap: float,
              first: float) -> tuple[float, ...]:
    times, t = [], first + rng.uniform(0.0, mean_gap)
    while t < duration:
        times.append(round(t, 3))
        t += mean_gap * rng.uniform(0.5, 1.5)
    return tuple(times)


def _admit(rng: random.Random, arrivals: list[tuple[float, float]], drains: tuple[float, ...],
           quiet: list[tuple[float, float]], max_pods: int,
           duration: float) -> tuple[TracePod, ...]:
    pods: list[TracePod] = []
    live: list[float] = []  # departure times of admitted pods
    for arrive, lifetime in arrivals:
        if arrive >= duration or any(lo <= arrive < hi for lo, hi in quiet):
            continue
        live = [d for d in live if d > arrive]
        if len(live) >= max_pods:
            continue
        depart = arrive + lifetime
        drain = next((d for d in drains if d > arrive), None)
        if drain is not None and depart > drain:
            depart = drain + rng.uniform(0.0, 30.0)
        arrive, depart = round(arrive, 3), round(depart, 3)
        pods.append(TracePod(f"pod-{len(pods):05d}", arrive, max(depart, arrive + 1.0)))
        live.append(pods[-1].depart)
    return tuple(pods)
