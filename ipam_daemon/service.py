"""What the agent does for a CNI request, independent of HTTP: attach (borrow + wire),
detach (unwire + release), check, gc, and the read-only views of the pool.

Errors leave as ``CniError`` with a code from ``cni.spec.Code`` and a message that names
the cause; the HTTP layer maps anything else to 107 in one place.

``release_allocation`` is THE release path: DEL, CNI GC and (later) the Kubernetes pod-GC
loop all go through it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from cni.datapath import DatapathError, PodSpec, WiredPod
from cni.datapath.base import Datapath, ResultShape
from cni.datapath.netns import find_link
from cni.spec import Code, CniError

from ipam_daemon.config import AgentConfig
from ipam_daemon.metrics import Metrics
from ipam_daemon.pool import Pool
from ipam_daemon.reconcile import eni_link
from ipam_daemon.store import (
    FOREIGN_NETWORK, PREFIX_SIZE, Allocation, AllocationKey, PodInfo, Store,
)

logger = logging.getLogger(__name__)

LINK_LOCAL_GW = "169.254.1.1"


@dataclass(frozen=True)
class AttachCall:
    cni_version: str
    key: AllocationKey
    netns: str
    mode: str
    pod: PodInfo
    mtu: int | None = None


@dataclass(frozen=True)
class DetachCall:
    key: AllocationKey
    netns: str = ""


@dataclass(frozen=True)
class CheckCall:
    key: AllocationKey
    netns: str
    prev_ips: tuple[str, ...] = ()


class Service:
    def __init__(self, config: AgentConfig, store: Store, pool: Pool, datapath: Datapath,
                 metrics: Metrics | None = None, *, monotonic=time.monotonic) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.datapath = datapath
        self.metrics = metrics
        self._monotonic = monotonic
        # (pod, CniError) -> None, called when an attach fails; the Kubernetes bridge turns
        # it into a Warning event on the pod. Must not block.
        self.on_attach_failure: Callable[[PodInfo, CniError], None] | None = None

    # ---- attach ---------------------------------------------------------------------------

    def attach(self, call: AttachCall) -> dict:
        try:
            return self._attach(call)
        except CniError as exc:
            if self.on_attach_failure is not None:
                try:
                    self.on_attach_failure(call.pod, exc)
                except Exception:
                    logger.exception("reporting the failed attach of %s", call.key.container_id)
            raise

    def _attach(self, call: AttachCall) -> dict:
        if not self.pool.reconciled.is_set():
            raise CniError(Code.TRY_AGAIN_LATER, "agent not ready: first reconcile with the"
                           " cloud pending; try again later")
        started = self._monotonic()
        stale = self.store.get_allocation(call.key)
        if stale is not None and stale.lost:  # its address is gone from the cloud: start over
            self.release_allocation(stale, reason="re-attach of a lost address")
        elif stale is not None and not self.config.ipam_only:
            result = self._attached_already(call, stale)
            if result is not None:
                return result
        try:
            allocation = self.borrow(call.key, call.pod)
        except CniError as exc:
            if self.metrics:
                self.metrics.attach_errors.labels(str(exc.code)).inc()
            raise
        if self.metrics:
            self.metrics.borrow_seconds.observe(self._monotonic() - started)
        with contextlib.ExitStack() as undo:
            undo.callback(self._rollback, allocation)
            wired = None
            if not self.config.ipam_only:
                spec = self._pod_spec(allocation, call.netns, call.mtu)
                try:
                    wired = self.datapath.setup(spec)
                except DatapathError as exc:
                    raise CniError(Code.DATAPATH_FAILURE, f"wiring pod {allocation.ip} failed:"
                                   f" {exc}") from None
            undo.pop_all()
        logger.info("attach %s/%s container %s %s -> %s (ENI %s)", call.pod.namespace,
                    call.pod.name, call.key.container_id, call.key.ifname, allocation.ip,
                    allocation.eni_id)
        return self._result(call, allocation, wired)

    def _attached_already(self, call: AttachCall, held: Allocation) -> dict | None:
        """A second ADD of an attachment the agent holds, decided before anything changes
        (wiring again would replace the pod's live interface, and a failed wiring's rollback
        would release the address the pod still uses):
        - its interface is there and CHECK finds it wired: the same result, nothing touched
          (ADD is idempotent: a retried ADD never cuts a running pod off);
        - an interface of that name is there but is not this wiring: the spec's "interface
          already exists" error, naming what differs;
        - no interface (an ADD cut short by an agent restart): None, wire it again."""
        spec = self._pod_spec(held, call.netns, call.mtu)
        try:
            pod_link = find_link(spec.netns, call.key.ifname)
        except DatapathError:  # no such namespace, or not one: the wiring names it
            return None
        if pod_link is None:
            return None
        problems = self.datapath.check(spec)
        if problems:
            raise CniError(Code.DATAPATH_FAILURE, f"interface {call.key.ifname} already"
                           f" exists in {spec.netns} but is not the wiring of container"
                           f" {call.key.container_id}'s {held.ip}: {'; '.join(problems)}"
                           " (DEL the attachment first)")
        host = find_link(None, spec.host_ifname)
        wired = WiredPod(host_ifname=spec.host_ifname, pod_mac=pod_link[1],
                         pod_ifindex=pod_link[0], host_mac=host[1] if host else "")
        logger.info("attach %s/%s container %s %s again: already wired with %s",
                    call.pod.namespace, call.pod.name, call.key.container_id,
                    call.key.ifname, held.ip)
        return self._result(call, held, wired)

    def _rollback(self, allocation: Allocation) -> None:
        logger.warning("attach of %s failed; returning %s", allocation.key.container_id,
                       allocation.ip)
        try:
            self.release_allocation(allocation, reason="attach rollback", teardown=True)
        except Exception:
            logger.exception("rollback of %s failed", allocation.key.container_id)

    def borrow(self, key: AllocationKey, pod: PodInfo) -> Allocation:
        """Borrow, waiting up to ``borrow_wait_seconds`` for the pool to refill, then fail
        with the precise reason."""
        allocation = self.store.borrow(key, pod)
        self.pool.wake()
        if allocation is not None:
            return allocation
        deadline = self._monotonic() + self.config.borrow_wait_seconds
        with self.pool.waiting_borrow():
            while True:
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    raise self._starved()
                self.pool.wait_for_change(min(remaining, 0.2))
                allocation = self.store.borrow(key, pod)
                if allocation is not None:
                    return allocation

    def _starved(self) -> CniError:
        totals = self.pool_summary()
        numbers = (f"{totals['available']} available, {totals['assigned']} assigned,"
                   f" {totals['cooling']} cooling, {totals['total']} held on"
                   f" {totals['enis']} ENIs")
        blocked = self.pool.blocked
        if blocked is not None:
            return CniError(blocked.code, blocked.message, numbers)
        if not self.pool.reconciled.is_set():
            return CniError(Code.TRY_AGAIN_LATER, "agent not ready: first reconcile pending",
                            numbers)
        return CniError(Code.NO_CAPACITY, f"no free address: the pool did not refill within"
                        f" {self.config.borrow_wait_seconds:g}s ({numbers})", numbers)

    def _pod_spec(self, allocation: Allocation, netns: str, mtu: int | None) -> PodSpec:
        eni = next((e for e in self.store.enis() if e.id == allocation.eni_id), None)
        if eni is None:
            raise CniError(Code.AGENT_INTERNAL, f"ENI {allocation.eni_id} of {allocation.ip}"
                           " is not in the store")
        link = eni_link(eni, self.config.mtu)
        return PodSpec(allocation.key.container_id, allocation.key.ifname, netns or
                       allocation.pod.netns, allocation.ip, link, mtu or self.config.mtu,
                       allocation.pod.namespace, allocation.pod.name,
                       policy_routing=not self.config.vpc_route)

    def _result(self, call: AttachCall, allocation: Allocation, wired) -> dict:
        """The CNI result, shaped by the datapath (prefix, gateway, host interface)."""
        eni = next((e for e in self.store.enis() if e.id == allocation.eni_id), None)
        shape = self.datapath.result_shape(eni_link(eni, self.config.mtu)) if eni else \
            ResultShape(32, LINK_LOCAL_GW, False)
        interfaces: list[dict] = []
        if wired is not None and shape.host_interface:  # with its MAC, as ptp reports it
            host_if = {"name": wired.host_ifname}
            if wired.host_mac:
                host_if["mac"] = wired.host_mac
            interfaces.append(host_if)
        pod_if: dict = {"name": call.key.ifname, "sandbox": call.netns}
        if wired is not None:
            pod_if["mac"] = wired.pod_mac
        interfaces.append(pod_if)
        ip: dict = {"address": f"{allocation.ip}/{shape.prefix_len}", "gateway": shape.gateway,
                    "interface": len(interfaces) - 1}
        if call.cni_version.startswith("0."):
            ip["version"] = "4"
        return {"cniVersion": call.cni_version, "interfaces": interfaces, "ips": [ip],
                "routes": [{"dst": "0.0.0.0/0", "gw": shape.gateway}], "dns": {}}

    # ---- detach / check / gc ---------------------------------------------------------------

    def detach(self, call: DetachCall) -> None:
        allocation = self.store.get_allocation(call.key)
        if allocation is None:
            logger.info("detach %s %s: no allocation (already released)",
                        call.key.container_id, call.key.ifname)
            return
        self.release_allocation(allocation, reason="detach", teardown=True, netns=call.netns)

    def release_allocation(self, allocation: Allocation, *, reason: str, teardown: bool = True,
                           netns: str = "") -> None:
        """Unwire (if asked and wired), then return the address to the pool, cooling."""
        if teardown and not self.config.ipam_only:
            try:
                self.datapath.teardown(self._pod_spec(allocation, netns, None))
            except DatapathError as exc:
                raise CniError(Code.DATAPATH_FAILURE, f"unwiring {allocation.ip} of container"
                               f" {allocation.key.container_id} failed: {exc}") from None
        released = self.store.release(allocation.key, self.config.cooldown_seconds)
        if released is not None:
            logger.info("release %s/%s container %s %s: %s (%s)", released.pod.namespace,
                        released.pod.name, released.key.container_id, released.key.ifname,
                        released.ip, reason)
        self.pool.wake()

    def release_key(self, key: AllocationKey, reason: str = "pod gone") -> bool:
        """Release by key through the one release path (the Kubernetes pod GC uses this);
        False when there was nothing to release."""
        allocation = self.store.get_allocation(key)
        if allocation is None:
            return False
        self.release_allocation(allocation, reason=reason)
        return True

    def release_orphans(self, min_age: float) -> int:
        """The kernel side of reconcile: release allocations whose pod network namespace is
        gone (its DEL came while the agent was down). Only when the agent wires pods, so the
        recorded netns is one it wired; allocations younger than ``min_age`` seconds are
        left alone (their ADD may still be under way)."""
        if self.config.ipam_only:
            return 0
        released = 0
        now = time.time()  # the store stamps created_at with wall-clock time
        for allocation in self.store.allocations():
            netns = allocation.pod.netns
            if not netns.startswith("/") or now - allocation.created_at < min_age:
                continue
            if os.path.exists(netns):
                continue
            try:
                self.release_allocation(allocation, reason=f"netns {netns} is gone")
                released += 1
            except CniError as exc:
                logger.warning("releasing orphan %s failed: %s", allocation.ip, exc.msg)
        return released

    def allocation_rows(self) -> list[tuple[AllocationKey, str, str, str, str]]:
        """(key, pod namespace, pod name, pod uid, netns) of every allocation."""
        return [(a.key, a.pod.namespace, a.pod.name, a.pod.uid, a.pod.netns)
                for a in self.store.allocations() if a.key.network != FOREIGN_NETWORK]

    def check(self, call: CheckCall) -> None:
        allocation = self.store.get_allocation(call.key)
        if allocation is None:
            raise CniError(Code.CHECK_FAILED, f"no allocation for container"
                           f" {call.key.container_id} {call.key.ifname} in network"
                           f" {call.key.network}")
        if allocation.lost:
            raise CniError(Code.CHECK_FAILED, f"address {allocation.ip} of container"
                           f" {call.key.container_id} is no longer held by the cloud")
        if call.prev_ips and allocation.ip not in call.prev_ips:
            raise CniError(Code.CHECK_FAILED, f"prevResult has {list(call.prev_ips)} but the"
                           f" agent holds {allocation.ip} for this container")
        if not self.config.ipam_only:
            problems = self.datapath.check(self._pod_spec(allocation, call.netns, None))
            if problems:
                raise CniError(Code.CHECK_FAILED, "; ".join(problems))

    def gc(self, network: str, valid: set[tuple[str, str]]) -> list[dict]:
        released = []
        for allocation in self.store.allocations(network):
            if (allocation.key.container_id, allocation.key.ifname) in valid:
                continue
            self.release_allocation(allocation, reason="gc: not a valid attachment")
            released.append({"containerID": allocation.key.container_id,
                             "ifname": allocation.key.ifname})
        return released

    # ---- views ----------------------------------------------------------------------------

    def pool_summary(self) -> dict:
        usage = [u for u in self.store.usage() if not u.eni.deleting]
        limits = self.pool.limits
        unit = limits.unit
        prefixes: dict[str, list[dict]] = {}
        for p in self.store.prefixes():
            prefixes.setdefault(p.eni_id, []).append(
                {"prefix": p.prefix, "free": p.free, "assigned": p.assigned,
                 "cooling": p.cooling, "releasing": p.releasing})
        per_eni = [{"id": u.eni.id, "device_index": u.eni.device_index,
                    "subnet": u.eni.subnet_id, "primary": u.eni.is_primary,
                    "capacity": u.total + max(limits.secondary_per_eni - u.slots, 0) * unit,
                    "free": u.free, "assigned": u.assigned, "cooling": u.cooling,
                    "releasing": u.releasing, "slots": limits.secondary_per_eni,
                    "slots_used": u.slots, "prefixes": prefixes.get(u.eni.id, [])}
                   for u in usage]
        ceiling = limits.max_enis
        targets = self.config.pool
        if targets.max_enis:
            ceiling = min(ceiling, targets.max_enis)
        capacity = ceiling * limits.per_eni
        if targets.max_ips:
            capacity = min(capacity, targets.max_ips)
        blocked = self.pool.blocked
        notice = getattr(self.pool, "notice", None)
        route: dict = {}
        if self.config.vpc_route:
            route = {"pod_cidr": self.config.pod_cidr,
                     "route_problem": getattr(self.pool, "route_problem", "") or None}
        held = [p for eni in per_eni for p in eni["prefixes"]]
        return route | {
            "mode": "prefixes" if unit > 1 else "secondary addresses",
            "prefix_delegation": self.config.prefix_delegation,
            "capacity": capacity,
            "total": sum(u.total for u in usage),
            "assigned": sum(u.assigned for u in usage),
            "available": sum(u.free for u in usage),
            "warm": sum(u.free for u in usage),
            "cooling": sum(u.cooling for u in usage),
            "enis": len(usage),
            "max_enis": ceiling,
            "prefixes": len(held),
            "prefixes_free": sum(p["free"] == PREFIX_SIZE for p in held),
            "targets": {"warm_ips": targets.warm_ips, "min_ips": targets.min_ips,
                        "max_ips": targets.max_ips, "warm_enis": targets.warm_enis},
            "blocked": None if blocked is None else {"code": int(blocked.code),
                                                     "msg": blocked.message},
            "notice": None if notice is None else {"code": int(notice.code),
                                                   "msg": notice.message},
            "ready": self.pool.reconciled.is_set(),
            "per_eni": per_eni,
        }

    def enis_view(self) -> list[dict]:
        return [{"id": e.id, "mac": e.mac, "subnet": e.subnet_id, "cidr": e.subnet_cidr,
                 "device_index": e.device_index, "primary_ip": e.primary_ip,
                 "primary": e.is_primary, "created_at": e.created_at, "deleting": e.deleting,
                 "addresses": [{"ip": a.ip, "state": a.state, "prefix": a.prefix or None,
                                "cooldown_until": a.cooldown_until or None}
                               for a in self.store.addresses() if a.eni_id == e.id]}
                for e in self.store.enis()]

    def pods_view(self) -> list[dict]:
        return [{"network": a.key.network, "container_id": a.key.container_id,
                 "ifname": a.key.ifname, "ip": a.ip, "eni": a.eni_id,
                 "namespace": a.pod.namespace, "name": a.pod.name, "uid": a.pod.uid,
                 "netns": a.pod.netns, "created_at": a.created_at, "lost": a.lost}
                for a in self.store.allocations()]

    def status(self) -> dict:
        summary = self.pool_summary()
        reply: dict = {"ready": summary["ready"], "available": summary["available"]}
        if not summary["ready"]:
            reply.update(code=int(Code.NOT_AVAILABLE), msg="agent not ready: reconciling")
        elif summary["available"] == 0 and summary["blocked"]:
            reply.update(code=int(Code.NOT_AVAILABLE_LIMITED), msg=summary["blocked"]["msg"])
        return reply
