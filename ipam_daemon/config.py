"""Agent configuration: one frozen dataclass, parsed once from a JSON file (the ConfigMap)
with ``UNDERLAY_<KEY>`` environment overrides, validated with messages that name the key
and the bad value. Nothing else in the agent reads the environment.

Defaults, and why they differ from AWS VPC CNI's:

- ``warm_ips=2``, ``warm_enis=0``: AWS defaults to WARM_ENI_TARGET=1, which holds a whole
  ENI's worth of idle IPs per node (9 on an m5.large, 49 on an m5.24xlarge) and drains small
  subnets. Two warm IPs cover a burst of two pods without a cloud call; the pool refills in
  the background in one batched call, and a borrow that finds the pool empty waits a bounded
  time (``borrow_wait_seconds``) for that refill instead of failing.
- ``cooldown_seconds=30``: as AWS, but cooling IPs never count as available and the
  cooldown survives a restart (it is persisted as a wall-clock time).
- ``shrink_interval=30``, ``subnet_full_backoff=120``, ``reconcile_interval=60``,
  ``leaked_eni_age=300``: AWS's intervals, which are reasonable.
- ``eni_min_age=7200``: an ENI is deleted only when the others could have held the peak of
  the last two hours (AWS: 60 s, and its second ENI comes and goes with the load). By then
  it holds no secondary address: only its own primary stays taken.
- ``pool_interval=5``: the loop also wakes at once when a borrow drops the pool below
  target, so the interval only bounds how late a missed wake-up is noticed.
- ``batch_size=4``: a shortfall is met with one AssignPrivateIpAddresses (or pre-filled
  CreateNetworkInterface) for at least this many addresses; idle addresses are freed only
  once ``2 * batch_size`` lie above ``warm_ips``, all but one batch in one call: churn of a
  few pods costs no cloud call (see ``ipam_daemon.policy``).

Per-node overrides (from Kubernetes) go through :func:`apply_overrides`, which validates
exactly as the file does. Every ``UNDERLAY_*`` environment variable must name a key: an
unknown one (``UNDERLAY_WARMIPS``) is an error naming it and the closest key. A running
agent applies a later configuration (an edited ConfigMap: ``ipam_daemon.config_follower``)
for the keys of :data:`LIVE_KEYS` only; :func:`diff_config` says which changed keys need a
restart.

Listeners: the status endpoint (``status_address:status_port``) binds loopback only (it
names pods); metrics have their own (``metrics_address:metrics_port``, 61678), any IP
address, the node's in the DaemonSet. ``imds_endpoint`` is where the instance metadata
service is asked who this node is when neither the Node's providerID nor ``instance_id``
says it ("" turns it off). ``config_map`` is the agent's ConfigMap that a running agent
follows in ``kube-system``.

Kubernetes (``kubernetes``): ``off`` (default: demo, tests), ``in-cluster`` (the pod's
service account), ``kubeconfig`` (``kubeconfig`` names the file) or ``host`` (``kube_host``,
a plain URL: the tests' fake API server). The node name comes from ``node_name``,
``UNDERLAY_NODE_NAME`` or ``NODE_NAME`` (the downward API's usual name). At boot the agent
waits at most ``kube_boot_wait`` seconds for the API server, then starts from this file.

Mode (``mode``): ``eni`` (default: pods get ENI secondary addresses) or ``vpc-route``
(pods get addresses of the node's pod CIDR, ``pod_cidr`` or the Node's ``spec.podCIDR``,
carried by a VPC route ``pod_cidr -> primary ENI`` in ``route_tables``, or in the tables
associated with the node's subnet when empty). ``cluster_cidr`` bounds the routes the sweep
may delete: routes outside it are never touched.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni.datapath.registry import datapath_names

logger = logging.getLogger(__name__)

ENV_PREFIX = "UNDERLAY_"
MODES = ("eni", "vpc-route")
KUBE_SOURCES = ("off", "in-cluster", "kubeconfig", "host")


# Keys a running agent applies without a restart (the pool reads them at every step);
# every other key shapes the node (identity, subnets, datapath, paths, listeners, the
# Kubernetes wiring) and needs a restart.
LIVE_KEYS = frozenset({
    "warm_ips", "min_ips", "max_ips", "warm_enis", "max_enis", "batch_size", "cooldown_seconds",
    "pool_interval", "shrink_interval", "reconcile_interval", "leaked_eni_age",
    "leaked_eni_interval", "borrow_wait_seconds", "subnet_full_backoff", "max_backoff",
    "log_level"})


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names key and value."""


@dataclass(frozen=True)
class ConfigChange:
    """What a new configuration changes: keys applied live, keys that need a restart."""

    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentConfig:
    cluster: str = "underlay"
    node_name: str = ""
    instance_id: str = ""
    region: str = "us-east-1"
    cloud_endpoint: str = ""
    warm_ips: int = 2
    min_ips: int = 0
    max_ips: int = 0  # 0: as many as the instance holds
    warm_enis: int = 0
    max_enis: int = 0  # 0: the instance type's limit
    cooldown_seconds: float = 30.0
    batch_size: int = 4
    subnets: tuple[str, ...] = ()  # empty: the primary ENI's subnet
    security_groups: tuple[str, ...] = ()  # empty: the primary ENI's groups
    datapath: str = "veth"
    mtu: int = 9001
    snat: bool = True
    snat_excluded_cidrs: tuple[str, ...] = ()
    vpc_cidrs: tuple[str, ...] = ()  # SNAT leaves these alone; empty: SNAT is not installed
    socket_path: str = "/run/underlay/agent.sock"
    state_path: str = "/var/lib/underlay/ipam.db"
    status_address: str = "127.0.0.1"
    status_port: int = 61680  # 0: any free port (tests)
    metrics_address: str = "127.0.0.1"  # the DaemonSet sets the node's address (status.podIP)
    metrics_port: int = 61678  # 0: any free port (tests)
    pool_interval: float = 5.0
    shrink_interval: float = 30.0
    reconcile_interval: float = 60.0
    eni_min_age: float = 7200.0  # and the demand horizon for deleting an ENI (policy.py)
    leaked_eni_age: float = 300.0
    leaked_eni_interval: float = 3600.0
    borrow_wait_seconds: float = 10.0
    subnet_full_backoff: float = 120.0
    cloud_timeout: float = 10.0  # per request; a call with its retries gives up after 3x
    max_backoff: float = 30.0  # longest pause of the pool loop after throttling or 5xx
    log_level: str = "INFO"
    # the instance metadata service (IMDSv2): who this node is when nothing else says so
    imds_endpoint: str = "http://169.254.169.254"  # "": never asked
    # Kubernetes
    kubernetes: str = "off"
    config_map: str = "underlay-config"  # followed in kube-system ("": not followed)
    kubeconfig: str = ""
    kube_host: str = ""
    kube_timeout: float = 10.0
    kube_boot_wait: float = 10.0
    kube_gc_grace: float = 60.0
    kube_gc_interval: float = 30.0
    kube_status_interval: float = 10.0
    kube_event_interval: float = 60.0
    # route-table mode
    mode: str = "eni"
    pod_cidr: str = ""
    cluster_cidr: str = ""
    route_tables: tuple[str, ...] = ()
    route_sweep_interval: float = 60.0
    route_table_limit: int = 50  # for messages: EC2's default routes per table

    @property
    def vpc_route(self) -> bool:
        return self.mode == "vpc-route"

    @property
    def ipam_only(self) -> bool:
        return self.datapath == "none"


_FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}
_INT_KEYS = {"warm_ips", "min_ips", "max_ips", "warm_enis", "max_enis", "batch_size", "mtu",
             "status_port", "metrics_port", "route_table_limit"}
_FLOAT_KEYS = {"cooldown_seconds", "pool_interval", "shrink_interval", "reconcile_interval",
               "eni_min_age", "leaked_eni_age", "leaked_eni_interval", "borrow_wait_seconds",
               "subnet_full_backoff", "cloud_timeout", "max_backoff", "kube_timeout",
               "kube_boot_wait", "kube_gc_grace", "kube_gc_interval", "kube_status_interval",
               "kube_event_interval", "route_sweep_interval"}
_LIST_KEYS = {"subnets", "security_groups", "snat_excluded_cidrs", "vpc_cidrs", "route_tables"}
_BOOL_KEYS = {"snat"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, value: Any) -> Any:
    """Turn a file or environment value into the field's type, or name what is wrong."""
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected a number of seconds, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number of seconds, got {value!r}") from None
    if key in _BOOL_KEYS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: expected on/off (true/false), got {value!r}")
    if key in _LIST_KEYS:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _flatten_snat(raw: dict[str, Any]) -> dict[str, Any]:
    """``"snat": {"enabled": .., "excluded_cidrs": [..]}`` is accepted as well as a bool."""
    snat = raw.get("snat")
    if isinstance(snat, dict):
        unknown = set(snat) - {"enabled", "excluded_cidrs"}
        if unknown:
            raise ConfigError(f"snat: unknown keys {sorted(unknown)}")
        raw = {k: v for k, v in raw.items() if k != "snat"}
        if "enabled" in snat:
            raw["snat"] = snat["enabled"]
        if "excluded_cidrs" in snat:
            raw["snat_excluded_cidrs"] = snat["excluded_cidrs"]
    return raw


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """Every ``UNDERLAY_*`` variable of ``env`` that names no configuration key."""
    return sorted(n for n in env if n.startswith(ENV_PREFIX)
                  and n[len(ENV_PREFIX):].lower() not in _FIELDS)


def describe_unknown_env(names: list[str]) -> str:
    """``environment variable UNDERLAY_WARMIPS names no configuration key (did you mean
    UNDERLAY_WARM_IPS?)``, for each name."""
    known = [ENV_PREFIX + k.upper() for k in _FIELDS]
    parts = []
    for name in names:
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
        parts.append(f"environment variable {name} names no configuration key"
                     + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(parts) + " (every UNDERLAY_<KEY> must be a key of ipam_daemon.config)"


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> AgentConfig:
    """Build a validated config from a mapping plus ``UNDERLAY_<KEY>`` overrides. Every
    ``UNDERLAY_*`` variable must name a key: unknown ones are refused, all named at once."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"configuration: expected a JSON object, got {type(raw).__name__}")
    values = _flatten_snat(dict(raw))
    unknown = sorted(set(values) - set(_FIELDS))
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
    coerced = {k: _coerce(k, v) for k, v in values.items()}
    config = AgentConfig(**coerced)
    validate_config(config)
    return config


def _require(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def validate_config(c: AgentConfig) -> None:
    for key in ("warm_ips", "min_ips", "max_ips", "warm_enis", "max_enis"):
        _require(getattr(c, key) >= 0, key, getattr(c, key), "must be >= 0")
    _require(c.batch_size >= 1, "batch_size", c.batch_size, "must be >= 1")
    if c.max_ips:
        _require(c.min_ips <= c.max_ips, "min_ips", c.min_ips,
                 f"must not exceed max_ips={c.max_ips}")
        _require(c.warm_ips <= c.max_ips, "warm_ips", c.warm_ips,
                 f"must not exceed max_ips={c.max_ips}")
    for key in _FLOAT_KEYS:
        _require(getattr(c, key) >= 0, key, getattr(c, key), "must be >= 0 seconds")
    for key in ("pool_interval", "reconcile_interval", "cloud_timeout"):
        _require(getattr(c, key) > 0, key, getattr(c, key), "must be > 0 seconds")
    _require(c.datapath in datapath_names(), "datapath", c.datapath,
             f"must be one of {datapath_names()}")
    _require(576 <= c.mtu <= 9001, "mtu", c.mtu, "must be between 576 and 9001")
    _require(0 <= c.status_port <= 65535, "status_port", c.status_port, "not a port number")
    _require(c.status_address in ("127.0.0.1", "::1", "localhost"), "status_address",
             c.status_address, "the status endpoint binds loopback only (it names pods;"
             " metrics have their own listener: metrics_address)")
    _require(0 <= c.metrics_port <= 65535, "metrics_port", c.metrics_port, "not a port number")
    try:
        ipaddress.ip_address(c.metrics_address)
    except ValueError:
        raise ConfigError(f"metrics_address={c.metrics_address!r}: expected an IP address (the"
                          " node's, 0.0.0.0 for every interface, or 127.0.0.1)") from None
    _require(not c.metrics_port or c.metrics_port != c.status_port, "metrics_port",
             c.metrics_port, f"must differ from status_port={c.status_port}")
    _require(bool(c.cluster) and len(c.cluster) <= 128, "cluster", c.cluster,
             "must be a non-empty name (it tags our ENIs)")
    _require(bool(c.socket_path), "socket_path", c.socket_path, "must be a path")
    _require(bool(c.state_path), "state_path", c.state_path, "must be a path")
    _require(c.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level",
             c.log_level, "must be DEBUG, INFO, WARNING or ERROR")
    for key in ("snat_excluded_cidrs", "vpc_cidrs"):
        for cidr in getattr(c, key):
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise ConfigError(f"{key}: {cidr!r} is not a CIDR") from None
    for sub in c.subnets:
        _require(sub.startswith("subnet-"), "subnets", sub, "expected a subnet id (subnet-...)")
    for sg in c.security_groups:
        _require(sg.startswith("sg-"), "security_groups", sg, "expected a group id (sg-...)")
    _validate_kube(c)
    _validate_route_mode(c)


def _validate_kube(c: AgentConfig) -> None:
    _require(c.kubernetes in KUBE_SOURCES, "kubernetes", c.kubernetes,
             f"must be one of {KUBE_SOURCES}")
    _require(not c.imds_endpoint or c.imds_endpoint.startswith("http://"), "imds_endpoint",
             c.imds_endpoint, "expected http://host[:port] or empty (off)")
    if c.kubernetes == "off":
        return
    _require(bool(c.node_name), "node_name", c.node_name,
             "required with kubernetes on (set it, UNDERLAY_NODE_NAME or NODE_NAME)")
    if c.kubernetes == "kubeconfig":
        _require(bool(c.kubeconfig), "kubeconfig", c.kubeconfig,
                 "required with kubernetes=kubeconfig (a file path)")
    if c.kubernetes == "host":
        _require(c.kube_host.startswith(("http://", "https://")), "kube_host", c.kube_host,
                 "required with kubernetes=host (http(s)://host:port)")
    _require(c.kube_timeout > 0, "kube_timeout", c.kube_timeout, "must be > 0 seconds")


def _cidr(key: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: not an IPv4 CIDR with its host bits clear"
                          " (e.g. 10.244.1.0/24)") from None


def _validate_route_mode(c: AgentConfig) -> None:
    _require(c.mode in MODES, "mode", c.mode, f"must be one of {MODES}")
    _require(c.route_table_limit >= 1, "route_table_limit", c.route_table_limit, "must be >= 1")
    for table in c.route_tables:
        _require(table.startswith("rtb-"), "route_tables", table,
                 "expected a route table id (rtb-...)")
    cluster = _cidr("cluster_cidr", c.cluster_cidr) if c.cluster_cidr else None
    if c.pod_cidr:
        pod = _cidr("pod_cidr", c.pod_cidr)
        _require(16 <= pod.prefixlen <= 29, "pod_cidr", c.pod_cidr,
                 "prefix must be /16../29 (addresses are carved locally)")
        if cluster is not None:
            _require(pod.subnet_of(cluster), "pod_cidr", c.pod_cidr,
                     f"must lie inside cluster_cidr={c.cluster_cidr}")
    if c.vpc_route:
        _require(c.datapath in ("veth", "none"), "datapath", c.datapath,
                 "mode vpc-route routes pods in the main table: veth (or none)")
        _require(bool(c.pod_cidr) or c.kubernetes != "off", "pod_cidr", c.pod_cidr,
                 "required in mode vpc-route without kubernetes (the Node's spec.podCIDR)")


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
    changed = [f.name for f in dataclasses.fields(AgentConfig)
               if getattr(old, f.name) != getattr(new, f.name)]
    return ConfigChange(tuple(k for k in changed if k in LIVE_KEYS),
                        tuple(k for k in changed if k not in LIVE_KEYS))


def apply_overrides(config: AgentConfig, overrides: Mapping[str, Any]) -> AgentConfig:
    """Per-node overrides (subnets, security groups, pool targets) merged over ``config``
    and validated; used by the Kubernetes module once node identity comes from the API."""
    values = {k: getattr(config, k) for k in _FIELDS}
    values.update(_flatten_snat(dict(overrides)))
    return parse_config(values, {})
