"""The agent's Kubernetes and vpc-route configuration keys (validated with messages that
name the key and the value) and the bridge's pure parts: the node condition derived from
the pool's figures, and the numbers in the messages."""
from __future__ import annotations

import pytest

from cni.spec import Code
from ipam_daemon.config import ConfigError, parse_config
from ipam_daemon.kube_bridge import base_config_of, ip_status_of, kube_settings, pool_message


@pytest.mark.parametrize("raw,message", [
    ({"kubernetes": "yes"}, "kubernetes='yes': must be one of"),
    ({"kubernetes": "in-cluster"}, "node_name='': required with kubernetes on"),
    ({"kubernetes": "kubeconfig", "node_name": "n"}, "kubeconfig='': required"),
    ({"kubernetes": "host", "node_name": "n", "kube_host": "127.0.0.1:6443"}, "kube_host="),
    ({"kubernetes": "host", "node_name": "n", "kube_host": "http://x", "kube_timeout": 0},
     "kube_timeout=0.0: must be > 0"),
    ({"mode": "routes"}, "mode='routes': must be one of"),
    ({"mode": "vpc-route"}, "pod_cidr='': required in mode vpc-route without kubernetes"),
    ({"mode": "vpc-route", "pod_cidr": "10.244.1.5/24"}, "pod_cidr='10.244.1.5/24': not an IPv4"),
    ({"mode": "vpc-route", "pod_cidr": "10.240.0.0/12"}, "prefix must be /16../29"),
    ({"mode": "vpc-route", "pod_cidr": "10.245.1.0/24", "cluster_cidr": "10.244.0.0/16"},
     "must lie inside cluster_cidr=10.244.0.0/16"),
    ({"mode": "vpc-route", "pod_cidr": "10.244.1.0/24", "datapath": "ipvlan"},
     "datapath='ipvlan': mode vpc-route"),
    ({"route_tables": ["main"]}, "route_tables='main': expected a route table id"),
    ({"route_table_limit": 0}, "route_table_limit=0: must be >= 1"),
])
def test_bad_values_are_named(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_config(raw, {})


def test_node_name_from_the_downward_api_and_kube_settings():
    config = parse_config({"kubernetes": "host", "kube_host": "http://127.0.0.1:1",
                           "kube_boot_wait": 3, "mode": "vpc-route"}, {"NODE_NAME": "node-7"})
    assert config.node_name == "node-7" and config.vpc_route and not config.pod_cidr
    assert parse_config({}, {"NODE_NAME": "a", "UNDERLAY_NODE_NAME": "b"}).node_name == "b"
    settings = kube_settings(config)
    assert (settings.host, settings.node_name, settings.boot_wait_seconds) == \
        ("http://127.0.0.1:1", "node-7", 3.0)
    # the base configuration round-trips through the loader (overrides merge over it)
    assert parse_config(base_config_of(config), {}) == config


SUMMARY = {"capacity": 29, "assigned": 29, "available": 0, "enis": 3, "max_enis": 3,
           "blocked": {"code": int(Code.ENI_LIMIT_REACHED), "msg": "ENI limit reached"},
           "ready": True}


def test_condition_from_the_pool():
    status = ip_status_of(SUMMARY)
    assert (status.available, status.reason) == (False, "ENILimitReached")
    assert "0 free addresses, 3 of 3 ENIs used, 29 of 29 pod IPs assigned" in status.message
    assert pool_message(SUMMARY) in status.message
    assert ip_status_of({**SUMMARY, "available": 1, "assigned": 28}).available
    # growing (not blocked, below capacity) is not "unavailable"
    assert ip_status_of({**SUMMARY, "blocked": None, "assigned": 5}).available
    assert ip_status_of({**SUMMARY, "blocked": None}).reason == "PoolExhausted"
    assert ip_status_of({**SUMMARY, "ready": False}).reason == "AgentNotReady"
    full = ip_status_of({**SUMMARY, "available": 200}, "route table rtb-1 is full: 50 of 50")
    assert (full.available, full.reason) == (False, "RouteTableFull")
