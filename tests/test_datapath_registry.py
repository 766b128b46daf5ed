"""Adding a datapath mode is one class plus one registration (cni.datapath.registry): a
test-only mode, registered through the public seam, is picked by the agent's ``datapath``
setting and drives a real CNI ADD, CHECK and DEL through the host executable, the result
shaped as the mode says. An unknown mode is refused by name."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from cni_fixtures import cni_bin_dir  # noqa: F401 - fixture
from test_agent_helpers import (  # noqa: F401 - fixtures
    control, emulator, fast_config, in_process_agent, wait_for,
)

from cni.datapath import EniLink, PodSpec, SnatConfig, WiredPod
from cni.datapath.base import ResultShape
from cni.datapath.registry import datapath_names, register_datapath
from ipam_daemon.config import ConfigError, parse_config


class RecordingDatapath:
    """A mode that wires nothing and records what the agent asks of it."""

    name = "recording"

    def __init__(self, record_path: str | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def prepare_host(self, snat: SnatConfig | None) -> None:
        self.calls.append(("prepare_host", "", ""))

    def ensure_eni(self, eni: EniLink) -> None:
        self.calls.append(("ensure_eni", eni.mac, ""))

    def setup(self, pod: PodSpec) -> WiredPod:
        self.calls.append(("setup", pod.container_id, pod.pod_ip))
        return WiredPod(host_ifname="rec0", pod_mac="02:00:00:00:00:07", pod_ifindex=7)

    def teardown(self, pod: PodSpec) -> None:
        self.calls.append(("teardown", pod.container_id, pod.pod_ip))

    def check(self, pod: PodSpec) -> list[str]:
        self.calls.append(("check", pod.container_id, pod.pod_ip))
        return []

    def result_shape(self, eni: EniLink) -> ResultShape:
        return ResultShape(32, "169.254.7.7", True)

    def addresses_routed_elsewhere(self) -> set[str]:
        return set()

    def shutdown(self) -> None:
        self.calls.append(("shutdown", "", ""))


register_datapath("recording", RecordingDatapath)  # the one line a new mode needs


@pytest.fixture
def agent(emulator, tmp_path, monkeypatch):
    with in_process_agent(emulator, tmp_path, monkeypatch, warm_ips=1,
                          datapath="recording") as running:
        wait_for(lambda: running.service.pool_summary()["available"] >= 1, 10, "warm pool")
        yield running


def shim(bin_dir: str, command: str, netconf: dict) -> subprocess.CompletedProcess:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "rec-1", "CNI_IFNAME": "eth0",
           "CNI_NETNS": "/proc/self/ns/net", "CNI_PATH": bin_dir,
           "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=rec"}
    return subprocess.run([os.path.join(bin_dir, "underlay")], input=json.dumps(netconf).encode(),
                          env=env, capture_output=True, timeout=30, check=False)


def test_a_registered_mode_is_driven_by_the_agent(agent, cni_bin_dir):
    datapath = agent.datapath
    assert isinstance(datapath, RecordingDatapath) and "recording" in datapath_names()
    netconf = {"cniVersion": "1.0.0", "name": "rec", "type": "underlay",
               "socket": agent.config.socket_path}
    add = shim(cni_bin_dir, "ADD", netconf)
    assert add.returncode == 0, add.stdout
    result = json.loads(add.stdout)
    ip = result["ips"][0]["address"].split("/")[0]
    assert result["ips"][0]["gateway"] == "169.254.7.7"  # the mode's result shape
    assert [i["name"] for i in result["interfaces"]] == ["rec0", "eth0"]
    check = shim(cni_bin_dir, "CHECK", {**netconf, "prevResult": result})
    assert check.returncode == 0, check.stdout
    delete = shim(cni_bin_dir, "DEL", netconf)
    assert delete.returncode == 0, delete.stdout
    pod_calls = [c for c in datapath.calls if c[0] in ("setup", "check", "teardown")]
    assert pod_calls == [("setup", "rec-1", ip), ("check", "rec-1", ip),
                         ("teardown", "rec-1", ip)]
    assert datapath.calls[0][0] == "prepare_host"
    assert agent.service.allocation_rows() == []


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ConfigError, match="datapath='vxlan': must be one of .*'recording'"):
        parse_config(fast_config(datapath="vxlan", cluster="c", instance_id="i-0",
                                 region="us-east-1"), {})
