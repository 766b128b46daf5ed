"""Assembles one node agent: store, cloud, pool loop, datapath, socket API, status endpoint.

Start order: status endpoint (healthz answers, readyz says 503), open the store, discover
the node, prepare the host datapath, serve the socket (attaches are refused with code 11,
"agent not ready", until the first reconcile is done; DEL works at once), reconcile with
the cloud (retried until it works), THEN start the pool loop. Stop is the reverse and leaves
the pods, the addresses and the database as they are: a restarted agent picks them up.

An ``observer`` (the Kubernetes bridge) is bound once the service and the pool exist and is
stopped first. In ``vpc-route`` mode the pool is a :class:`~ipam_daemon.vpcroute.RoutePool`.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cloud import errors as ce
from cloud.api import Cloud
from cni.datapath import SnatConfig
from cni.datapath.base import Datapath
from cni.datapath.registry import build_datapath, record_path_of

from ipam_daemon.api import UnixHTTPServer
from ipam_daemon.backoff import retry_until_stopped
from ipam_daemon.config import AgentConfig, ConfigChange, diff_config, flat_values, with_values
from ipam_daemon.metrics import Metrics
from ipam_daemon.pool import Pool
from ipam_daemon.cloud_node import CloudNode, discover_node
from ipam_daemon.service import Service
from ipam_daemon.status import StatusServer, start_listeners
from ipam_daemon.store import Store
from ipam_daemon.version import VERSION

logger = logging.getLogger(__name__)

# An allocation this young may belong to an ADD still wiring its pod: never an orphan yet.
ORPHAN_MIN_AGE = 30.0


def build_cloud(config: AgentConfig, metrics: Metrics) -> Cloud:
    from cloud.ec2 import Ec2Cloud

    return Ec2Cloud(config.region, endpoint_url=config.cloud_endpoint or None,
                    read_timeout=config.cloud_timeout, retry_attempts=3,
                    retry_deadline=3 * config.cloud_timeout, on_call=metrics.on_call)


class Agent:
    def __init__(self, config: AgentConfig, *, cloud: Cloud | None = None,
                 datapath: Datapath | None = None,
                 node_resolver: Callable[[Cloud, AgentConfig], CloudNode] = discover_node,
                 observer: Any = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.cloud = cloud if cloud is not None else build_cloud(config, self.metrics)
        self.datapath = datapath if datapath is not None else build_datapath(
            config.datapath, record_path=record_path_of(config.state_path))
        self._node_resolver = node_resolver
        self.observer = observer
        self._cordoned = False
        self.stopping = threading.Event()
        self.store: Store | None = None
        self.pool: Pool | None = None
        self.service: Service | None = None
        self.socket: UnixHTTPServer | None = None
        self.status: StatusServer | None = None
        self.metrics_listener: StatusServer | None = None

    def _resolve_node(self) -> CloudNode:
        return retry_until_stopped(lambda: self._node_resolver(self.cloud, self.config),
                                   retry_on=ce.RetryableCloudError, stop=self.stopping,
                                   initial=0.5, maximum=30.0, what="describing this node")

    def start(self) -> None:
        self.store = Store(self.config.state_path,
                           prefer_prefixes=self.config.prefix_delegation)
        self.status, self.metrics_listener = start_listeners(
            (self.config.status_address, self.config.status_port),
            (self.config.metrics_address, self.config.metrics_port), lambda: self.service,
            self.metrics)
        node = self._resolve_node()
        if self.config.vpc_route:
            from ipam_daemon.vpcroute import RoutePool

            self.pool = RoutePool(self.config, self.cloud, self.store, node,
                                  metrics=self.metrics, stop=self.stopping)
        else:
            self.pool = Pool(self.config, self.cloud, self.store, node, datapath=self.datapath,
                             metrics=self.metrics, stop=self.stopping)
        self.pool.set_cordoned(self._cordoned)
        self.service = Service(self.config, self.store, self.pool, self.datapath, self.metrics)
        self.metrics.watch_pool(self.service.pool_summary)
        if self.observer is not None:
            self.observer.bind(self)
        self.datapath.prepare_host(self._snat_config(node))
        self.socket = UnixHTTPServer(self.config.socket_path, self.service)
        self.socket.start()
        self.pool.reconcile_until_done()
        if self.stopping.is_set():
            return
        # nothing can be in flight across a restart: every allocation is old enough here
        self.service.release_orphans(0.0)
        self._orphans = threading.Thread(target=self._sweep_orphans, name="orphans",
                                         daemon=True)
        self._orphans.start()
        self.pool.start()
        logger.info("agent ready: underlay %s, node %s, instance %s, datapath %s", VERSION,
                    node.name, node.instance.id, self.config.datapath)

    def _sweep_orphans(self) -> None:
        """Pods whose netns vanished without a DEL reaching us, found at every reconcile
        interval (Kubernetes pod GC does the same by pod uid when it is configured)."""
        while not self.stopping.wait(self.config.reconcile_interval):
            try:
                self.service.release_orphans(ORPHAN_MIN_AGE)
            except Exception:  # noqa: BLE001 - the sweep must outlive one bad pass
                logger.exception("orphan sweep failed")

    def _snat_config(self, node: CloudNode) -> SnatConfig | None:
        if not self.config.snat:
            return SnatConfig(node.instance.primary_ip, ("0.0.0.0/0",), (), enabled=False)
        if not self.config.vpc_cidrs:
            if not self.config.ipam_only:
                logger.warning("snat is on but vpc_cidrs is empty: SNAT is NOT installed (set"
                               " vpc_cidrs to the VPC's CIDR blocks)")
            return None
        excluded = self.config.snat_excluded_cidrs
        if self.config.vpc_route and self.config.cluster_cidr:
            excluded += (self.config.cluster_cidr,)  # pod to pod keeps its source address
        return SnatConfig(node.instance.primary_ip, self.config.vpc_cidrs, excluded, True)

    # ---- hooks for the Kubernetes bridge ---------------------------------------------------

    def set_cordoned(self, cordoned: bool) -> None:
        self._cordoned = cordoned
        if self.pool is not None:
            self.pool.set_cordoned(cordoned)

    def apply_config(self, config: AgentConfig) -> ConfigChange:
        """A later configuration (the ConfigMap or the node's override changed): the keys of
        ``LIVE_KEYS`` (pool targets and intervals, log level) apply at once; any other
        changed key (instance, subnets, groups, mode, datapath, paths, listeners, ...) is
        kept as it is and named in the answer and a log line: it needs a restart."""
        change = diff_config(self.config, config)
        if change.restart:
            logger.warning("configuration change of %s needs an agent restart to apply (kubectl"
                           " -n kube-system rollout restart ds/underlay); running with the old"
                           " values", ", ".join(change.restart))
        if not change.applied:
            return change
        wanted = flat_values(config)
        config = with_values(self.config, {k: wanted[k] for k in change.applied})
        self.config = config
        if self.service is not None:
            self.service.config = config
        if self.pool is not None:
            self.pool.apply_config(config)
        if "log_level" in change.applied:
            logging.getLogger().setLevel(config.log_level.upper())
        logger.info("configuration applied without a restart: %s", ", ".join(
            f"{k}={wanted[k]}" for k in change.applied))
        return change

    def route_problem(self) -> str:
        """Why this node's VPC route cannot be kept ("" when fine or not in vpc-route mode)."""
        return getattr(self.pool, "route_problem", "") or ""

    def stop(self) -> None:
        self.stopping.set()
        if self.observer is not None:
            self.observer.stop()
        if self.socket is not None:
            self.socket.stop()
        close = getattr(self.cloud, "close", None)
        if callable(close):
            close()  # wakes the pool's cloud retries, so the loop ends promptly
        if self.pool is not None:
            self.pool.stop()
        for listener in (self.status, self.metrics_listener):
            if listener is not None:
                listener.stop()
        self.datapath.shutdown()
        if self.store is not None:
            self.store.close()
        logger.info("agent stopped")
