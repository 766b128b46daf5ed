"""The agent PROCESS (datapath none, emulated EC2) and its configuration at run time,
through the fake API server and the real ``kubernetes`` client: an edit of the agent's
ConfigMap changes ``warm_ips`` without a restart; a bad edit is refused with a
``ConfigRejected`` event on the ConfigMap and the running configuration kept; an edit of a
key that shapes the node is reported (``ConfigNeedsRestart`` event, log line) while the
pool keys of the same edit apply; an edit of the node's override ConfigMap applies too. An
unknown ``UNDERLAY_*`` variable stops the agent with a message naming it. One version
string: ``--version``, the start-up log line, ``underlay_build_info``, ``/healthz`` and
the host executable all report pyproject's."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

from fake_apiserver.fixtures import add_node, apiserver  # noqa: F401 - fixture
from test_agent_helpers import (  # noqa: F401 - fixtures
    AgentProcess, control, emulator, make_world, start_agent, wait_for,
)
from test_agent_kube import kube_config

from lab.node_io import build_shim

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "kube-system"


def edit(apiserver, agent, name: str = "underlay-config", **changes) -> None:
    """Write the agent's own configuration with ``changes`` into the ConfigMap."""
    body = {"agent.json": json.dumps({**agent.config, **changes})}
    if any(c["metadata"]["name"] == name for c in apiserver.list("configmaps", NAMESPACE)):
        apiserver.patch("configmaps", name, {"data": body}, NAMESPACE)
    else:
        apiserver.create("configmaps", {"metadata": {"name": name, "namespace": NAMESPACE},
                                        "data": body})


def config_events(apiserver, reason: str) -> list[dict]:
    return [e for e in apiserver.list("events") if e["reason"] == reason
            and e["involvedObject"]["kind"] == "ConfigMap"]


def targets(agent) -> dict:
    return agent.pool()["targets"]


def test_configmap_edits_apply_live_bad_ones_are_refused(apiserver, emulator, control,
                                                         start_agent):
    world = make_world(emulator, nodes=1)
    inst = world.instances[0]
    add_node(apiserver, inst.name, instance=inst.instance_id)
    agent = start_agent(world, node_name=inst.name, warm_ips=1, **kube_config(apiserver))
    edit(apiserver, agent)  # the same as the file: nothing changes
    wait_for(lambda: agent.pool()["available"] == 1, 15, "1 warm address")

    edit(apiserver, agent, warm_ips=4)
    wait_for(lambda: agent.pool()["available"] == 4, 15, "4 warm addresses, no restart")
    assert targets(agent)["warm_ips"] == 4 and agent.starts == 1
    assert "configuration applied without a restart: warm_ips=4" in agent.log_tail(400)

    edit(apiserver, agent, warm_ips="many")
    rejected = wait_for(lambda: config_events(apiserver, "ConfigRejected"), 15, "the event")
    event = rejected[0]
    assert event["involvedObject"]["name"] == "underlay-config" and event["type"] == "Warning"
    assert "warm_ips: expected an integer, got 'many'" in event["message"], event["message"]
    assert f"node {inst.name}" in event["message"]
    assert "configuration refused" in agent.log_tail(400)
    assert targets(agent)["warm_ips"] == 4 and agent.pool()["available"] == 4  # kept

    edit(apiserver, agent, warm_ips=2, datapath="veth")  # datapath needs a restart
    restart = wait_for(lambda: config_events(apiserver, "ConfigNeedsRestart"), 15, "the event")
    assert "datapath changed but only apply after an agent restart" in restart[0]["message"]
    assert "applied now: warm_ips" in restart[0]["message"]
    wait_for(lambda: targets(agent)["warm_ips"] == 2, 15, "the pool key of the same edit")
    assert "configuration change of datapath needs an agent restart" in agent.log_tail(400)

    # the node's override ConfigMap is followed too, not only when the label changes
    apiserver.create("configmaps", {"metadata": {"name": "tuned", "namespace": NAMESPACE},
                                    "data": {"warm_ips": "5"}})
    apiserver.patch("nodes", inst.name, {"metadata": {"labels": {"underlay.io/config": "tuned"}}})
    wait_for(lambda: targets(agent)["warm_ips"] == 5, 15, "the override")
    apiserver.patch("configmaps", "tuned", {"data": {"warm_ips": "3"}}, NAMESPACE)
    wait_for(lambda: targets(agent)["warm_ips"] == 3, 15, "the edited override")
    apiserver.patch("configmaps", "tuned", {"data": {"warm_ips": "-1"}}, NAMESPACE)
    refused = wait_for(lambda: [e for e in config_events(apiserver, "ConfigRejected")
                                if e["involvedObject"]["name"] == "tuned"], 15, "the event")
    assert "warm_ips=-1: must be >= 0" in refused[0]["message"], refused[0]["message"]
    assert targets(agent)["warm_ips"] == 3 and agent.starts == 1
    assert agent.stop() == 0


def test_an_unknown_underlay_variable_stops_the_agent(emulator, control, tmp_path):
    agent = AgentProcess(tmp_path, emulator, make_world(emulator))
    agent.start(wait_ready=False, extra_env={"UNDERLAY_WARMIPS": "5", "UNDERLAY_WARM_IPS": "2"})
    assert agent.proc.wait(timeout=30) == 2
    log = agent.log_tail()
    assert "environment variable UNDERLAY_WARMIPS names no configuration key (did you mean" \
        " UNDERLAY_WARM_IPS?)" in log, log
    assert not Path(agent.config["socket_path"]).exists()  # it never served
    assert emulator.control.call_counts() == {}  # nor called the cloud


def test_one_version_everywhere(emulator, control, start_agent):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    agent = start_agent(make_world(emulator))
    said = subprocess.run([sys.executable, "-m", "ipam_daemon.main", "--version"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert said.strip() == f"underlay {version}"
    assert f"underlay-agent {version} starting" in agent.log_tail(400)
    for port in (agent.status_port, agent.metrics_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            assert json.load(reply) == {"ok": True, "version": version}
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics",
                                timeout=5) as reply:
        text = reply.read().decode()
    assert re.search(rf'^underlay_build_info{{python_version="[0-9.]+",version="{version}"}} 1\.0$',
                     text, re.M), text
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
    shim = subprocess.run([build_shim(), "--version"], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert shim.strip() == f"underlay {version}"
