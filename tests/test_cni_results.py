"""The executable's result handling, pure: the result written in the requested version,
and chaining (our result appended after the prevResult of the plugins before us)."""
from __future__ import annotations

from cni.invocation import convert_result, merge_results

OURS = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "ulay0123456789a"},
                       {"name": "eth0", "mac": "0a:00:00:00:00:01", "mtu": 9001,
                        "sandbox": "/run/netns/p"}],
        "ips": [{"address": "10.0.1.7/32", "gateway": "169.254.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]}


def test_version_040_has_ip_versions_and_no_interface_mtu():
    out = convert_result(OURS, "0.4.0")
    assert out["cniVersion"] == "0.4.0"
    assert out["ips"] == [{"version": "4", "address": "10.0.1.7/32", "gateway": "169.254.1.1",
                           "interface": 1}]
    assert out["interfaces"][1] == {"name": "eth0", "mac": "0a:00:00:00:00:01",
                                    "sandbox": "/run/netns/p"}
    assert convert_result({"ips": [{"address": "fd00::5/128"}]}, "0.4.0")["ips"][0]["version"] == "6"


def test_version_1x_drops_ip_version_and_keeps_mtu():
    old = convert_result(OURS, "0.4.0")
    for version in ("1.0.0", "1.1.0"):
        out = convert_result(old | {"interfaces": OURS["interfaces"]}, version)
        assert out["cniVersion"] == version
        assert "version" not in out["ips"][0]
        assert out["interfaces"][1]["mtu"] == 9001
        assert out["routes"] == OURS["routes"]


def test_chaining_appends_after_prev_result_and_shifts_interface_indexes():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth1", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "192.168.5.2/24", "interface": 0}],
            "routes": [{"dst": "192.168.0.0/16"}], "dns": {"nameservers": ["10.96.0.10"]}}
    merged = merge_results(prev, OURS)
    assert [i["name"] for i in merged["interfaces"]] == ["eth1", "ulay0123456789a", "eth0"]
    assert merged["ips"] == [prev["ips"][0], {**OURS["ips"][0], "interface": 2}]
    assert merged["routes"] == prev["routes"] + OURS["routes"]
    assert merged["dns"] == prev["dns"]
    assert merged["interfaces"][merged["ips"][1]["interface"]]["name"] == "eth0"


def test_chaining_with_empty_prev_result_is_ours():
    merged = merge_results({"cniVersion": "1.0.0"}, OURS)
    assert merged == {k: v for k, v in OURS.items() if k != "cniVersion"}
