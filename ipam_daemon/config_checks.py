"""The agent configuration's rules beyond each key's type: ranges, ids, addresses, and the
keys that only make sense together. Every message names the key and the value it refuses.
``ipam_daemon.config`` parses and calls :func:`validate_config`; nothing here reads files
or the environment.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from cni.datapath.registry import datapath_names
from ipam_daemon.schema import field_types

MODES = ("eni", "vpc-route")
KUBE_SOURCES = ("off", "in-cluster", "kubeconfig", "host")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names key and value."""


def _require(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def _seconds(obj: Any) -> dict[str, float]:
    """Every float (seconds) field of a configuration dataclass, by name."""
    types = field_types(type(obj))
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if types[f.name] is float}


def validate_config(c: Any) -> None:
    """Raise ConfigError naming the first key whose value the agent cannot run with."""
    _validate_pool(c.pool)
    for key, value in {**_seconds(c), **_seconds(c.pool)}.items():
        _require(value >= 0, key, value, "must be >= 0 seconds")
    for key in ("pool_interval", "reconcile_interval", "cloud_timeout"):
        _require(getattr(c, key) > 0, key, getattr(c, key), "must be > 0 seconds")
    _require(c.datapath in datapath_names(), "datapath", c.datapath,
             f"must be one of {datapath_names()}")
    _require(576 <= c.mtu <= 9001, "mtu", c.mtu, "must be between 576 and 9001")
    _validate_listeners(c)
    _require(bool(c.cluster) and len(c.cluster) <= 128, "cluster", c.cluster,
             "must be a non-empty name (it tags our ENIs)")
    _require(bool(c.socket_path), "socket_path", c.socket_path, "must be a path")
    _require(bool(c.state_path), "state_path", c.state_path, "must be a path")
    _require(c.log_level.upper() in LOG_LEVELS, "log_level", c.log_level,
             "must be DEBUG, INFO, WARNING or ERROR")
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


def _validate_pool(p: Any) -> None:
    for key in ("warm_ips", "min_ips", "max_ips", "warm_enis", "max_enis", "eni_headroom",
                "surge_rise", "surge_ips"):
        _require(getattr(p, key) >= 0, key, getattr(p, key), "must be >= 0")
    _require(p.batch_size >= 1, "batch_size", p.batch_size, "must be >= 1")
    if p.max_ips:
        _require(p.min_ips <= p.max_ips, "min_ips", p.min_ips,
                 f"must not exceed max_ips={p.max_ips}")
        _require(p.warm_ips <= p.max_ips, "warm_ips", p.warm_ips,
                 f"must not exceed max_ips={p.max_ips}")


def _validate_listeners(c: Any) -> None:
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


def _validate_kube(c: Any) -> None:
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


def _validate_route_mode(c: Any) -> None:
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
    if c.mode == "vpc-route":
        _require(c.datapath in ("veth", "none"), "datapath", c.datapath,
                 "mode vpc-route routes pods in the main table: veth (or none)")
        _require(not c.prefix_delegation, "prefix_delegation", c.prefix_delegation,
                 "mode vpc-route carves pod addresses from the node's pod CIDR: no ENI"
                 " prefixes (turn one of them off)")
        _require(bool(c.pod_cidr) or c.kubernetes != "off", "pod_cidr", c.pod_cidr,
                 "required in mode vpc-route without kubernetes (the Node's spec.podCIDR)")
