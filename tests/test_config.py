"""Configuration: file + UNDERLAY_<KEY> overrides, errors that name key and value."""
from __future__ import annotations

import json

import pytest

from ipam_daemon.config import AgentConfig, ConfigError, apply_overrides, load_config, parse_config


def test_defaults_beat_hoarding():
    c = AgentConfig()
    assert c.pool.warm_enis == 0 and 0 < c.pool.warm_ips <= 4
    assert c.socket_path == "/run/underlay/agent.sock"
    assert c.state_path == "/var/lib/underlay/ipam.db"
    assert (c.status_address, c.status_port) == ("127.0.0.1", 61680)


def test_file_then_environment(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"warm_ips": 3, "subnets": ["subnet-a"], "datapath": "none",
                                "snat": {"enabled": True, "excluded_cidrs": ["10.9.0.0/16"]}}))
    c = load_config(path, {"UNDERLAY_WARM_IPS": "5", "UNDERLAY_SNAT": "off",
                           "UNDERLAY_SECURITY_GROUPS": "sg-1, sg-2", "OTHER": "x"})
    assert c.pool.warm_ips == 5 and c.subnets == ("subnet-a",) and c.datapath == "none"
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
    ({"mode": "vpc-route", "pod_cidr": "10.244.1.0/24", "prefix_delegation": True}, {},
     "prefix_delegation=True: mode vpc-route carves pod addresses"),
    ({}, {"UNDERLAY_PREFIX_DELEGATION": "maybe"}, "prefix_delegation: expected on/off"),
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
    assert merged.pool.warm_ips == 6 and merged.subnets == ("subnet-b",) and base.pool.warm_ips == 2
    with pytest.raises(ConfigError, match="warm_ips"):
        apply_overrides(base, {"warm_ips": -3})


def test_the_pool_keys_nest_under_pool_or_sit_at_the_top_level():
    nested = parse_config({"pool": {"warm_ips": 7, "batch_size": 2}, "cooldown_seconds": 5}, {})
    flat = parse_config({"warm_ips": 7, "batch_size": 2, "cooldown_seconds": 5}, {})
    assert nested == flat and nested.pool.warm_ips == 7 and nested.pool.batch_size == 2
    # the environment names a pool key by its flat name, and wins over the file's pool
    assert parse_config({"pool": {"warm_ips": 7}}, {"UNDERLAY_WARM_IPS": "1"}).pool.warm_ips == 1


@pytest.mark.parametrize("raw,message", [
    ({"pool": {"warm_ipz": 1}}, "pool: unknown keys warm_ipz"),
    ({"pool": {"warm_ips": 1}, "warm_ips": 2}, "warm_ips: given both in pool and at the top"),
    ({"pool": [1]}, "pool: expected an object of pool keys"),
    ({"pool": {"batch_size": 0}}, "batch_size=0: must be >= 1"),
    ({"pool": {"eni_min_age": -1}}, "eni_min_age=-1.0: must be >= 0 seconds"),
    ({"pool": {"surge_ips": "x"}}, "surge_ips: expected an integer, got 'x'"),
])
def test_bad_pool_sections_are_named(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {})
    assert message in str(info.value)


def test_every_key_is_documented_and_typed_once():
    """Each key of the file is one declaration with its doc; the flat names do not collide
    and every one is also an environment variable the agent accepts."""
    from ipam_daemon import config

    types = {**config.field_types(config.AgentConfig), **config.field_types(config.Targets)}
    assert config.KEYS == set(types) - {"pool"}
    for key in config.KEYS:
        field = config._POOL.get(key) or config._TOP[key]
        assert field.metadata.get("doc"), f"{key} has no documentation"
        assert not config.unknown_env({f"UNDERLAY_{key.upper()}": "1"})
    assert config.unknown_env({"UNDERLAY_POOL": "1"}) == ["UNDERLAY_POOL"]
    assert config.LIVE_KEYS >= {"warm_ips", "batch_size", "eni_min_age", "log_level"}
    assert not config.LIVE_KEYS & {"datapath", "subnets", "socket_path", "instance_id"}


def test_docs_configuration_md_is_the_rendered_reference():
    """docs/configuration.md is rendered from the declarations (make docs); a key added,
    removed or re-documented without rendering again fails here."""
    from pathlib import Path

    from ipam_daemon.config import KEYS, reference_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert text == reference_markdown(), "docs/configuration.md is stale: run make docs"
    for key in KEYS:
        assert f"| `{key}` |" in text
