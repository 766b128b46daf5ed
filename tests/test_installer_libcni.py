"""The executable the installer put into a fake host root runs by itself: with an empty
environment it answers VERSION and performs ADD/DEL through libcni against the real agent
(datapath none, emulated EC2). And the socket protocol's version step: a request one API
version back works against this agent, a newer one is refused naming the version; the
per-operation endpoints that release 0.1.0's executable calls keep working, so a DEL from
the old executable is never stranded by an upgrade."""
from __future__ import annotations

import json
import subprocess

import pytest
from cni_fixtures import libcni_client, make_netns  # noqa: F401 - fixtures
from test_agent_helpers import (  # noqa: F401 - fixtures
    control, emulator, make_world, start_agent, wait_for,
)
from test_installer_helpers import make_host, plugin_binary, run_install  # noqa: F401

from cni.conflist import ConflistOptions, render_conflist_json
from cni.spec import API_VERSION

@pytest.fixture
def node(tmp_path, plugin_binary, emulator, control, start_agent):
    """A running agent and a fake host root on which the installer put our files."""
    agent = start_agent(make_world(emulator), warm_ips=2)
    wait_for(lambda: agent.pool()["available"] >= 1, 15, "a warm address")
    host = make_host(tmp_path / "host", populated=False)
    template = tmp_path / "t.conflist"
    # only our plugin: this test is about the executable, not the reference plugins
    template.write_text(render_conflist_json(ConflistOptions(
        socket=agent.config["socket_path"], portmap=False, bandwidth=False)))
    proc = run_install(host, "install", "--plugin-source", str(plugin_binary),
                       "--conflist-template", str(template), "--agent-socket",
                       agent.config["socket_path"], "--wait-seconds", "30")
    assert proc.returncode == 0, proc.stderr
    return agent, host


def held(agent) -> dict[str, str]:
    status, body = agent.client.get("/v1/pods")
    assert status == 200, body
    return {p["container_id"]: p["ip"] for p in body}


def test_version_with_an_empty_environment(node, tmp_path):
    _, host = node
    exe = host / "opt/cni/bin/underlay"
    proc = subprocess.run(["env", "-i", "CNI_COMMAND=VERSION", str(exe)],
                          input=b'{"cniVersion": "0.4.0"}', capture_output=True, timeout=30,
                          check=False, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == {"cniVersion": "0.4.0",
                                       "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_add_del_through_libcni_with_an_empty_environment(node, libcni_client, make_netns,
                                                          tmp_path):
    agent, host = node
    netns = f"/run/netns/{make_netns('h9ns')}"
    conflist = str(host / "etc/cni/net.d/05-underlay.conflist")
    env = {"CNI_PATH": str(host / "opt/cni/bin"), "LIBCNI_CACHE_DIR": str(tmp_path / "cache")}

    def libcni(command: str) -> subprocess.CompletedProcess:
        # the plugin inherits exactly this environment plus the CNI_* variables
        return subprocess.run([libcni_client, command, conflist, netns, "h9-ctr", "eth0",
                               "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    add = libcni("add")
    assert add.returncode == 0, add.stdout + add.stderr + agent.log_tail()
    address = json.loads(add.stdout)["ips"][0]["address"]
    assert held(agent) == {"h9-ctr": address.split("/")[0]}
    for _ in range(2):  # DEL is idempotent
        delete = libcni("del")
        assert delete.returncode == 0, delete.stdout + delete.stderr
    assert held(agent) == {}


def test_previous_api_version_is_served_and_a_newer_refused(emulator, control, start_agent):
    """The previous executable sends api=API_VERSION-1: its ADD and DEL work against this
    agent, also crossed with the current version (upgrade in the middle of a pod's life)."""
    agent = start_agent(make_world(emulator), warm_ips=2)
    old = API_VERSION - 1
    for attach_api, detach_api in ((old, old), (API_VERSION, old), (old, API_VERSION)):
        cid = f"api-{attach_api}-{detach_api}"
        status, body = agent.attach(cid, api=attach_api)
        assert status == 200 and body["result"]["ips"], body
        status, body = agent.client.post("/v1/detach", {
            "api": detach_api, "network": "net", "container_id": cid, "ifname": "eth0"})
        assert status == 200, body
        assert cid not in held(agent)
    status, body = agent.attach("api-new", api=API_VERSION + 1)
    assert status == 400 and body["code"] == 1, body
    assert f"api version {API_VERSION + 1} not supported" in body["msg"]
    assert "api-new" not in held(agent)
