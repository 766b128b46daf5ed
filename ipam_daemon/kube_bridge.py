"""Between the agent and :mod:`ipam_daemon.kube`: identity and per-node configuration at
boot, edits of the ConfigMaps followed at run time (:mod:`ipam_daemon.config_follower`),
pod GC through the agent's one release path, Warning events on attach failures and on
pool trouble, the node's IP condition and annotations, cordon, and (vpc-route mode) the
deletion of other Nodes.

Nothing here blocks an attach: events and status go through the kube module's queues, and
the figures are read by this module's own thread (``kube-bridge``), once a second.

    bridge = KubeBridge(config, env=os.environ)   # config.kubernetes != "off"
    config = bridge.start(stop)          # bounded wait; the merged, validated configuration
    agent = Agent(config, observer=bridge)   # the agent calls bridge.bind(agent) and stop()
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cni.spec import CniError

from ipam_daemon.config import AgentConfig, ConfigError, parse_config
from ipam_daemon.config_follower import ConfigFollower, base_config_of
from ipam_daemon.errors import reason_for
from ipam_daemon.kube import IPStatus, KubeIntegration, KubeSettings, NodeIdentity, Reason
from ipam_daemon.kube.client import KubeError
from ipam_daemon.kube.identity import IdentityError
from ipam_daemon.kube.watcher import Watcher

if TYPE_CHECKING:
    from ipam_daemon.agent import Agent

logger = logging.getLogger(__name__)

IDENTITY_RETRY = 5.0  # seconds between identity attempts while no instance id is known
PUBLISH_EVERY = 1.0  # seconds between reads of the pool's figures (the module rate-limits)


def kube_settings(config: AgentConfig) -> KubeSettings:
    source = {"in-cluster": {"in_cluster": True}, "kubeconfig": {"kubeconfig": config.kubeconfig},
              "host": {"host": config.kube_host}}[config.kubernetes]
    return KubeSettings(node_name=config.node_name, request_timeout=config.kube_timeout,
                        connect_timeout=min(3.0, config.kube_timeout),
                        boot_wait_seconds=config.kube_boot_wait,
                        gc_grace_seconds=config.kube_gc_grace, gc_interval=config.kube_gc_interval,
                        event_interval=config.kube_event_interval,
                        status_min_interval=config.kube_status_interval, **source)


def pool_message(summary: dict) -> str:
    """The numbers a reader needs: free addresses, ENIs used of max, assigned of capacity."""
    return (f"{summary['available']} free addresses, {summary['enis']} of {summary['max_enis']}"
            f" ENIs used, {summary['assigned']} of {summary['capacity']} pod IPs assigned")


def ip_status_of(summary: dict, route_problem: str = "") -> IPStatus:
    """The node condition: False when a new pod cannot get an address now (nothing free and
    the pool is blocked, or the node's route cannot be kept), True otherwise."""
    blocked = summary.get("blocked")
    capacity, assigned, warm = summary["capacity"], summary["assigned"], summary["available"]
    if route_problem:
        return IPStatus(capacity, assigned, warm, False, "RouteTableFull", route_problem)
    if not summary.get("ready", True):
        return IPStatus(capacity, assigned, warm, False, Reason.AGENT_NOT_READY.value,
                        "the underlay agent is reconciling")
    if warm == 0 and (blocked is not None or assigned >= capacity):
        reason = reason_for(blocked["code"]) if blocked else None
        return IPStatus(capacity, assigned, warm, False,
                        reason.value if reason else "PoolExhausted",
                        f"no free pod IP: {pool_message(summary)}"
                        + (f"; {blocked['msg']}" if blocked else ""))
    return IPStatus(capacity, assigned, warm, True)


class KubeBridge:
    def __init__(self, config: AgentConfig, *, env: Mapping[str, str] | None = None,
                 integration: KubeIntegration | None = None) -> None:
        self.config = config
        self.follower = ConfigFollower(config, env or {})
        self.agent: Agent | None = None
        self._identity_changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_blocked: Any = None
        self._nodes: Watcher | None = None
        self.kube = integration or KubeIntegration(
            kube_settings(config), base_config_of(config),
            list_allocations=self._allocation_rows, release=self._release,
            on_identity=self._identity_seen, on_cordon=self._cordon,
            on_config_map=self.follower.on_event)
        self.follower.kube = self.kube

    # ---- boot -----------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> AgentConfig:
        """Identity (bounded wait), then the merged configuration. Without an instance id
        (no providerID yet and none configured) wait for the catch-up, until ``stop``."""
        identity = self.kube.start()
        while not identity.instance_id:
            logger.warning("node %s: waiting for an instance id, asking again in %gs: %s",
                           identity.node_name, IDENTITY_RETRY,
                           identity.problem or "no spec.providerID and no instance_id")
            self._identity_changed.wait(IDENTITY_RETRY)
            self._identity_changed.clear()
            if stop.is_set():
                return self.config
            identity = self._identity_again(identity)
        self.config = self._config_of(identity) or self.config
        return self.config

    def _identity_again(self, last: NodeIdentity) -> NodeIdentity:
        """The catch-up's identity if it found one, else one more resolution (the Node may
        have got its providerID, the metadata service may answer now)."""
        if self.kube.identity is not None and self.kube.identity.instance_id:
            return self.kube.identity
        try:
            fresh = self.kube.resolve_now()
        except IdentityError as exc:
            return dataclasses.replace(last, problem=str(exc))
        except KubeError as exc:
            return dataclasses.replace(last, problem=f"the API server failed: {exc}")
        self.kube.adopt(fresh)
        return fresh

    def _config_of(self, identity: NodeIdentity) -> AgentConfig | None:
        try:
            return parse_config(dict(identity.config), {})
        except ConfigError as exc:
            logger.error("node %s: configuration from %s is invalid (%s); keeping the current one",
                         identity.node_name, identity.source, exc)
            return None

    # ---- the agent ------------------------------------------------------------------------

    def bind(self, agent: Agent) -> None:
        """Called by the agent once its service and pool exist (before it serves)."""
        self.agent = agent
        agent.service.on_attach_failure = self.attach_failed
        agent.set_cordoned(self.kube.cordoned)
        self._thread = threading.Thread(target=self._run, name="kube-bridge", daemon=True)
        self._thread.start()
        if agent.config.vpc_route:
            self._nodes = Watcher(self.kube.api, self.kube.api.core.list_node, self._node_event,
                                  name="all-nodes").start()

    def stop(self) -> None:
        self._stop.set()
        if self._nodes is not None:
            self._nodes.stop()
        if self._thread is not None:
            self._thread.join(5.0)
        self.kube.stop()

    def _node_event(self, kind: str, node: dict) -> None:
        """vpc-route mode: a deleted Node's route goes, whichever agent notices first."""
        if kind != "DELETED" or self.agent is None:
            return
        name = (node.get("metadata") or {}).get("name", "")
        cidr = (node.get("spec") or {}).get("podCIDR", "")
        forget = getattr(self.agent.pool, "forget_node", None)
        if cidr and name != self.config.node_name and forget is not None:
            forget(cidr, name)

    def attach_failed(self, pod: Any, exc: CniError) -> None:
        """A Warning event on the pod, with the numbers; never blocks."""
        reason = reason_for(exc.code)
        if reason is None or not pod.name or self.agent is None or self.agent.service is None:
            return
        summary = self.agent.service.pool_summary()
        self.kube.warn_pod(pod.namespace or "default", pod.name, pod.uid, reason,
                           f"{exc.msg} ({pool_message(summary)})")

    # ---- callbacks from the kube module ---------------------------------------------------

    def _allocation_rows(self) -> list[tuple]:
        service = self.agent.service if self.agent else None
        return service.allocation_rows() if service is not None else []

    def _release(self, key: Any) -> None:
        service = self.agent.service if self.agent else None
        if service is not None:
            service.release_key(key, "pod gone from the API server")

    def _cordon(self, cordoned: bool) -> None:
        if self.agent is not None:
            self.agent.set_cordoned(cordoned)

    def _identity_seen(self, identity: NodeIdentity) -> None:
        self._identity_changed.set()
        if self.agent is None:
            return
        fresh = self._config_of(identity)
        if fresh is not None and fresh != self.config:
            self.follower.report(self.agent.apply_config(fresh))
            self.config = self.agent.config

    # ---- figures -> condition, annotations, Node events -----------------------------------

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_EVERY):
            try:
                self.follower.retry_pending()
                self.publish_once()
            except Exception:  # the loop outlives a bug in one pass
                logger.exception("kube bridge: publishing the pool's figures failed")

    def publish_once(self) -> None:
        agent = self.agent
        if agent is None or agent.service is None:
            return
        summary = agent.service.pool_summary()
        route_problem = agent.route_problem()
        self.kube.publish_ip_status(ip_status_of(summary, route_problem))
        blocked, notice = summary.get("blocked"), summary.get("notice")
        key = (blocked and blocked["code"], route_problem, notice and notice["code"])
        if key != self._last_blocked:
            self._last_blocked = key
            if route_problem:
                self.kube.warn_node(Reason.ROUTE_TABLE_FULL, route_problem)
            elif blocked is not None and reason_for(blocked["code"]):
                self.kube.warn_node(reason_for(blocked["code"]),
                                    f"{blocked['msg']} ({pool_message(summary)})")
            elif notice is not None and reason_for(notice["code"]):  # e.g. falling back
                self.kube.warn_node(reason_for(notice["code"]),
                                    f"{notice['msg']} ({pool_message(summary)})")
