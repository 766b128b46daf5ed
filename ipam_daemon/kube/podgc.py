"""Pod garbage collection: release allocations whose pod is gone.

An allocation is released only when all of these hold: the pod watch has listed (so its
view is complete, including pods deleted while the agent was down); no pod with the
allocation's uid exists on this node (without a uid: no pod of that namespace/name); the
pod has been missing for at least the grace period (a pod being created can hold an IP
before the watch shows it); and its network namespace path is gone. Releasing goes through
the agent's single release path, the one CNI GC uses.

:func:`decide_releases` is the pure decision; :class:`PodGarbageCollector` is the loop."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from .client import KubeApi
from .watcher import Watcher

logger = logging.getLogger(__name__)


class Allocation(NamedTuple):
    key: Any
    pod_namespace: str
    pod_name: str
    pod_uid: str
    netns: str


@dataclass(frozen=True)
class LivePods:
    uids: frozenset[str]
    names: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class GcDecision:
    release: tuple[Any, ...]
    missing_since: Mapping[Any, float]  # allocation key -> when its pod was first seen missing
    waiting: tuple[Any, ...]  # pod gone but grace not over or netns still present


def live_pods(pods: Iterable[Mapping[str, Any]]) -> LivePods:
    uids, names = set(), set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("uid"):
            uids.add(meta["uid"])
        names.add((meta.get("namespace", ""), meta.get("name", "")))
    return LivePods(frozenset(uids), frozenset(names))


def decide_releases(allocations: Iterable[Allocation], live: LivePods, missing_since: Mapping[Any, float],
                    now: float, grace: float, netns_present: Mapping[Any, bool]) -> GcDecision:
    release, waiting, still_missing = [], [], {}
    for alloc in allocations:
        alive = alloc.pod_uid in live.uids if alloc.pod_uid else \
            (alloc.pod_namespace, alloc.pod_name) in live.names
        if alive:
            continue
        first = missing_since.get(alloc.key, now)
        if now - first >= grace and not netns_present.get(alloc.key, False):
            release.append(alloc.key)
        else:
            still_missing[alloc.key] = first
            waiting.append(alloc.key)
    return GcDecision(tuple(release), still_missing, tuple(waiting))


def netns_exists(path: str) -> bool:
    return bool(path) and os.path.exists(path)


class PodGarbageCollector:
    def __init__(self, api: KubeApi, node_name: str, list_allocations: Callable[[], Iterable[tuple]],
                 release: Callable[[Any], Any], *, grace: float, interval: float,
                 netns_check: Callable[[str], bool] = netns_exists,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.list_allocations = list_allocations
        self.release = release
        self.grace = grace
        self.interval = interval
        self.netns_check = netns_check
        self.clock = clock
        self.missing_since: dict[Any, float] = {}
        self.released: list[Any] = []
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.watcher = Watcher(api, api.core.list_pod_for_all_namespaces, self._on_pod_event,
                               name=f"pods-on-{node_name}",
                               selectors={"field_selector": f"spec.nodeName={node_name}"})

    def start(self) -> "PodGarbageCollector":
        self.watcher.start()
        self._thread = threading.Thread(target=self._run, name="pod-gc", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        self._wake.set()
        self.watcher.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _on_pod_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            self._wake.set()

    def _run(self) -> None:
        while not self.stopped.is_set():
            if self.watcher.synced.is_set():
                try:
                    self.sweep()
                except Exception:  # the loop must survive a store or release failure
                    logger.exception("pod GC sweep failed")
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def sweep(self) -> tuple[Any, ...]:
        """One pass; returns the keys released. Does nothing before the first list."""
        if not self.watcher.synced.is_set():
            return ()
        live = live_pods(self.watcher.snapshot())
        allocations = [Allocation(*a) for a in self.list_allocations()]
        netns = {a.key: self.netns_check(a.netns) for a in allocations}
        decision = decide_releases(allocations, live, self.missing_since, self.clock(), self.grace, netns)
        self.missing_since = dict(decision.missing_since)
        done = []
        for key in decision.release:
            alloc = next(a for a in allocations if a.key == key)
            try:
                self.release(key)
            except Exception:
                logger.exception("pod GC: releasing %s (pod %s/%s) failed; retrying next sweep",
                                 key, alloc.pod_namespace, alloc.pod_name)
                continue
            logger.info("pod GC: released %s: pod %s/%s uid %s is gone and so is its netns",
                        key, alloc.pod_namespace, alloc.pod_name, alloc.pod_uid)
            done.append(key)
        self.released.extend(done)
        return tuple(done)

    def _next_wait(self) -> float:
        """Come back when the earliest grace period ends, not a full interval later."""
        if not self.watcher.synced.is_set():
            return 0.1
        now = self.clock()
        dues = [first + self.grace - now for first in self.missing_since.values() if first + self.grace > now]
        return min([self.interval, *dues]) + 0.01
