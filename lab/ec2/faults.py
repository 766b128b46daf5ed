"""EC2 request token buckets, fault injection and call counting: the run-time knobs of the
strict layer that decide whether a call is refused before any rule looks at it.

Each of these is thread-safe on its own; the strict layer consults them per request."""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

from lab.ec2.settings import DEFAULT_BUCKETS, BucketSpec

logger = logging.getLogger(__name__)

FAULT_KINDS = ("throttle", "5xx", "timeout", "lost_reply")


class TokenBuckets:
    """One continuously refilled bucket per category; a call takes one token or is refused."""

    def __init__(self, specs: Mapping[str, BucketSpec], enabled: bool = True) -> None:
        self._lock = threading.Lock()
        self._enabled = enabled
        self._specs: dict[str, BucketSpec] = dict(DEFAULT_BUCKETS)
        self._specs.update(specs)
        now = time.monotonic()
        self._tokens = {name: (spec.capacity, now) for name, spec in self._specs.items()}

    def take(self, category: str) -> bool:
        """Take one token; False when the bucket is empty (the call must be refused)."""
        with self._lock:
            if not self._enabled:
                return True
            spec = self._specs[category]
            tokens, stamp = self._tokens[category]
            now = time.monotonic()
            tokens = min(spec.capacity, tokens + (now - stamp) * spec.refill_per_second)
            if tokens >= 1:
                self._tokens[category] = (tokens - 1, now)
                return True
            self._tokens[category] = (tokens, now)
            return False

    def configure(self, overrides: Mapping[str, Any]) -> None:
        """``{"enabled": bool, "<category>": {"capacity": n, "refill_per_second": r}}``;
        a reconfigured bucket starts full. Validated as a whole before anything changes."""
        new_specs = dict(self._specs)
        enabled = self._enabled
        for key, value in overrides.items():
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ValueError(f"buckets 'enabled' must be true or false, got {value!r}")
                enabled = value
            elif key in DEFAULT_BUCKETS:
                if not isinstance(value, Mapping) or set(value) - {"capacity", "refill_per_second"}:
                    raise ValueError(
                        f"bucket {key!r} takes {{'capacity': n, 'refill_per_second': r}}, "
                        f"got {value!r}"
                    )
                old = new_specs[key]
                new_specs[key] = BucketSpec(
                    float(value.get("capacity", old.capacity)),
                    float(value.get("refill_per_second", old.refill_per_second)),
                )
            else:
                raise ValueError(
                    f"unknown bucket setting {key!r}; known: enabled, {', '.join(DEFAULT_BUCKETS)}"
                )
        with self._lock:
            now = time.monotonic()
            for name, spec in new_specs.items():
                if spec != self._specs[name] or name in overrides:
                    self._tokens[name] = (spec.capacity, now)
            self._specs = new_specs
            self._enabled = enabled

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self._enabled,
                **{n: {"capacity": s.capacity, "refill_per_second": s.refill_per_second}
                   for n, s in self._specs.items()},
            }


@dataclass(frozen=True)
class Fault:
    action: str  # an EC2 action name or "*"
    kind: str  # one of FAULT_KINDS
    rate: float  # probability per matching call, 0..1
    seconds: float | None = None  # "timeout" only: stall this long (default: the setting)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Fault":
        if not isinstance(raw, Mapping):
            raise ValueError(f"a fault is a mapping with action, kind, rate; got {raw!r}")
        unknown = set(raw) - {"action", "kind", "rate", "seconds"}
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        action, kind, rate = raw.get("action"), raw.get("kind"), raw.get("rate", 1.0)
        if not isinstance(action, str) or not action:
            raise ValueError(f"fault 'action' must be an EC2 action name or '*', got {action!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault 'kind' must be one of {FAULT_KINDS}, got {kind!r}")
        if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"fault 'rate' must be a number in [0, 1], got {rate!r}")
        seconds = raw.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or seconds < 0):
            raise ValueError(f"fault 'seconds' must be a number >= 0, got {seconds!r}")
        return cls(action=action, kind=kind, rate=float(rate),
                   seconds=None if seconds is None else float(seconds))


class FaultInjector:
    """Picks the fault (if any) for a call; seeded so a run can be repeated."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: tuple[Fault, ...] = ()
        self._rng = random.Random(seed)

    def set(self, faults: list[Mapping[str, Any]], seed: int | None = None) -> None:
        parsed = tuple(Fault.from_dict(f) for f in faults)
        with self._lock:
            self._faults = parsed
            if seed is not None:
                self._rng = random.Random(seed)

    def clear(self) -> None:
        with self._lock:
            self._faults = ()

    def pick(self, action: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.action in ("*", action) and self._rng.random() < fault.rate:
                    return fault
        return None

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"action": f.action, "kind": f.kind, "rate": f.rate, "seconds": f.seconds}
                    for f in self._faults]


class CallCounter:
    """Calls received per action (refused ones included) and refusals per (action, code)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._refused: Counter[tuple[str, str]] = Counter()

    def count_call(self, action: str) -> None:
        with self._lock:
            self._calls[action] += 1

    def count_refusal(self, action: str, code: str) -> None:
        with self._lock:
            self._refused[(action, code)] += 1

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def refusals(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._refused)

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._refused.clear()
