"""Agent configuration: one frozen dataclass, parsed once from a JSON file (the ConfigMap's
``agent.json``) with ``UNDERLAY_<KEY>`` environment overrides, validated with messages that
name the key and the bad value (``ipam_daemon.config_checks``). Nothing else in the agent
reads the environment.

Every key is declared once, with its default and what it does (``schema.knob``); values are
coerced from the field's type. The pool's knobs are ``ipam_daemon.policy.Targets``, nested
here as ``pool``: the file may give them in ``"pool": {...}`` or, as release 0.1.0's files
do, at the top level; ``UNDERLAY_WARM_IPS`` names them the same way. The reference of every
key is docs/configuration.md, rendered from these declarations (``reference_markdown``).

Per-node overrides (from Kubernetes) go through :func:`apply_overrides`, which validates
exactly as the file does. Every ``UNDERLAY_*`` environment variable must name a key: an
unknown one (``UNDERLAY_WARMIPS``) is an error naming it and the closest key. A running
agent applies a later configuration for the keys declared ``live`` only (``LIVE_KEYS``);
:func:`diff_config` says which changed keys need a restart.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipam_daemon.config_checks import KUBE_SOURCES, MODES, ConfigError, validate_config
from ipam_daemon.policy import Targets
from ipam_daemon.schema import SchemaError, coerce, field_types, knob, reference

__all__ = ["AgentConfig", "ConfigChange", "ConfigError", "KEYS", "KUBE_SOURCES", "LIVE_KEYS",
           "MODES", "apply_overrides", "diff_config", "load_config", "parse_config"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "UNDERLAY_"

@dataclass(frozen=True)
class ConfigChange:
    """What a new configuration changes: keys applied live, keys that need a restart."""

    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentConfig:
    # ---- who and where -------------------------------------------------------------------
    cluster: str = knob("underlay", "The cluster's name; it tags the ENIs the agent creates.")
    node_name: str = knob("", """The Kubernetes Node's name (also UNDERLAY_NODE_NAME or
        NODE_NAME, the downward API's usual name).""")
    instance_id: str = knob("", """This node's instance; empty: the Node's providerID, else
        the instance metadata service.""")
    region: str = knob("us-east-1", "The EC2 region.")
    cloud_endpoint: str = knob("", "An EC2 endpoint URL other than the region's (tests).")
    imds_endpoint: str = knob("http://169.254.169.254", """The instance metadata service
        (IMDSv2), asked who this node is when nothing else says it ("": never asked).""")
    # ---- the pool ------------------------------------------------------------------------
    pool: Targets = field(default_factory=Targets)
    prefix_delegation: bool = knob(False, """Each address slot of an ENI holds a /28
        prefix (16 pod addresses) instead of one address: an m5.large holds 110 pods on its
        primary ENI. Nitro instance types only; set the kubelet's maxPods (README). The pool's
        targets stay in addresses; prefixes go back whole. A node switched either way keeps
        its pods' addresses.""")
    prefix_fallback: bool = knob(False, """With prefix_delegation: when the subnet has no
        free aligned /28 (fragmented), or the instance type is not Nitro, take secondary
        addresses instead of blocking (a SubnetFragmented event says so either way).""")
    cooldown_seconds: float = knob(30.0, """A released address is not handed out again for
        this long (as AWS, but never counted as available, and kept across restarts).""",
        live=True)
    subnets: tuple[str, ...] = knob((), """Subnets for new ENIs (empty: the primary ENI's
        subnet).""")
    security_groups: tuple[str, ...] = knob((), """Security groups of new ENIs (empty: the
        primary ENI's).""")
    pool_interval: float = knob(5.0, """The pool loop looks at least this often (a borrow
        that drops the pool below target wakes it at once).""", live=True)
    shrink_interval: float = knob(30.0, "Idle addresses or ENIs are given back at most this"
                                  " often.", live=True)
    reconcile_interval: float = knob(60.0, "The store is reconciled with the cloud this"
                                     " often.", live=True)
    leaked_eni_age: float = knob(300.0, """An unattached ENI of ours this old is a leak and
        deleted.""", live=True)
    leaked_eni_interval: float = knob(3600.0, "Leaked ENIs are looked for this often.",
                                      live=True)
    borrow_wait_seconds: float = knob(10.0, """An ADD that finds the pool empty waits this
        long for the refill before it fails naming why.""", live=True)
    subnet_full_backoff: float = knob(120.0, """The pool stops asking for this long after the
        subnet is full (or the ENI limit is reached).""", live=True)
    max_backoff: float = knob(30.0, """The longest pause of the pool loop after throttling or
        5xx.""", live=True)
    cloud_timeout: float = knob(10.0, """Per EC2 request; a call with its retries gives up
        after three times this.""")
    # ---- the datapath --------------------------------------------------------------------
    datapath: str = knob("veth", """How pods are wired: veth, ipvlan, or none (IPAM only); the
        only source of the mode (cni.datapath.registry).""")
    mtu: int = knob(9001, "The pods' MTU.")
    snat: bool = knob(True, """SNAT pod traffic leaving the VPC to the node's primary
        address (also "snat": {"enabled": .., "excluded_cidrs": [..]}).""")
    snat_excluded_cidrs: tuple[str, ...] = knob((), "Destinations SNAT leaves alone.")
    vpc_cidrs: tuple[str, ...] = knob((), """The VPC's CIDR blocks: SNAT leaves them alone;
        empty: SNAT is not installed.""")
    # ---- files and listeners -------------------------------------------------------------
    socket_path: str = knob("/run/underlay/agent.sock", "The agent socket (mode 0600).")
    state_path: str = knob("/var/lib/underlay/ipam.db", "The state database (SQLite, WAL).")
    status_address: str = knob("127.0.0.1", """The status endpoint's address: loopback only
        (it names pods).""")
    status_port: int = knob(61680, "The status endpoint's port (0: any free port).")
    metrics_address: str = knob("127.0.0.1", """The metrics listener's address (the
        DaemonSet sets the node's, status.podIP).""")
    metrics_port: int = knob(61678, "The metrics listener's port (0: any free port).")
    log_level: str = knob("INFO", "DEBUG, INFO, WARNING or ERROR.", live=True)
    # ---- Kubernetes ----------------------------------------------------------------------
    kubernetes: str = knob("off", """off, in-cluster (the pod's service account), kubeconfig
        (kubeconfig names the file) or host (kube_host: a plain URL, the tests').""")
    config_map: str = knob("underlay-config", """The agent's ConfigMap in kube-system, whose
        edits a running agent follows ("": not followed).""")
    kubeconfig: str = knob("", "With kubernetes=kubeconfig: the file.")
    kube_host: str = knob("", "With kubernetes=host: http(s)://host:port.")
    kube_timeout: float = knob(10.0, "Per API server request.")
    kube_boot_wait: float = knob(10.0, """At boot, wait this long for the API server, then
        start from the file and catch up later.""")
    kube_gc_grace: float = knob(60.0, """A pod gone from the API server keeps its address
        this long before pod GC releases it.""")
    kube_gc_interval: float = knob(30.0, "Pod GC runs this often.")
    kube_status_interval: float = knob(10.0, "The Node's condition is patched at most this"
                                       " often.")
    kube_event_interval: float = knob(60.0, "The same event is recorded at most this often.",
                                     )
    # ---- route-table mode ----------------------------------------------------------------
    mode: str = knob("eni", """eni (pods get ENI secondary addresses) or vpc-route (pods get
        addresses of the node's pod CIDR, carried by a VPC route to the primary ENI).""")
    pod_cidr: str = knob("", "vpc-route: the node's pod CIDR (else the Node's spec.podCIDR).")
    cluster_cidr: str = knob("", """vpc-route: bounds the routes the sweep may delete
        (outside it nothing is touched).""")
    route_tables: tuple[str, ...] = knob((), """vpc-route: the route tables to keep the node's
        route in (empty: those of the node's subnet).""")
    route_sweep_interval: float = knob(60.0, "vpc-route: departed nodes' routes are swept"
                                       " this often.")
    route_table_limit: int = knob(50, "vpc-route: EC2's routes per table, for messages.")

    @property
    def vpc_route(self) -> bool:
        return self.mode == "vpc-route"

    @property
    def ipam_only(self) -> bool:
        return self.datapath == "none"


_TOP = {f.name: f for f in dataclasses.fields(AgentConfig) if f.name != "pool"}
_POOL = {f.name: f for f in dataclasses.fields(Targets)}
_TYPES = {**field_types(AgentConfig), **field_types(Targets)}
# every key by its flat name: the file's top level, the environment, diffs and messages
KEYS = frozenset(_TOP) | frozenset(_POOL)
LIVE_KEYS = frozenset(k for k, f in {**_TOP, **_POOL}.items() if f.metadata.get("live"))


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """Nested ``pool`` and ``snat`` objects as flat keys; a key given twice is an error."""
    raw = dict(raw)
    pool = raw.pop("pool", {})
    if not isinstance(pool, Mapping):
        raise ConfigError(f"pool: expected an object of pool keys, got {pool!r}")
    unknown = sorted(set(pool) - set(_POOL))
    if unknown:
        raise ConfigError(f"pool: unknown keys {', '.join(unknown)} (pool keys: "
                          f"{', '.join(_POOL)})")
    twice = sorted(set(pool) & set(raw))
    if twice:
        raise ConfigError(f"{', '.join(twice)}: given both in pool and at the top level")
    raw.update(pool)
    snat = raw.get("snat")
    if isinstance(snat, dict):
        unknown = set(snat) - {"enabled", "excluded_cidrs"}
        if unknown:
            raise ConfigError(f"snat: unknown keys {sorted(unknown)}")
        raw.pop("snat")
        if "enabled" in snat:
            raw["snat"] = snat["enabled"]
        if "excluded_cidrs" in snat:
            raw["snat_excluded_cidrs"] = snat["excluded_cidrs"]
    return raw


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """Every ``UNDERLAY_*`` variable of ``env`` that names no configuration key."""
    return sorted(n for n in env if n.startswith(ENV_PREFIX)
                  and n[len(ENV_PREFIX):].lower() not in KEYS)


def describe_unknown_env(names: list[str]) -> str:
    """``environment variable UNDERLAY_WARMIPS names no configuration key (did you mean
    UNDERLAY_WARM_IPS?)``, for each name."""
    known = [ENV_PREFIX + k.upper() for k in sorted(KEYS)]
    parts = []
    for name in names:
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
        parts.append(f"environment variable {name} names no configuration key"
                     + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(parts) + " (every UNDERLAY_<KEY> must be a key: docs/configuration.md)"


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> AgentConfig:
    """Build a validated config from a mapping plus ``UNDERLAY_<KEY>`` overrides. Every
    ``UNDERLAY_*`` variable must name a key: unknown ones are refused, all named at once."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"configuration: expected a JSON object, got {type(raw).__name__}")
    values = _flatten(dict(raw))
    unknown = sorted(set(values) - KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
    strays = unknown_env(env or {})
    if strays:
        raise ConfigError(describe_unknown_env(strays))
    for name, text in (env or {}).items():
        if name.startswith(ENV_PREFIX):
            values[name[len(ENV_PREFIX):].lower()] = text
    if not values.get("node_name") and (env or {}).get("NODE_NAME"):
        values["node_name"] = (env or {})["NODE_NAME"]
    try:
        coerced = {k: coerce(k, v, _TYPES[k]) for k, v in values.items()}
    except SchemaError as exc:
        raise ConfigError(str(exc)) from None
    pool = Targets(**{k: v for k, v in coerced.items() if k in _POOL})
    config = AgentConfig(pool=pool, **{k: v for k, v in coerced.items() if k in _TOP})
    validate_config(config)
    return config


def flat_values(config: AgentConfig) -> dict[str, Any]:
    """Every key by its flat name (the pool's too)."""
    return {**{k: getattr(config, k) for k in _TOP},
            **{k: getattr(config.pool, k) for k in _POOL}}


def with_values(config: AgentConfig, values: Mapping[str, Any]) -> AgentConfig:
    """``config`` with some keys (flat names) replaced; not validated again."""
    pool = dataclasses.replace(config.pool, **{k: v for k, v in values.items() if k in _POOL})
    return dataclasses.replace(config, pool=pool,
                               **{k: v for k, v in values.items() if k in _TOP})


def load_config(path: str | os.PathLike[str] | None,
                env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the JSON file at ``path`` (none: defaults) and apply the environment."""
    raw: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        try:
            raw = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid JSON ({exc})") from None
    return parse_config(raw, os.environ if env is None else env)


def diff_config(old: AgentConfig, new: AgentConfig) -> ConfigChange:
    before, after = flat_values(old), flat_values(new)
    changed = [k for k in before if before[k] != after[k]]
    return ConfigChange(tuple(k for k in changed if k in LIVE_KEYS),
                        tuple(k for k in changed if k not in LIVE_KEYS))


def apply_overrides(config: AgentConfig, overrides: Mapping[str, Any]) -> AgentConfig:
    """Per-node overrides (subnets, security groups, pool targets) merged over ``config``
    and validated; used by the Kubernetes module once node identity comes from the API."""
    values = flat_values(config)
    values.update(_flatten(dict(overrides)))
    return parse_config(values, {})


def reference_markdown() -> str:
    """docs/configuration.md: every key, its type, default, whether it applies live, and
    what it does."""
    return "\n".join([
        "# Configuration reference", "",
        "The agent's keys: `agent.json` in the `underlay-config` ConfigMap (or the file given",
        "with `--config`), each also settable as `UNDERLAY_<KEY>` in the environment and in a",
        "per-node override. The pool's keys may be given at the top level or in `\"pool\": {}`.",
        "Keys marked live apply to a running agent when the ConfigMap is edited; the others",
        "need a restart (the agent says which). Rendered from `ipam_daemon/config.py` and",
        "`ipam_daemon/policy.py` (`Targets`); a test keeps this file equal to them.", "",
        reference([("The pool", Targets, ""), ("The agent", AgentConfig, "")]).rstrip(), ""])
