"""The executable against the real agent (a subprocess, datapath "none": IPAM only, no
netlink anywhere, so it may run in the root namespace with its socket in a temp dir) and
the emulated EC2: ADD/CHECK/DEL through libcni, GC and STATUS as the 1.1 spec execs them,
chaining, agent errors passed through, and bad input that allocates nothing."""
from __future__ import annotations

import json
import os

import pytest
from cni_fixtures import (  # noqa: F401 - fixtures
    cni_bin_dir, cni_path, libcni_client, make_netns, run_libcni, run_plugin, short_tmp,
)
from test_agent_helpers import (  # noqa: F401 - fixtures
    control, emulator, make_world, start_agent, wait_for,
)

NET = "h4e2e"


@pytest.fixture
def node(emulator, control, start_agent, make_netns, cni_bin_dir, short_tmp):
    """A running agent with a warm pool, a pod namespace, and a conflist pointing at it."""
    agent = start_agent(make_world(emulator), warm_ips=3)
    wait_for(lambda: agent.pool()["available"] == 3, 15, "a warm pool of 3")

    def conflist(version: str = "1.0.0") -> str:
        path = os.path.join(short_tmp, f"{version}.conflist")
        with open(path, "w") as f:
            json.dump({"cniVersion": version, "name": NET, "plugins": [
                {"type": "underlay", "socket": agent.config["socket_path"], "mode": "veth"}]}, f)
        return path

    class Node:
        pass

    n = Node()
    n.agent, n.conflist, n.bin_dir = agent, conflist, cni_bin_dir
    n.pod_netns = lambda: f"/run/netns/{make_netns('h4e2e')}"
    n.libcni = {"cni_path_": cni_path(cni_bin_dir), "cache_dir": os.path.join(short_tmp, "c")}
    n.conf = lambda **extra: json.dumps({"cniVersion": "1.1.0", "name": NET, "type": "underlay",
                                         "socket": agent.config["socket_path"], **extra})
    return n


def pods(agent) -> dict[tuple[str, str], str]:
    status, body = agent.client.get("/v1/pods")
    assert status == 200, body
    return {(p["container_id"], p["ifname"]): p["ip"] for p in body if p["network"] == NET}


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_add_check_del_through_libcni(libcni_client, node, version):
    netns = node.pod_netns()
    args = (netns, "e2e-1", "eth0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
    add = run_libcni(libcni_client, "add", node.conflist(version), *args, **node.libcni)
    assert add.returncode == 0, add.stdout + add.stderr + node.agent.log_tail()
    result = add.json()
    assert result["cniVersion"] == version
    ip = result["ips"][0]
    assert ip["address"].endswith("/32") and ip["gateway"] == "169.254.1.1"
    assert ("version" in ip) == (version == "0.4.0")
    assert result["interfaces"][ip["interface"]] == {"name": "eth0", "sandbox": netns}
    held = pods(node.agent)
    assert held == {("e2e-1", "eth0"): ip["address"].split("/")[0]}
    record = [p for p in node.agent.client.get("/v1/pods")[1] if p["network"] == NET][0]
    assert (record["namespace"], record["name"], record["netns"]) == ("default", "web-0", netns)

    check = run_libcni(libcni_client, "check", node.conflist(version), *args, **node.libcni)
    assert check.returncode == 0, check.stdout

    for _ in range(2):  # the second DEL finds nothing and still succeeds
        delete = run_libcni(libcni_client, "del", node.conflist(version), *args, **node.libcni)
        assert delete.returncode == 0, delete.stdout
    assert pods(node.agent) == {}

    # libcni forgets the result on DEL; a CHECK with the old result now fails, naming it
    env = {"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "e2e-1", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0"}
    proc = run_plugin(node.bin_dir, env, node.conf(cniVersion=version, prevResult=result))
    err = json.loads(proc.stdout)
    assert proc.returncode != 0 and err["code"] == 106 and "e2e-1" in err["msg"], err


def test_gc_releases_exactly_the_attachments_not_listed(node):
    netns = node.pod_netns()
    for cid in ("keep-1", "drop-1", "drop-2"):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0"}
        proc = run_plugin(node.bin_dir, env, node.conf())
        assert proc.returncode == 0, proc.stdout
    assert set(pods(node.agent)) == {("keep-1", "eth0"), ("drop-1", "eth0"), ("drop-2", "eth0")}
    gc = node.conf(**{"cni.dev/valid-attachments": [{"containerID": "keep-1", "ifname": "eth0"}]})
    proc = run_plugin(node.bin_dir, {"CNI_COMMAND": "GC", "CNI_PATH": node.bin_dir}, gc)
    assert proc.returncode == 0 and proc.stdout == b"", proc.stdout
    assert set(pods(node.agent)) == {("keep-1", "eth0")}
    # the key of the spec's earlier draft, as libcni also sends it, is understood alone
    legacy = node.conf(**{"cni.dev/attachments": []})
    proc = run_plugin(node.bin_dir, {"CNI_COMMAND": "GC", "CNI_PATH": node.bin_dir}, legacy)
    assert proc.returncode == 0, proc.stdout
    assert pods(node.agent) == {}


def test_status_with_agent_up_succeeds_silently(node):
    proc = run_plugin(node.bin_dir, {"CNI_COMMAND": "STATUS"}, node.conf())
    assert proc.returncode == 0 and proc.stdout == b"", proc.stdout


def test_chained_add_keeps_the_prev_result(node):
    netns = node.pod_netns()
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "net1", "sandbox": netns}],
            "ips": [{"address": "192.168.9.2/24", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "chain-1", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0"}
    proc = run_plugin(node.bin_dir, env, node.conf(prevResult=prev))
    assert proc.returncode == 0, proc.stdout
    result = json.loads(proc.stdout)
    assert result["cniVersion"] == "1.1.0"
    assert result["interfaces"] == [prev["interfaces"][0], {"name": "eth0", "sandbox": netns}]
    assert result["ips"][0] == prev["ips"][0] and result["ips"][1]["interface"] == 1
    assert result["dns"] == prev["dns"]
    ours = result["ips"][1]["address"].split("/")[0]
    assert pods(node.agent) == {("chain-1", "eth0"): ours}
    check = run_plugin(node.bin_dir, {**env, "CNI_COMMAND": "CHECK"}, node.conf(prevResult=result))
    assert check.returncode == 0, check.stdout


def test_bad_input_allocates_nothing_with_the_agent_up(node):
    netns = node.pod_netns()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad-1", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0"}
    before = node.agent.pool()
    cases = [
        (env, node.conf(mode="macvtap"), 7),
        (env, node.conf(cniVersion="0.3.1"), 1),
        ({**env, "CNI_NETNS": "/run/netns/h4-absent"}, node.conf(), 3),
        ({**env, "CNI_ARGS": "K8S_POD_NAME=x;SURPRISE=1"}, node.conf(), 4),
        (env, b'{"cniVersion": "1.1.0", "name": ', 6),
        (env, node.conf(mtu=9500), 7),
    ]
    for case_env, stdin, code in cases:
        proc = run_plugin(node.bin_dir, case_env, stdin)
        assert proc.returncode != 0 and json.loads(proc.stdout)["code"] == code, proc.stdout
    after = node.agent.pool()
    assert pods(node.agent) == {}
    assert (after["assigned"], after["total"]) == (before["assigned"], before["total"])


def test_agent_errors_pass_through_with_their_code(emulator, control, start_agent, make_netns,
                                                   cni_bin_dir):
    """A real exhaustion (max_ips=1) comes back as the agent's own code >= 100 and message."""
    agent = start_agent(make_world(emulator), warm_ips=1, max_ips=1, borrow_wait_seconds=0.5)
    wait_for(lambda: agent.pool()["available"] == 1, 15, "one warm address")
    netns = f"/run/netns/{make_netns('h4lim')}"
    conf = json.dumps({"cniVersion": "1.0.0", "name": NET, "type": "underlay",
                       "socket": agent.config["socket_path"]})
    results = []
    for cid in ("lim-1", "lim-2"):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0"}
        results.append(run_plugin(cni_bin_dir, env, conf))
    assert results[0].returncode == 0, results[0].stdout
    err = json.loads(results[1].stdout)
    assert results[1].returncode != 0 and err["code"] >= 100, err
    assert err["msg"] and "Traceback" not in err["msg"]
    assert set(pods(agent)) == {("lim-1", "eth0")}
    status = run_plugin(cni_bin_dir, {"CNI_COMMAND": "STATUS"},
                        conf.replace('"1.0.0"', '"1.1.0"'))
    if status.returncode != 0:  # the agent may report the limit as 51 while it holds
        assert json.loads(status.stdout)["code"] in (50, 51)
