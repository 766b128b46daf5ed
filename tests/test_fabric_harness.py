"""The cluster harness: agents in node namespaces, pods through libcni, real packets across
the emulated VPC; a clean stop, and a cleanup after the harness process is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab import cleanup
from lab.fabric_plan import name_router_link
from lab.harness import Cluster, HarnessError
from lab.node_io import wait_until

PYTHON = sys.executable
REPO = str(Path(__file__).resolve().parents[1])
# SNAT is not what these tests look at (tests/test_e2e_cni.py does); keep it out of the way.
AGENT = {"snat": False}


def run_prefix_left(prefix: str) -> dict[str, object]:
    netns = sorted(n for n in os.listdir(cleanup.NETNS_DIR) if n.startswith(prefix + "-")) \
        if cleanup.NETNS_DIR.is_dir() else []
    return {"netns": netns, "record": (cleanup.STATE_DIR / f"{prefix}.json").exists(),
            "workdir": (cleanup.STATE_DIR / prefix).exists()}


def ping(cluster: Cluster, target, address: str) -> bool:
    proc = cluster.exec_in(target, ["busybox", "ping", "-c", "1", "-W", "2", address],
                           check=False)
    return proc.returncode == 0


def reachable(cluster: Cluster, target, address: str) -> bool:
    """A positive check, retried for a few seconds so a loaded machine cannot fail it."""
    return wait_until(lambda: ping(cluster, target, address), 5.0)


def rx_packets(cluster: Cluster, eni_id: str) -> int:
    """Packets the VPC router received from this ENI (its link's RX counter)."""
    out = cluster.exec_in(cluster.fabric.router,
                          ["ip", "-j", "-s", "link", "show", name_router_link(eni_id)]).stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def test_pods_on_primary_and_secondary_enis_reach_each_other_and_stop_leaves_nothing() -> None:
    # t3.small: 3 ENIs x 4 addresses, so the fourth pod on a node needs a second ENI
    with Cluster(nodes=2, instance_type="t3.small") as cluster:
        prefix = cluster.prefix
        for node in cluster.nodes:
            cluster.run_agent(node, AGENT)
        agents = [a.process for a in cluster.agents.values()]
        pods = [cluster.add_pod(0, f"a{i}") for i in range(4)]
        b = cluster.add_pod(1, "b")
        assert len({p.ip for p in pods} | {b.ip}) == 5
        # bad input is refused by name and changes nothing
        netns_before = run_prefix_left(prefix)["netns"]
        with pytest.raises(ValueError, match="pod name 'Bad_Name'"):
            cluster.add_pod(0, "Bad_Name")
        with pytest.raises(HarnessError, match="pod default/b already exists"):
            cluster.add_pod(0, "b")
        with pytest.raises(ValueError, match="not part of cluster"):
            cluster.exec_in("someone-else", ["true"])
        assert run_prefix_left(prefix)["netns"] == netns_before

        status, listed = cluster.agent_get(0, "/v1/pods")
        assert status == 200
        eni_of = {p["ip"]: p["eni"] for p in listed}
        primary = cluster.nodes[0].primary_eni_id
        on_secondary = [p for p in pods if eni_of[p.ip] != primary]
        assert on_secondary and len(on_secondary) < len(pods)
        # the secondary ENI the agent attached is plugged into node 0 with its MAC
        status, enis = cluster.agent_get(0, "/v1/enis")
        second = next(e for e in enis if e["id"] == eni_of[on_secondary[0].ip])
        links = cluster.exec_in(cluster.nodes[0], ["ip", "-o", "link"]).stdout
        assert f"eth{second['device_index']}@" in links and second["mac"] in links

        for pod in pods:
            before = rx_packets(cluster, eni_of[pod.ip])
            assert reachable(cluster, pod, b.ip) and reachable(cluster, b, pod.ip)
            # the request and the reply left node 0 through the ENI that holds the pod's IP
            assert rx_packets(cluster, eni_of[pod.ip]) >= before + 2
        assert reachable(cluster, pods[0], cluster.nodes[1].primary_ip)
        # the outside host (for SNAT tests) sees the real source; SNAT is off here
        assert cluster.source_seen_outside(cluster.nodes[0]) == cluster.nodes[0].primary_ip
        assert cluster.source_seen_outside(on_secondary[0]) == on_secondary[0].ip

        for pod in pods + [b]:
            cluster.del_pod(pod)
        assert not ping(cluster, cluster.nodes[1], pods[0].ip)
        assert cluster.agent_get(0, "/v1/pods") == (200, [])
        assert {n for n in run_prefix_left(prefix)["netns"] if "-p" in n} == set()
    assert run_prefix_left(prefix) == {"netns": [], "record": False, "workdir": False}
    assert all(p.poll() is not None for p in agents)


def test_a_cluster_of_no_nodes_is_refused_before_anything_exists() -> None:
    with pytest.raises(ValueError, match="at least one node, got nodes=0"):
        Cluster(nodes=0)
    with pytest.raises(ValueError, match="mode 'macvlan' is not one of veth, ipvlan"):
        Cluster(nodes=1, mode="macvlan")


# The harness with an agent and a pod, killed with SIGKILL mid-run.
CRASHING_HARNESS = textwrap.dedent("""
    import json, sys, time
    from lab.harness import Cluster
    cluster = Cluster(nodes=1).start()
    agent = cluster.run_agent(0, {"snat": False})
    pod = cluster.add_pod(0, "crash")
    print(json.dumps({"prefix": cluster.prefix, "agent": agent.process.pid,
                      "pod_netns": pod.netns}), flush=True)
    time.sleep(600)
""")


def test_cleanup_after_the_harness_is_killed(tmp_path) -> None:
    errors = open(tmp_path / "child.err", "w")
    child = subprocess.Popen([PYTHON, "-c", CRASHING_HARNESS], stdout=subprocess.PIPE,
                             stderr=errors, text=True, cwd=REPO)
    made = None
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"the harness child failed:\n{(tmp_path / 'child.err').read_text()}"
        made = json.loads(line)
        prefix = made["prefix"]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        left = run_prefix_left(prefix)
        assert made["pod_netns"] in left["netns"] and left["record"] and left["workdir"]
        assert cleanup.read_start_time(made["agent"]) is not None  # orphaned, still running

        out = subprocess.run([PYTHON, "-m", "lab.cleanup"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        assert f"{prefix}: killed 1 processes, removed {len(left['netns'])} namespaces" in out
        assert run_prefix_left(prefix) == {"netns": [], "record": False, "workdir": False}
        assert cleanup.read_start_time(made["agent"]) is None
    finally:
        errors.close()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if made is not None:
            cleanup.clean_run(made["prefix"])
