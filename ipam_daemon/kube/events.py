"""Warning events on pods (an attach failed), on the Node (pool trouble) and on a ConfigMap
(an edit the agent refused, or one that needs a restart to apply).

Reasons come from a fixed vocabulary, so users can filter on them
(``kubectl get events --field-selector reason=SubnetExhausted``); messages carry the
numbers (free addresses, ENIs used of max). Recording never blocks the caller: a per
(reason, object) rate limit, then a bounded queue drained by one worker thread; when the
queue is full the event is dropped and counted."""
from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from cloud import errors as cloud_errors
from ipam_daemon.errors import Reason, reason_for

from .client import KubeApi

logger = logging.getLogger(__name__)
COMPONENT = "underlay-agent"


ACTIONS = {Reason.CONFIG_REJECTED: "ApplyConfig", Reason.CONFIG_NEEDS_RESTART: "ApplyConfig"}


def reason_for_cloud_error(exc: cloud_errors.CloudError) -> Reason | None:
    """The event reason for a cloud error the pool ran into (None: not event-worthy),
    from the error table by the code the error carries."""
    return reason_for(exc.cni_code)


def describe(reason: Reason, *, free_addresses: int | None = None, subnet: str = "",
             enis_used: int | None = None, enis_max: int | None = None, ips_assigned: int | None = None,
             ips_capacity: int | None = None, detail: str = "") -> str:
    """A message with the numbers, e.g. 'subnet subnet-1 has 0 free addresses; ...'."""
    parts = []
    if reason is Reason.SUBNET_EXHAUSTED:
        parts.append(f"subnet {subnet or '(default)'} has {free_addresses if free_addresses is not None else '?'}"
                     " free addresses")
    elif reason is Reason.ENI_LIMIT_REACHED:
        parts.append(f"{enis_used if enis_used is not None else '?'} of "
                     f"{enis_max if enis_max is not None else '?'} ENIs in use, all full")
    elif reason is Reason.CLOUD_THROTTLED:
        parts.append("the cloud API is throttling this account (RequestLimitExceeded)")
    elif reason is Reason.CLOUD_PERMISSION_DENIED:
        parts.append("the node's cloud role lacks a permission")
    elif reason is Reason.ROUTE_TABLE_FULL:
        parts.append("the VPC route table has no room for this node's pod CIDR")
    else:
        parts.append("the underlay agent is not ready")
    if ips_assigned is not None and ips_capacity is not None:
        parts.append(f"{ips_assigned} of {ips_capacity} pod IPs assigned on this node")
    if detail:
        parts.append(detail)
    return "; ".join(parts)


@dataclass(frozen=True)
class ObjectRef:
    kind: str  # Pod, Node or ConfigMap
    namespace: str  # "" for a Node
    name: str
    uid: str = ""
    resource_version: str = ""  # a ConfigMap's: each edit is its own event


@dataclass(frozen=True)
class PendingEvent:
    ref: ObjectRef
    reason: Reason
    message: str


def build_event(pending: PendingEvent, host: str, now: datetime.datetime) -> dict:
    ref = pending.ref
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    micro = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:16]}", "namespace": ref.namespace or "default"},
        "involvedObject": {"apiVersion": "v1", "kind": ref.kind, "name": ref.name,
                           "namespace": ref.namespace, "uid": ref.uid,
                           **({"resourceVersion": ref.resource_version}
                              if ref.resource_version else {})},
        "reason": pending.reason.value, "message": pending.message[:1024], "type": "Warning",
        "source": {"component": COMPONENT, "host": host},
        "reportingComponent": COMPONENT, "reportingInstance": host,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": micro,
        "action": ACTIONS.get(pending.reason, "AssignIP"),
        "count": 1,
    }


class EventRecorder:
    def __init__(self, api: KubeApi, host: str, *, interval: float, queue_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.host = host
        self.interval = interval
        self.clock = clock
        self.queue: queue.Queue[PendingEvent] = queue.Queue(maxsize=queue_size)
        self.last_sent: dict[tuple[Reason, ObjectRef], float] = {}
        self.counts = {"queued": 0, "sent": 0, "rate_limited": 0, "dropped": 0, "failed": 0}
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "EventRecorder":
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- callers (never block) ----------------------------------------------------
    def warn_pod(self, namespace: str, name: str, uid: str, reason: Reason, message: str) -> bool:
        return self.record(ObjectRef("Pod", namespace, name, uid), reason, message)

    def warn_node(self, reason: Reason, message: str, uid: str = "") -> bool:
        return self.record(ObjectRef("Node", "", self.host, uid), reason, message)

    def warn_config_map(self, config_map: dict, reason: Reason, message: str) -> bool:
        meta = config_map.get("metadata") or {}
        return self.record(ObjectRef("ConfigMap", meta.get("namespace", ""), meta.get("name", ""),
                                     meta.get("uid", ""), meta.get("resourceVersion", "")),
                           reason, f"node {self.host}: {message}")

    def record(self, ref: ObjectRef, reason: Reason, message: str) -> bool:
        """Queue one event; False when rate-limited or dropped (queue full)."""
        reason = Reason(reason)
        key = (reason, ref)
        now = self.clock()
        with self._lock:
            last = self.last_sent.get(key)
            if last is not None and now - last < self.interval:
                self.counts["rate_limited"] += 1
                return False
            try:
                self.queue.put_nowait(PendingEvent(ref, reason, message))
            except queue.Full:
                self.counts["dropped"] += 1
                logger.debug("event queue full; dropped %s for %s %s", reason.value, ref.kind, ref.name)
                return False
            self.last_sent[key] = now
            self.counts["queued"] += 1
            if len(self.last_sent) > 4096:
                self._forget_old(now)
        return True

    def _forget_old(self, now: float) -> None:
        for key, when in list(self.last_sent.items()):
            if now - when >= self.interval:
                del self.last_sent[key]

    # -- worker -------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                pending = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                body = build_event(pending, self.host, datetime.datetime.now(datetime.timezone.utc))
                self.api.create_event(body["metadata"]["namespace"], body)
            except Exception as exc:  # KubeError, or a bug: the worker must survive both
                with self._lock:
                    self.counts["failed"] += 1
                logger.warning("event %s for %s %s/%s not recorded: %s", pending.reason.value,
                               pending.ref.kind, pending.ref.namespace, pending.ref.name, exc)
                continue
            with self._lock:
                self.counts["sent"] += 1
            logger.info("event %s on %s %s/%s: %s", pending.reason.value, pending.ref.kind,
                        pending.ref.namespace, pending.ref.name, pending.message)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counts, queue=self.queue.qsize())
