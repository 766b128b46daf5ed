"""The agent's Kubernetes integration, behind one facade for ``ipam_daemon.main``.

Wiring (the integrator's part)::

    from ipam_daemon.kube import KubeIntegration, KubeSettings, IPStatus, Reason

    kube = KubeIntegration(
        KubeSettings(node_name=node, in_cluster=True),     # or kubeconfig=... / host=...
        base_config=raw_config_dict,                       # the file's dict, before overrides
        list_allocations=store_rows,   # () -> [(key, pod_namespace, pod_name, pod_uid, netns)]
        release=release_allocation,    # (key) -> None: the same path CNI GC uses
        on_identity=apply_identity,    # (NodeIdentity) -> None: a later catch-up changed it
        on_cordon=pool.set_cordoned,   # (bool) -> None: stop growing while cordoned
        on_config_map=config_changed,  # (kind, ConfigMap) -> None: one in the override
                                       # namespace was added, changed or deleted
    )
    identity = kube.start()   # bounded wait (settings.boot_wait_seconds), never raises on an
                              # unreachable API server: identity.source == "configuration"
    config = identity.config  # merged + validated (ipam_daemon.config.parse_config)
    ...
    kube.warn_pod(ns, name, uid, Reason.SUBNET_EXHAUSTED, describe(...))   # never blocks
    kube.warn_node(Reason.ENI_LIMIT_REACHED, "3 of 3 ENIs in use, all full")
    kube.publish_ip_status(IPStatus(capacity, assigned, warm, available, reason))  # never blocks
    kube.cordoned             # bool
    kube.stop()

The agent runs without Kubernetes when it has no KubeSettings (demo, tests): just do not
build this object. Permissions used: :mod:`ipam_daemon.kube.rbac`.
"""
from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, Iterable, Mapping

from .client import KubeApi, KubeError, KubeSettings, build_api_client
from .events import EventRecorder, Reason, describe, reason_for_cloud_error
from .identity import (IdentityError, NodeIdentity, Validator, default_validator, resolve_identity,
                       resolve_identity_within)
from .nodestatus import CordonWatcher, IPStatus, NodeStatusPublisher
from .podgc import PodGarbageCollector
from .watcher import Watcher

logger = logging.getLogger(__name__)

__all__ = ["KubeIntegration", "KubeSettings", "NodeIdentity", "IPStatus", "Reason", "describe",
           "reason_for_cloud_error"]


class KubeIntegration:
    def __init__(self, settings: KubeSettings, base_config: Mapping[str, Any], *,
                 list_allocations: Callable[[], Iterable[tuple]], release: Callable[[Any], Any],
                 on_identity: Callable[[NodeIdentity], None] | None = None,
                 on_cordon: Callable[[bool], None] | None = None,
                 on_config_map: Callable[[str, dict], None] | None = None,
                 validate: Validator = default_validator,
                 netns_check: Callable[[str], bool] | None = None) -> None:
        self.settings = settings.validate()
        self.base_config = dict(base_config)
        self.validate = validate
        self.on_identity = on_identity
        self.on_cordon = on_cordon
        self.api = KubeApi(build_api_client(settings), settings)
        self.stopped = threading.Event()
        self.identity: NodeIdentity | None = None
        self._identity_lock = threading.Lock()
        self._settled_key: tuple[str, str] | None = None
        node = settings.node_name
        self.events = EventRecorder(self.api, node, interval=settings.event_interval,
                                    queue_size=settings.event_queue_size)
        self.status = NodeStatusPublisher(self.api, node, min_interval=settings.status_min_interval)
        gc_kwargs = {"netns_check": netns_check} if netns_check else {}
        self.gc = PodGarbageCollector(self.api, node, list_allocations, release,
                                      grace=settings.gc_grace_seconds, interval=settings.gc_interval, **gc_kwargs)
        self.cordon = CordonWatcher(self.api, node, self._cordon_changed, on_node=self._node_seen)
        self.config_maps: Watcher | None = None
        if on_config_map is not None:
            self.config_maps = Watcher(
                self.api, functools.partial(self.api.core.list_namespaced_config_map,
                                            settings.override_namespace),
                on_config_map, name="configmaps")

    def start(self) -> NodeIdentity:
        identity = resolve_identity_within(self.api, self.settings.node_name, self.base_config,
                                           self.settings.boot_wait_seconds, self.stopped, self.validate)
        with self._identity_lock:
            self.identity = identity
        logger.info("node %s: instance %s from %s%s", identity.node_name, identity.instance_id or "(unknown)",
                    identity.source, f", override {identity.override}" if identity.override else "")
        self.events.start()
        self.status.start()
        self.gc.start()
        self.cordon.start()
        if self.config_maps is not None:
            self.config_maps.start()
        return identity

    def stop(self) -> None:
        self.stopped.set()
        for part in (self.config_maps, self.cordon, self.gc, self.status, self.events):
            if part is not None:
                part.stop()
        self.api.api_client.close()

    # -- for the agent ------------------------------------------------------------
    @property
    def cordoned(self) -> bool:
        return self.cordon.is_cordoned

    def warn_pod(self, namespace: str, name: str, uid: str, reason: Reason, message: str) -> bool:
        return self.events.warn_pod(namespace, name, uid, reason, message)

    def warn_node(self, reason: Reason, message: str) -> bool:
        return self.events.warn_node(reason, message)

    def warn_config_map(self, config_map: dict, reason: Reason, message: str) -> bool:
        return self.events.warn_config_map(config_map, reason, message)

    def publish_ip_status(self, status: IPStatus) -> None:
        self.status.update(status)

    # -- internals ----------------------------------------------------------------
    def _cordon_changed(self, cordoned: bool) -> None:
        if self.on_cordon is not None:
            self.on_cordon(cordoned)

    def _node_seen(self, node: dict[str, Any]) -> None:
        """Catch up: resolve again when the Node's providerID or override label differ from
        the last settled attempt (the first event always counts: the boot may have fallen
        back), and tell the agent when the identity or its configuration changed. Our own
        status patches also arrive here; they do not change the key, so they cost nothing."""
        labels = (node.get("metadata") or {}).get("labels") or {}
        key = ((node.get("spec") or {}).get("providerID", ""), labels.get(self.settings.override_label, ""))
        if key == self._settled_key:
            return
        try:
            fresh = self.resolve_now()
        except KubeError as exc:  # transient: try again on the next event
            logger.warning("node %s: identity catch-up failed: %s", self.settings.node_name, exc)
            return
        except IdentityError as exc:  # the Node itself is wrong: keep what we have
            logger.error("%s; keeping the current configuration", exc)
            self._settled_key = key
            return
        self._settled_key = key
        self.adopt(fresh)

    def resolve_now(self) -> NodeIdentity:
        """One resolution with the current base configuration (the Node, its override
        ConfigMap, the instance metadata service when needed). Raises KubeError or
        IdentityError; does not adopt the result."""
        return resolve_identity(self.api, self.settings.node_name, self.base_config, self.validate)

    def adopt(self, fresh: NodeIdentity) -> bool:
        """Make ``fresh`` the identity; tell the agent when it or its configuration changed."""
        with self._identity_lock:
            current = self.identity
            changed = current is None or (fresh.instance_id, dict(fresh.config), fresh.override) != \
                (current.instance_id, dict(current.config), current.override)
            self.identity = fresh
        if changed:
            logger.info("node %s: identity now instance %s%s", fresh.node_name, fresh.instance_id,
                        f", override {fresh.override}" if fresh.override else "")
            if self.on_identity is not None:
                self.on_identity(fresh)
        return changed
