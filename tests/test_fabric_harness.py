"""The cluster harness: agents in node namespaces, pods through libcni, real packets across
the emulated VPC; a clean stop, and a cleanup after the harness process is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

from cloud.emulator import cleanup
from cloud.emulator.harness import Cluster

PYTHON = "/work/main/.venv/bin/python"
# TODO(agent): SNAT on fails at start-up today ("snat vpc_cidrs is empty"): the agent passes
# no VPC CIDRs to the datapath. Off here until that is fixed; SNAT is not what these test.
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


def test_pods_on_two_nodes_reach_each_other_and_stop_leaves_nothing() -> None:
    with Cluster(nodes=2) as cluster:
        prefix = cluster.prefix
        for node in cluster.nodes:
            cluster.run_agent(node, AGENT)
        agents = [a.process for a in cluster.agents.values()]
        a = cluster.add_pod(0, "a")
        b = cluster.add_pod(1, "b")
        assert a.ip != b.ip
        assert ping(cluster, a, b.ip) and ping(cluster, b, a.ip)

        # the packets crossed the VPC router between the two ENIs that hold the addresses
        router_routes = cluster.exec_in(cluster.fabric.router, ["ip", "route"]).stdout
        assert f"{a.ip} dev " in router_routes and f"{b.ip} dev " in router_routes
        assert ping(cluster, a, cluster.nodes[1].primary_ip)

        status, pods = cluster.agent_get(0, "/v1/pods")
        assert status == 200 and [p["ip"] for p in pods] == [a.ip], pods
        cluster.del_pod(a)
        cluster.del_pod(b)
        assert not ping(cluster, cluster.nodes[1], a.ip)
        assert run_prefix_left(prefix)["netns"] == sorted(
            [f"{prefix}-vpc", f"{prefix}-out"] + [n.netns for n in cluster.nodes])
    assert run_prefix_left(prefix) == {"netns": [], "record": False, "workdir": False}
    assert all(p.poll() is not None for p in agents)


# The harness with an agent and a pod, killed with SIGKILL mid-run.
CRASHING_HARNESS = textwrap.dedent("""
    import json, sys, time
    from cloud.emulator.harness import Cluster
    cluster = Cluster(nodes=1).start()
    agent = cluster.run_agent(0, {"snat": False})
    pod = cluster.add_pod(0, "crash")
    print(json.dumps({"prefix": cluster.prefix, "agent": agent.process.pid,
                      "pod_netns": pod.netns}), flush=True)
    time.sleep(600)
""")


def test_cleanup_after_the_harness_is_killed() -> None:
    child = subprocess.Popen([PYTHON, "-c", CRASHING_HARNESS], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd="/work/main")
    made = None
    try:
        assert child.stdout is not None
        made = json.loads(child.stdout.readline())
        prefix = made["prefix"]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        left = run_prefix_left(prefix)
        assert made["pod_netns"] in left["netns"] and left["record"] and left["workdir"]
        assert cleanup.read_start_time(made["agent"]) is not None  # orphaned, still running

        out = subprocess.run([PYTHON, "-m", "cloud.emulator.cleanup"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        assert f"{prefix}: killed 1 processes, removed {len(left['netns'])} namespaces" in out
        assert run_prefix_left(prefix) == {"netns": [], "record": False, "workdir": False}
        assert cleanup.read_start_time(made["agent"]) is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if made is not None:
            cleanup.clean_run(made["prefix"])
