"""vpc-route mode: the node's pod CIDR is carved locally and carried by VPC routes.

:class:`RoutePool` stands where the ENI pool stands in eni mode (the service borrows from
the same store, with the same idempotent keys and cooldown) and owns the cloud side:

- the store holds every host address of the pod CIDR (network and broadcast reserved; the
  pods' gateway is the link-local 169.254.1.1, so nothing else is needed) under one record
  for the primary ENI, the route's target;
- source/destination check off on the primary ENI (the node forwards for its pods);
- ``pod CIDR -> primary ENI`` in every table in scope (``route_tables``, else the tables
  associated with the node's subnet, else the VPC's main table), replaced when it points
  elsewhere or is blackholed, created once (the plan reads the table first: no duplicates
  across restarts);
- routes of departed Nodes (:meth:`forget_node`, from the Kubernetes Node watch) and, in
  the sweep every ``route_sweep_interval``, routes inside ``cluster_cidr`` whose target is
  gone are deleted; routes outside the cluster CIDR are never touched;
- a full table (RouteLimitExceeded) sets :attr:`route_problem` with the numbers, which the
  Kubernetes bridge turns into the node condition and a Node event.

Like the ENI pool, one thread (``route-pool``) makes every cloud change.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator

from cloud import errors as ce
from cloud.api import Cloud
from cloud.types import EniId, InstanceId, RouteTable, RouteTableId

from ipam_daemon.backoff import Backoff
from ipam_daemon.config import AgentConfig
from ipam_daemon.metrics import Metrics
from ipam_daemon.policy import Limits
from ipam_daemon.pool import reconcile_at_startup
from ipam_daemon.cloud_node import CloudNode
from ipam_daemon.routeplan import CREATE, DELETE, RouteChange, plan_routes, routes_used, sweep_targets
from ipam_daemon.store import EniRecord, Store

logger = logging.getLogger(__name__)


def pod_addresses(pod_cidr: str) -> list[str]:
    """Every host address of the CIDR: the network and broadcast addresses are reserved."""
    return [str(ip) for ip in ipaddress.IPv4Network(pod_cidr).hosts()]


class RoutePool:
    def __init__(self, config: AgentConfig, cloud: Cloud, store: Store, node: CloudNode, *,
                 metrics: Metrics | None = None, stop: threading.Event | None = None,
                 clock=time.time, monotonic=time.monotonic) -> None:
        if not config.pod_cidr:
            raise ValueError("pod_cidr: required in mode vpc-route (set pod_cidr, or give the"
                             " Node a spec.podCIDR with kubernetes on)")
        self.config = config
        self.cloud = cloud
        self.store = store
        self.node = node
        self.metrics = metrics
        self.addresses = pod_addresses(config.pod_cidr)
        self.limits = Limits(1, len(self.addresses) + 1)
        self.reconciled = threading.Event()
        self.route_problem = ""
        self._clock = clock
        self._monotonic = monotonic
        self._stop = stop if stop is not None else threading.Event()
        self._wake = threading.Event()
        self._changed = threading.Condition()
        self._departed: set[str] = set()
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._thread: threading.Thread | None = None

    # ---- what the service sees (the ENI pool's interface) --------------------------------

    @property
    def blocked(self) -> None:
        return None  # addresses are local: nothing in the cloud can block a borrow

    @property
    def own_eni(self) -> str:
        return self.node.instance.primary_eni_id

    def set_cordoned(self, cordoned: bool) -> None:
        return None  # the pod CIDR is fixed: there is no growth to pause

    def apply_config(self, config: AgentConfig) -> None:
        self.config = config

    def wake(self) -> None:
        return None  # borrows never need the cloud here

    @contextlib.contextmanager
    def waiting_borrow(self) -> Iterator[None]:
        yield  # the pod CIDR is carved locally: a waiting borrow asks the cloud for nothing

    def wait_for_change(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    def forget_node(self, pod_cidr: str, node_name: str = "") -> None:
        """A Node was deleted: remove the routes to its pod CIDR (on the pool thread)."""
        if not pod_cidr or pod_cidr == self.config.pod_cidr:
            return
        logger.info("node %s deleted: removing the routes to %s", node_name or "?", pod_cidr)
        with self._lock:
            self._departed.add(pod_cidr)
        self._wake.set()

    # ---- lifecycle -------------------------------------------------------------------------

    def reconcile_until_done(self) -> None:
        if reconcile_at_startup(self.reconcile, self._stop, self.config, "vpc-route"):
            self.reconciled.set()

    def reconcile(self) -> None:
        self._fill_store()
        self.sync_routes(sweep=True)
        if self.metrics:
            self.metrics.reconciled()
        with self._changed:
            self._changed.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="route-pool", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        backoff = Backoff(self.config.pool_interval,
                          max(self.config.max_backoff, self.config.pool_interval))
        while not self._stop.is_set():
            self._wake.clear()
            sweep = self._monotonic() >= self._next_sweep
            try:
                self.sync_routes(sweep=sweep)
                backoff.reset()
            except ce.CloudError as exc:
                delay = backoff.next_delay()
                logger.warning("route sync failed: %s; next try in %.1fs", exc, delay)
                self._stop.wait(delay)
                continue
            except Exception:
                logger.exception("route sync failed")
            self._wake.wait(max(0.05, self._next_sweep - self._monotonic()))

    # ---- the store -------------------------------------------------------------------------

    def _fill_store(self) -> None:
        """The pod CIDR's addresses under the primary ENI's record; free addresses of an
        earlier CIDR go (assigned ones stay until their pods are deleted)."""
        inst = self.node.instance
        eni = self.cloud.describe_eni(EniId(self.own_eni))
        record = EniRecord(self.own_eni, eni.mac, inst.subnet_id, self.config.pod_cidr, 0,
                           inst.primary_ip, True, self._clock())
        known = {e.id: e for e in self.store.enis()}
        if self.own_eni in known:
            record = dataclasses.replace(known[self.own_eni], subnet_cidr=self.config.pod_cidr,
                                         mac=eni.mac)
        wanted = set(self.addresses)
        present = {a.ip for a in self.store.addresses() if a.eni_id == self.own_eni}
        self.store.add_eni(record, sorted(wanted - present))
        stale = [a.ip for a in self.store.addresses()
                 if a.eni_id == self.own_eni and a.ip not in wanted and a.state == "free"]
        if stale:
            self.store.remove_addresses(stale)
        logger.info("pod CIDR %s: %d addresses (%d added, %d stale removed)",
                    self.config.pod_cidr, len(wanted), len(wanted - present), len(stale))

    # ---- routes ----------------------------------------------------------------------------

    def tables_in_scope(self) -> list[RouteTable]:
        tables = self.cloud.describe_route_tables(self.node.instance.vpc_id)
        if self.config.route_tables:
            wanted = set(self.config.route_tables)
            found = [t for t in tables if t.id in wanted]
            missing = wanted - {t.id for t in found}
            if missing:
                logger.error("route_tables: %s not found in %s", sorted(missing),
                             self.node.instance.vpc_id)
            return found
        subnets = set(self.node.subnet_ids) | {self.node.instance.subnet_id}
        associated = [t for t in tables if subnets & set(t.subnet_ids)]
        return associated or [t for t in tables if t.main]

    def _turn_off_source_dest_check(self) -> None:
        """The node forwards for its pods: EC2 drops that traffic while the check is on."""
        if self.cloud.describe_eni(EniId(self.own_eni)).source_dest_check:
            self.cloud.set_source_dest_check(EniId(self.own_eni), False)
            logger.info("source/destination check turned off on %s", self.own_eni)

    def _alive(self, targets: set[str]) -> dict[str, bool]:
        """A target is gone when the ENI or instance no longer exists, the ENI is detached,
        or its instance is terminated (or terminating)."""
        alive: dict[str, bool] = {}
        for target in sorted(targets):
            try:
                instance_id = target
                if target.startswith("eni-"):
                    instance_id = self.cloud.describe_eni(EniId(target)).instance_id or ""
                alive[target] = bool(instance_id) and \
                    not self.cloud.describe_instance(InstanceId(instance_id)).gone
            except ce.NotFound:
                alive[target] = False
        return alive

    def sync_routes(self, *, sweep: bool) -> tuple[RouteChange, ...]:
        tables = self.tables_in_scope()
        with self._lock:
            departed = set(self._departed)
        alive = {}
        if sweep:
            self._turn_off_source_dest_check()
            alive = self._alive(sweep_targets(tables, self.config.pod_cidr,
                                              self.config.cluster_cidr))
            self._next_sweep = self._monotonic() + self.config.route_sweep_interval
        changes = plan_routes(tables, own_cidr=self.config.pod_cidr, own_eni=self.own_eni,
                              cluster_cidr=self.config.cluster_cidr, alive=alive,
                              departed=departed)
        problem = ""
        for change in changes:
            try:
                self._apply(change)
            except ce.CloudError as exc:
                if exc.code != "RouteLimitExceeded":
                    raise
                table = next(t for t in tables if t.id == change.table_id)
                problem = (f"route table {table.id} is full: {routes_used(table)} of"
                           f" {self.config.route_table_limit} routes used; cannot add"
                           f" {change.cidr} -> {change.eni_id}")
                logger.error("%s (%s)", problem, exc)
        if problem != self.route_problem and not problem:
            logger.info("node route in place again (was: %s)", self.route_problem)
        self.route_problem = problem
        with self._lock:
            self._departed -= departed
        return changes

    def _apply(self, change: RouteChange) -> None:
        table = RouteTableId(change.table_id)
        logger.info("route %s %s in %s%s (%s)", change.action, change.cidr, change.table_id,
                    f" -> {change.eni_id}" if change.eni_id else "", change.why)
        try:
            if change.action == CREATE:
                try:
                    self.cloud.create_route(table, change.cidr, EniId(change.eni_id or ""))
                except ce.CloudError as exc:
                    if exc.code != "RouteAlreadyExists":  # another writer was first
                        raise
                    self.cloud.replace_route(table, change.cidr, EniId(change.eni_id or ""))
            elif change.action == DELETE:
                self.cloud.delete_route(table, change.cidr)
            else:
                self.cloud.replace_route(table, change.cidr, EniId(change.eni_id or ""))
        except ce.NotFound:
            if change.action != DELETE:
                raise
            logger.info("route %s in %s already gone", change.cidr, change.table_id)
        if self.metrics:
            self.metrics.pool_actions.labels(f"route_{change.action}", "ok").inc()
