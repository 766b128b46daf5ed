"""Configuration: file + UNDERLAY_<KEY> overrides, errors that name key and value."""
from __future__ import annotations

import json

import pytest

from ipam_daemon.config import AgentConfig, ConfigError, apply_overrides, load_config, parse_config


def test_defaults_beat_hoarding():
    c = AgentConfig()
    assert c.warm_enis == 0 and 0 < c.warm_ips <= 4
    assert c.socket_path == "/run/underlay/agent.sock"
    assert c.state_path == "/var/lib/underlay/ipam.db"
    assert (c.status_address, c.status_port) == ("127.0.0.1", 61680)


def test_file_then_environment(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"warm_ips": 3, "subnets": ["subnet-a"], "datapath": "none",
                                "snat": {"enabled": True, "excluded_cidrs": ["10.9.0.0/16"]}}))
    c = load_config(path, {"UNDERLAY_WARM_IPS": "5", "UNDERLAY_SNAT": "off",
                           "UNDERLAY_SECURITY_GROUPS": "sg-1, sg-2", "OTHER": "x"})
    assert c.warm_ips == 5 and c.subnets == ("subnet-a",) and c.datapath == "none"
    assert c.snat is False and c.snat_excluded_cidrs == ("10.9.0.0/16",)
    assert c.security_groups == ("sg-1", "sg-2")


@pytest.mark.parametrize("raw,env,message", [
    ({"warm_ips": "many"}, {}, "warm_ips: expected an integer, got 'many'"),
    ({}, {"UNDERLAY_MAX_IPS": "-1"}, "max_ips=-1: must be >= 0"),
    ({"datapath": "overlay"}, {}, "datapath='overlay'"),
    ({"warm_ipz": 1}, {}, "unknown configuration keys: warm_ipz"),
    ({"status_address": "0.0.0.0"}, {}, "status_address='0.0.0.0'"),
    ({"snat_excluded_cidrs": ["10.0.0.0/33"]}, {}, "'10.0.0.0/33' is not a CIDR"),
    ({"pool_interval": 0}, {}, "pool_interval=0.0"),
    ({"min_ips": 9, "max_ips": 4}, {}, "min_ips=9: must not exceed max_ips=4"),
    ({"snat": "maybe"}, {}, "snat: expected on/off"),
    ({"subnets": [1]}, {}, "subnets: expected a list of strings"),
])
def test_bad_values_are_named(raw, env, message):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env)
    assert message in str(info.value)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.json"):
        load_config(tmp_path / "missing.json", {})
    bad = tmp_path / "bad.json"
    bad.write_text("{warm_ips: 1")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad, {})


def test_per_node_overrides_are_validated():
    base = parse_config({"warm_ips": 2}, {})
    merged = apply_overrides(base, {"warm_ips": 6, "subnets": ["subnet-b"]})
    assert merged.warm_ips == 6 and merged.subnets == ("subnet-b",) and base.warm_ips == 2
    with pytest.raises(ConfigError, match="warm_ips"):
        apply_overrides(base, {"warm_ips": -3})
