"""Node identity and per-node configuration from the API server, and the bounded wait at
boot: the instance id comes from spec.providerID, a node label selects a ConfigMap whose
values are merged over the configuration and validated by the agent's own loader, and an
API server that does not answer makes the agent start from its configuration and catch
up later."""
from __future__ import annotations

import json
import threading

import pytest

from fake_apiserver.fixtures import INSTANCE, add_node, apiserver, kube_api, settings_for, wait_until  # noqa: F401
from ipam_daemon.config import parse_config
from ipam_daemon.kube import KubeIntegration
from ipam_daemon.kube.identity import (IdentityError, parse_provider_id, resolve_identity,
                                       resolve_identity_within)

BASE = {"cluster": "prod-eu", "warm_ips": 2, "subnets": ["subnet-0base"], "instance_id": "i-00000000configured"}


@pytest.mark.parametrize("provider_id, expected", [
    ("aws:///us-east-1a/i-0123456789abcdef0", ("us-east-1a", "i-0123456789abcdef0")),
    ("aws:///eu-west-3c/i-0abcdef12", ("eu-west-3c", "i-0abcdef12")),
    ("aws:////i-0abcdef12", ("", "i-0abcdef12")),
])
def test_provider_id_parsed(provider_id, expected):
    assert parse_provider_id(provider_id) == expected


@pytest.mark.parametrize("bad", ["", "gce://proj/zone/vm", "aws:///us-east-1a/", "aws:///us-east-1a/i-XYZ",
                                 "aws://us-east-1a/i-0123456789abcdef0"])
def test_bad_provider_id_named_in_error(bad):
    with pytest.raises(IdentityError, match="providerID"):
        parse_provider_id(bad)


def add_override(server, name: str, data: dict) -> None:
    server.create("configmaps", {"metadata": {"name": name, "namespace": "kube-system"}, "data": data})


def test_identity_from_provider_id(apiserver):
    add_node(apiserver, "node-a", zone="us-east-1b")
    with kube_api(apiserver) as api:
        identity = resolve_identity(api, "node-a", BASE)
    assert (identity.instance_id, identity.zone, identity.source) == (INSTANCE, "us-east-1b", "kubernetes")
    assert identity.config["instance_id"] == INSTANCE and identity.override == ""
    assert parse_config(identity.config, {}).instance_id == INSTANCE


def test_no_provider_id_keeps_the_configured_instance(apiserver):
    add_node(apiserver, "node-a", instance="")
    with kube_api(apiserver) as api:
        identity = resolve_identity(api, "node-a", BASE)
    assert identity.instance_id == "i-00000000configured"


def test_per_node_override_merged_and_validated(apiserver):
    add_node(apiserver, "node-a", labels={"underlay.io/config": "big-pool"})
    add_node(apiserver, "node-b", instance="i-0bbbbbbbbbbbbbbbb")
    add_override(apiserver, "big-pool", {"config.json": json.dumps({"warm_ips": 8, "max_ips": 20}),
                                         "security_groups": '["sg-0pods"]'})
    with kube_api(apiserver) as api:
        tuned = resolve_identity(api, "node-a", BASE)
        plain = resolve_identity(api, "node-b", BASE)
    config = parse_config(tuned.config, {})
    assert (config.pool.warm_ips, config.pool.max_ips, config.security_groups) == (8, 20, ("sg-0pods",))
    assert config.subnets == ("subnet-0base",) and config.cluster == "prod-eu"  # untouched keys stay
    assert tuned.override == "kube-system/big-pool"
    assert parse_config(plain.config, {}).pool.warm_ips == 2


@pytest.mark.parametrize("data, named", [
    ({"config.json": json.dumps({"warm_ips": -1})}, "warm_ips"),
    ({"config.json": "{not json"}, "not valid JSON"),
    ({"subnets": '["vpc-123"]'}, "subnets"),
    ({"no_such_key": "1"}, "no_such_key"),
])
def test_bad_override_is_refused_with_its_name(apiserver, data, named):
    add_node(apiserver, "node-a", labels={"underlay.io/config": "broken"})
    add_override(apiserver, "broken", data)
    with kube_api(apiserver) as api:
        with pytest.raises(IdentityError, match=named):
            resolve_identity(api, "node-a", BASE)
        fallback = resolve_identity_within(api, "node-a", BASE, 1.0, threading.Event())
    assert fallback.source == "configuration" and fallback.config == BASE


def test_missing_override_configmap_is_named(apiserver):
    add_node(apiserver, "node-a", labels={"underlay.io/config": "nowhere"})
    with kube_api(apiserver) as api:
        with pytest.raises(IdentityError, match="nowhere.*does not exist in namespace kube-system"):
            resolve_identity(api, "node-a", BASE)


def test_slow_api_server_at_boot_falls_back_after_the_bounded_wait(apiserver):
    add_node(apiserver, "node-a")
    apiserver.set_latency(60)  # each request outlives the client's read timeout
    try:
        with kube_api(apiserver, request_timeout=0.3) as api:
            identity = resolve_identity_within(api, "node-a", BASE, 0.5, threading.Event())
        assert identity.source == "configuration" and identity.instance_id == "i-00000000configured"
        assert any(r.verb == "get" and r.resource == "nodes" for r in apiserver.requests) or \
            apiserver.in_flight_delayed > 0
    finally:
        apiserver.set_latency(0)


def test_agent_starts_with_api_server_down_then_catches_up(apiserver):
    add_node(apiserver, "node-a", labels={"underlay.io/config": "tuned"})
    add_override(apiserver, "tuned", {"config.json": json.dumps({"warm_ips": 5})})
    apiserver.go_down()
    caught_up = []
    kube = KubeIntegration(settings_for(apiserver, boot_wait_seconds=0.3), BASE,
                           list_allocations=lambda: [], release=lambda key: None,
                           on_identity=caught_up.append)
    try:
        identity = kube.start()
        assert identity.source == "configuration" and identity.config == BASE
        assert parse_config(identity.config, {}).pool.warm_ips == 2  # the agent serves with its file
        apiserver.come_up()
        wait_until(lambda: caught_up, "the identity catch-up")
        assert caught_up[0].source == "kubernetes" and caught_up[0].instance_id == INSTANCE
        assert parse_config(caught_up[0].config, {}).pool.warm_ips == 5
        assert kube.identity == caught_up[0]
    finally:
        kube.stop()


def test_label_change_at_runtime_applies_the_new_override(apiserver):
    add_node(apiserver, "node-a")
    add_override(apiserver, "tuned", {"config.json": json.dumps({"warm_ips": 6})})
    changed = []
    kube = KubeIntegration(settings_for(apiserver), BASE, list_allocations=lambda: [],
                           release=lambda key: None, on_identity=changed.append)
    try:
        assert kube.start().override == ""
        wait_until(lambda: kube._settled_key is not None, "the first node event resolved")
        assert changed == []  # the first node event resolves the same identity: no call
        apiserver.patch("nodes", "node-a", {"metadata": {"labels": {"underlay.io/config": "tuned"}}})
        wait_until(lambda: changed, "the new override")
        assert changed[0].override == "kube-system/tuned"
        assert parse_config(changed[0].config, {}).pool.warm_ips == 6
    finally:
        kube.stop()
