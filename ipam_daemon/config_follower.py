"""The running agent follows its configuration on the API server: an edit of the agent's
ConfigMap (``config_map``, key ``agent.json``, in the override namespace) or of the
ConfigMap the node's ``underlay.io/config`` label names is applied without a restart.

    edit -> parse (the same loader and UNDERLAY_* variables as at boot) -> resolve the
    node's identity with it (merges the override, validates) -> agent.apply_config

- Invalid (bad JSON, a bad value, an override that no longer validates): refused. The
  agent keeps the configuration it runs with, logs an error and puts a Warning event
  ``ConfigRejected`` on the ConfigMap that was edited, naming the key and the value.
- Valid: the pool's keys (``config.LIVE_KEYS``) apply at once; a changed key that shapes
  the node (datapath, subnets, paths, listeners, ...) is not applied: the agent says so in
  a log line and a Warning event ``ConfigNeedsRestart`` on the ConfigMap.
- The API server failing while resolving: retried by :meth:`retry_pending` (the bridge's
  loop, once a second), so an edit is not lost.

The mounted file (``/etc/underlay/config/agent.json``) is what a restarted agent reads;
the kubelet refreshes it from the same ConfigMap within a minute or so."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ipam_daemon.config import (ENV_PREFIX, AgentConfig, ConfigChange, ConfigError, flat_values,
                                parse_config)
from ipam_daemon.kube import Reason
from ipam_daemon.kube.client import KubeError
from ipam_daemon.kube.identity import IdentityError

if TYPE_CHECKING:
    from ipam_daemon.kube import KubeIntegration

logger = logging.getLogger(__name__)

BASE_KEY = "agent.json"
RESTART_HINT = "kubectl -n kube-system rollout restart ds/underlay"


def base_config_of(config: AgentConfig) -> dict[str, Any]:
    """The configuration as the plain dict overrides are merged over: every key by its flat
    name (a node's override of ``warm_ips`` replaces the pool's), lists, not tuples."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat_values(config).items()}


def where_of(config_map: dict) -> str:
    meta = config_map.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def parse_base(config_map: dict, env: Mapping[str, str]) -> dict[str, Any]:
    """The agent's ConfigMap -> the base configuration dict, validated exactly as the
    file is at boot (with the same environment overrides); ConfigError names the problem."""
    text = (config_map.get("data") or {}).get(BASE_KEY)
    if text is None:
        raise ConfigError(f"key {BASE_KEY} is missing")
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ConfigError(f"not valid JSON ({exc})") from None
    return base_config_of(parse_config(raw, env))


def describe_restart(change: ConfigChange) -> str:
    return (f"{', '.join(change.restart)} changed but only apply after an agent restart"
            f" ({RESTART_HINT}); the agent runs with the old values"
            + (f"; applied now: {', '.join(change.applied)}" if change.applied else ""))


class ConfigFollower:
    """Bound to the bridge's KubeIntegration (:attr:`kube`) before it starts."""

    def __init__(self, config: AgentConfig, env: Mapping[str, str]) -> None:
        self.name = config.config_map
        self.env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) or k == "NODE_NAME"}
        self.kube: KubeIntegration | None = None
        self.origin: dict | None = None  # the ConfigMap whose edit is being applied
        self._lock = threading.Lock()
        self._pending: dict | None = None

    def on_event(self, kind: str, config_map: dict) -> None:
        """From the ConfigMap watch of the override namespace."""
        if self.kube is None:
            return
        name = (config_map.get("metadata") or {}).get("name", "")
        identity = self.kube.identity
        if self.name and name == self.name:
            self._base_changed(kind, config_map)
        elif identity is not None and identity.override == where_of(config_map):
            if kind == "DELETED":
                logger.warning("override ConfigMap %s was deleted; the agent keeps its running"
                               " configuration", where_of(config_map))
                return
            self._refresh(config_map, None)

    def retry_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._refresh(pending, None)

    def _base_changed(self, kind: str, config_map: dict) -> None:
        assert self.kube is not None
        where = where_of(config_map)
        if kind == "DELETED":
            logger.warning("ConfigMap %s was deleted; the agent keeps its running configuration",
                           where)
            return
        try:
            base = parse_base(config_map, self.env)
        except ConfigError as exc:
            self._reject(config_map, f"ConfigMap {where} key {BASE_KEY}: {exc}")
            return
        if base == self.kube.base_config:
            return
        logger.info("ConfigMap %s changed (resourceVersion %s); applying it", where,
                    (config_map.get("metadata") or {}).get("resourceVersion", "?"))
        self._refresh(config_map, base)

    def _refresh(self, config_map: dict, base: dict[str, Any] | None) -> None:
        """Resolve the identity with ``base`` (None: the current one) and adopt it; the
        old base stays when the result is invalid."""
        assert self.kube is not None
        with self._lock:
            old = self.kube.base_config
            if base is not None:
                self.kube.base_config = base
            try:
                fresh = self.kube.resolve_now()
            except IdentityError as exc:
                self.kube.base_config = old
                self._reject(config_map, str(exc))
                return
            except KubeError as exc:
                logger.warning("applying ConfigMap %s: %s; retrying", where_of(config_map), exc)
                self._pending = config_map
                return
            self.origin = config_map
            try:
                self.kube.adopt(fresh)
            finally:
                self.origin = None

    def _reject(self, config_map: dict, message: str) -> None:
        assert self.kube is not None
        logger.error("configuration refused: %s; the agent keeps its running configuration",
                     message)
        self.kube.warn_config_map(config_map, Reason.CONFIG_REJECTED,
                                  f"{message}; the running configuration is kept")

    def report(self, change: ConfigChange) -> None:
        """After the agent applied a configuration: say what needs a restart."""
        if not change.restart or self.kube is None:
            return
        message = describe_restart(change)
        if self.origin is not None:
            self.kube.warn_config_map(self.origin, Reason.CONFIG_NEEDS_RESTART, message)
        else:
            self.kube.warn_node(Reason.CONFIG_NEEDS_RESTART, message)
