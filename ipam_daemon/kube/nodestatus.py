"""IP capacity published on the Node, and cordon detection.

- Condition ``UnderlayIPAvailable`` (True/False with a reason and a message with numbers)
  through a strategic merge patch on ``nodes/status`` (conditions merge by ``type``, so
  the kubelet's own conditions stay).
- Annotations ``underlay.io/ip-capacity``, ``underlay.io/ip-assigned``,
  ``underlay.io/ip-warm`` through a JSON merge patch on the node.
Both are patched only when they changed, at most once per ``min_interval`` each, from a
worker thread: :meth:`NodeStatusPublisher.update` only stores the latest figures.
:class:`CordonWatcher` watches this Node's ``spec.unschedulable`` so the pool can stop
growing while the node is cordoned."""
from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ipam_daemon.backoff import Backoff

from .client import KubeApi
from .watcher import Watcher

logger = logging.getLogger(__name__)

CONDITION_TYPE = "UnderlayIPAvailable"
ANNOTATION_CAPACITY = "underlay.io/ip-capacity"
ANNOTATION_ASSIGNED = "underlay.io/ip-assigned"
ANNOTATION_WARM = "underlay.io/ip-warm"


@dataclass(frozen=True)
class IPStatus:
    """What the pool reports. ``available`` False means a new pod cannot get an IP now;
    ``reason`` then says why (an events.Reason value or e.g. ``PoolEmpty``)."""

    capacity: int
    assigned: int
    warm: int
    available: bool
    reason: str = ""
    message: str = ""


def condition_of(status: IPStatus) -> tuple[str, str, str]:
    if status.available:
        reason = status.reason or "IPsAvailable"
        message = status.message or f"{status.warm} warm IPs, {status.assigned} of {status.capacity} assigned"
        return "True", reason, message
    reason = status.reason or "NoIPAvailable"
    message = status.message or f"no free IP: {status.assigned} of {status.capacity} assigned, {status.warm} warm"
    return "False", reason, message


def annotations_of(status: IPStatus) -> dict[str, str]:
    return {ANNOTATION_CAPACITY: str(status.capacity), ANNOTATION_ASSIGNED: str(status.assigned),
            ANNOTATION_WARM: str(status.warm)}


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeStatusPublisher:
    def __init__(self, api: KubeApi, node_name: str, *, min_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.node_name = node_name
        self.min_interval = min_interval
        self.clock = clock
        self.patches = {"condition": 0, "annotations": 0, "failed": 0}
        self._desired: IPStatus | None = None
        self._published_condition: tuple[str, str, str] | None = None
        self._published_annotations: dict[str, str] | None = None
        self._transition_time = ""
        self._last_patch = {"condition": float("-inf"), "annotations": float("-inf")}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "NodeStatusPublisher":
        self._thread = threading.Thread(target=self._run, name="node-status", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def update(self, status: IPStatus) -> None:
        """Never blocks: remember the latest figures and wake the worker."""
        with self._lock:
            self._desired = status
        self._wake.set()

    def _run(self) -> None:
        backoff = Backoff(self.api.settings.backoff_min, self.api.settings.backoff_max)
        while not self.stopped.is_set():
            try:
                wait = self.publish_once()
                backoff.reset()
            except Exception as exc:  # KubeError, or a bug: the worker must survive both
                self.patches["failed"] += 1
                wait = backoff.next_delay()
                logger.warning("node %s: status patch failed (%s); retrying in %.1fs",
                               self.node_name, exc, wait)
            self._wake.wait(wait)
            self._wake.clear()

    def publish_once(self) -> float | None:
        """Patch what changed and is allowed by the rate limit; returns how long until the
        next patch would be allowed (None: nothing pending)."""
        with self._lock:
            desired = self._desired
        if desired is None:
            return None
        pending_waits = []
        condition = condition_of(desired)
        if condition != self._published_condition:
            left = self._last_patch["condition"] + self.min_interval - self.clock()
            if left > 0:
                pending_waits.append(left)
            else:
                self._patch_condition(condition)
        annotations = annotations_of(desired)
        if annotations != self._published_annotations:
            left = self._last_patch["annotations"] + self.min_interval - self.clock()
            if left > 0:
                pending_waits.append(left)
            else:
                self._patch_annotations(annotations)
        return min(pending_waits) if pending_waits else None

    def _patch_condition(self, condition: tuple[str, str, str]) -> None:
        status, reason, message = condition
        now = _stamp()
        if self._published_condition is None or self._published_condition[0] != status:
            self._transition_time = now
        body = {"status": {"conditions": [{
            "type": CONDITION_TYPE, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": self._transition_time or now}]}}
        self._last_patch["condition"] = self.clock()
        self.api.patch_node_status(self.node_name, body)
        self._published_condition = condition
        self.patches["condition"] += 1
        logger.info("node %s: %s=%s (%s: %s)", self.node_name, CONDITION_TYPE, status, reason, message)

    def _patch_annotations(self, annotations: dict[str, str]) -> None:
        self._last_patch["annotations"] = self.clock()
        self.api.merge_patch_node(self.node_name, {"metadata": {"annotations": annotations}})
        self._published_annotations = annotations
        self.patches["annotations"] += 1


class CordonWatcher:
    """Calls ``on_change(cordoned)`` when this Node's ``spec.unschedulable`` flips; also
    passes every Node event to ``on_node`` (identity catch-up uses it)."""

    def __init__(self, api: KubeApi, node_name: str, on_change: Callable[[bool], None],
                 on_node: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_change = on_change
        self.on_node = on_node
        self.cordoned = threading.Event()
        self._known: bool | None = None
        self.watcher = Watcher(api, api.core.list_node, self._on_event, name=f"node-{node_name}",
                               selectors={"field_selector": f"metadata.name={node_name}"})

    @property
    def is_cordoned(self) -> bool:
        return self.cordoned.is_set()

    def start(self) -> "CordonWatcher":
        self.watcher.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.watcher.stop(timeout)

    def _on_event(self, kind: str, node: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        if self.on_node is not None:
            self.on_node(node)
        cordoned = bool((node.get("spec") or {}).get("unschedulable"))
        if cordoned == self._known:
            return
        self._known = cordoned
        if cordoned:
            self.cordoned.set()
        else:
            self.cordoned.clear()
        logger.info("node %s %s", node.get("metadata", {}).get("name"), "cordoned: pool stops growing"
                    if cordoned else "schedulable: pool may grow")
        self.on_change(cordoned)
