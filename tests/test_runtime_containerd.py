"""Pods through a real container runtime: containerd 1.6 (its CRI plugin) on each of two
emulated nodes, driven over the CRI as the kubelet drives it, runs the underlay executable
for every sandbox; the real agents, the emulated cloud and real packets.

One cluster for the module (m5.large nodes). Each node's containerd starts before its agent
and before the installer has written the conflist, so the runtime's own readiness rule is
seen to hold: NetworkReady false until a conflist is loaded. Tests remove their sandboxes;
the runtimes' stop removes every sandbox, mount, cgroup and process they made.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.harness import Cluster, LabNode
from lab.node_io import wait_until
from lab.containerd import (SHIM_SOCKETS, NodeRuntime, RuntimePod, install_underlay,
                            node_runtimes, remove_pod, run_pod, wait_network_ready)
from lab.cri.client import CriError, PodPort
from test_e2e_vpc_tools import agent_pods, cloud_holders, duplicates, node_leftovers

VPC_CIDR = "10.0.0.0/16"
AGENT = {"vpc_cidrs": [VPC_CIDR], "warm_ips": 3, "batch_size": 2}
HOST_PORT, POD_PORT = 30080, 8080
PYTHON = sys.executable
POD_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(1)
server.settimeout(20)
print("ready", flush=True)
conn, peer = server.accept()
conn.sendall(b"hello from the pod\\n")
conn.close()
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as conn:
    print(conn.makefile().readline().strip())
"""


@dataclass
class World:
    cluster: Cluster
    runtimes: list[NodeRuntime]
    ready_before: dict[str, tuple[bool, str, str]]
    ready_after: dict[str, tuple[bool, str, str]]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with Cluster(nodes=2, vpc_cidr=VPC_CIDR) as cluster, node_runtimes(cluster) as runtimes:
        before, after = {}, {}
        for runtime in runtimes:  # no agent, no conflist yet
            with runtime.client() as cri:
                before[runtime.node.name] = cri.conditions()["NetworkReady"]
        for runtime in runtimes:
            cluster.run_agent(runtime.node, AGENT)
            install_underlay(runtime, runtime.node.socket_path)  # conflist once agent is ready
            wait_network_ready(runtime)
            with runtime.client() as cri:
                after[runtime.node.name] = cri.conditions()["NetworkReady"]
        yield World(cluster, runtimes, before, after)


@pytest.fixture
def pods(world: World) -> Iterator[list[tuple[NodeRuntime, RuntimePod]]]:
    made: list[tuple[NodeRuntime, RuntimePod]] = []
    try:
        yield made
    finally:
        for runtime, pod in made:
            try:
                remove_pod(runtime, pod)
            except CriError:
                pass


def start(world: World, pods: list, node: int, name: str, **kwargs) -> RuntimePod:
    runtime = world.runtimes[node]
    pod = run_pod(runtime, name, **kwargs)
    pods.append((runtime, pod))
    return pod


def record_of(cluster: Cluster, node: LabNode, sandbox_id: str) -> dict | None:
    return next((p for p in agent_pods(cluster, node) if p["container_id"] == sandbox_id), None)


def pings(pod: RuntimePod, address: str) -> bool:
    return wait_until(lambda: pod.exec(["busybox", "ping", "-c", "1", "-W", "2",
                                        address]).returncode == 0, 6.0, step=0.2)


def traces(cluster: Cluster, node: LabNode, ip: str) -> list[str]:
    """Anything on the node that still names the pod's address."""
    out = []
    for cmd in (["ip", "rule"], ["ip", "-4", "route", "show", "table", "all"],
                ["ip", "neigh", "show", "nud", "permanent"], ["iptables-save"]):
        out += [line for line in cluster.exec_in(node, cmd).stdout.splitlines()
                if f"{ip} " in f"{line} " or f"{ip}/" in line]
    return out


# ---- the tests ------------------------------------------------------------------------

def test_network_is_not_ready_until_the_agent_is_and_the_conflist_is_written(world: World):
    for runtime in world.runtimes:
        ready, reason, message = world.ready_before[runtime.node.name]
        assert (ready, reason) == (False, "NetworkPluginNotReady"), (reason, message)
        assert "cni plugin not initialized" in message
        assert world.ready_after[runtime.node.name][0] is True
        assert (runtime.conf_dir / "05-underlay.conflist").is_file()


def test_sandboxes_on_both_nodes_get_the_agents_addresses_and_reach_each_other(world, pods):
    cluster = world.cluster
    a = start(world, pods, 0, "web-a", namespace="shop")
    b = start(world, pods, 1, "web-b", namespace="shop")
    for pod in (a, b):
        record = record_of(cluster, pod.node, pod.sandbox_id)
        assert record is not None, agent_pods(cluster, pod.node)
        # the address the runtime reports is the one the agent holds for this sandbox, and
        # the pod's identity came from the runtime's CNI_ARGS
        assert (record["ip"], record["namespace"], record["name"], record["uid"],
                record["netns"]) == (pod.ip, "shop", pod.name, pod.uid, pod.netns)
    assert pings(a, b.ip) and pings(b, a.ip)
    assert pings(a, world.cluster.nodes[1].primary_ip)


def test_host_port_and_bandwidth_come_from_the_runtimes_capability_arguments(world, pods):
    cluster = world.cluster
    node0, node1 = cluster.nodes
    pod = start(world, pods, 0, "shaped", ports=[PodPort(POD_PORT, HOST_PORT)],
                annotations={"kubernetes.io/ingress-bandwidth": "10M",
                             "kubernetes.io/egress-bandwidth": "10M"})
    server = subprocess.Popen(["nsenter", f"--net={pod.netns}", PYTHON, "-c", POD_SERVER,
                               str(POD_PORT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        answer = cluster.exec_in(node1, [PYTHON, "-c", CLIENT, node0.primary_ip,
                                         str(HOST_PORT)]).stdout.strip()
        assert answer == "hello from the pod"
    finally:
        server.kill()
        server.wait(timeout=10)
    # the bandwidth plugin's shaping: a 10 Mbit tbf on the pod's host veth (traffic into the
    # pod) and, redirected from that veth's ingress, one on an ifb device (out of the pod)
    tbf = {}
    for line in cluster.exec_in(node0, ["tc", "qdisc", "show"]).stdout.splitlines():
        words = line.split()
        if words[1] in ("tbf", "ingress"):
            tbf.setdefault(words[4], set()).add(words[1] + (" 10Mbit" if "10Mbit" in line else ""))
    veths = [dev for dev, kinds in tbf.items() if dev.startswith("ulay")]
    ifbs = [dev for dev, kinds in tbf.items() if not dev.startswith("ulay")]
    assert len(veths) == 1 and tbf[veths[0]] == {"tbf 10Mbit", "ingress"}, tbf
    assert len(ifbs) == 1 and tbf[ifbs[0]] == {"tbf 10Mbit"}, tbf
    kind = cluster.exec_in(node0, ["ip", "-d", "-o", "link", "show", ifbs[0]]).stdout
    assert " ifb " in kind, kind


def test_stop_releases_and_remove_leaves_nothing_both_repeatable(world, pods):
    cluster = world.cluster
    runtime = world.runtimes[1]
    node = runtime.node
    pod = run_pod(runtime, "short-lived")
    assert record_of(cluster, node, pod.sandbox_id) is not None
    with runtime.client() as cri:
        for _ in range(2):
            cri.stop_pod_sandbox(pod.sandbox_id)
            assert record_of(cluster, node, pod.sandbox_id) is None  # the agent released it
            assert not cri.pod_sandbox_status(pod.sandbox_id).ready
        # the agent holds the address for the pool again (cooling, then free) on the ENI
        # where the cloud has it, or has given it back and the cloud no longer has it there
        held = {a["ip"]: (e["id"], a["state"]) for e in cluster.agent_get(node, "/v1/enis")[1]
                for a in e["addresses"]}
        in_cloud = [eni for eni, instance in cloud_holders(cluster).get(pod.ip, [])
                    if instance == node.instance_id]
        if pod.ip in held:
            assert held[pod.ip][1] in ("cooling", "free") and in_cloud == [held[pod.ip][0]]
        else:
            assert in_cloud == []
        for _ in range(2):
            cri.remove_pod_sandbox(pod.sandbox_id)
        assert all(s.id != pod.sandbox_id for s in cri.list_pod_sandboxes())
    cluster.wait_reaped(node)
    assert traces(cluster, node, pod.ip) == []
    links = cluster.exec_in(node, ["ip", "-o", "link"]).stdout
    assert "ulay" not in links and "ulrm" not in links
    assert not subprocess.run(["test", "-e", pod.netns]).returncode == 0


def test_sandboxes_outlive_a_killed_runtime_and_stop_cleanly_after(world, pods):
    cluster = world.cluster
    runtime = world.runtimes[0]
    a = start(world, pods, 0, "survivor")
    b = start(world, pods, 1, "peer")
    runtime.kill()
    try:
        assert pings(a, b.ip) and pings(b, a.ip)  # the datapath needs no runtime
    finally:
        runtime.start()
    with runtime.client() as cri:
        status = cri.pod_sandbox_status(a.sandbox_id)
    assert status.ready and status.ip == a.ip
    assert pings(a, b.ip)
    remove_pod(runtime, a)
    assert record_of(cluster, a.node, a.sandbox_id) is None


def test_a_killed_agent_during_a_burst_gives_no_address_twice(world, pods):
    """10 RunPodSandbox at once while the agent is SIGKILLed and restarted: the calls that
    fail are retried as the kubelet retries (a new attempt), and all end up with a sandbox
    of their own address. EC2 stalls the pool's growth until the kill, so that ADDs are
    certainly in flight in the agent when it dies."""
    cluster = world.cluster
    assert cluster.cloud is not None
    control = cluster.cloud.control
    runtime = world.runtimes[0]
    node = runtime.node
    config = dict(cluster.agents[node.name].config)
    results: dict[str, RuntimePod] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def kubelet(name: str) -> None:
        deadline = time.monotonic() + 90
        attempt = 0
        while time.monotonic() < deadline:
            try:
                pod = run_pod(runtime, name, attempt=attempt)
            except CriError as exc:
                with lock:
                    failures.append(f"{name}#{attempt}: {exc.details[:120]}")
                attempt += 1
                time.sleep(0.5)
                continue
            with lock:
                results[name] = pod
                pods.append((runtime, pod))
            return

    control.set_faults([{"action": action, "kind": "timeout", "rate": 1.0, "seconds": 1.0}
                        for action in ("AssignPrivateIpAddresses", "CreateNetworkInterface")])
    workers = [threading.Thread(target=kubelet, args=(f"burst-{i}",)) for i in range(10)]
    try:
        for worker in workers:
            worker.start()
        # the warm addresses are taken; the other ADDs wait in the agent for the pool
        assert wait_until(lambda: sum(p["name"].startswith("burst-")
                                      for p in agent_pods(cluster, node)) >= 2, 30.0)
        time.sleep(0.3)
        cluster.stop_agent(node, kill=True)
    finally:
        control.clear_faults()
    cluster.run_agent(node, {k: config[k] for k in AGENT})
    for worker in workers:
        worker.join(timeout=120)
    assert sorted(results) == sorted(f"burst-{i}" for i in range(10)), failures
    ips = [pod.ip for pod in results.values()]
    assert duplicates(ips) == []
    # the agent ends up holding exactly the live sandboxes' addresses: what failed attempts
    # took was released (their DEL came while it was down: reconcile found the netns gone)
    ours = {p["container_id"]: p["ip"] for p in agent_pods(cluster, node)
            if p["name"].startswith("burst-")}
    assert wait_until(lambda: {p["container_id"]: p["ip"] for p in agent_pods(cluster, node)
                               if p["name"].startswith("burst-")}
                      == {pod.sandbox_id: pod.ip for pod in results.values()}, 45.0), ours
    assert not [ip for ip, held in cloud_holders(cluster).items() if len(held) > 1]
    assert failures, "the agent was killed while no sandbox was being created"
    print(f"\n{len(failures)} failed RunPodSandbox calls, e.g. {failures[:3]}")


def test_thirty_sandboxes_in_parallel_leave_nothing(world):
    cluster = world.cluster
    before = {rt.node.name: node_leftovers(cluster, rt.node) for rt in world.runtimes}

    def life(i: int) -> str:
        runtime = world.runtimes[i % 2]
        pod = run_pod(runtime, f"many-{i}")
        assert pod.ip
        remove_pod(runtime, pod)
        return pod.ip

    with ThreadPoolExecutor(max_workers=10) as pool:
        ips = list(pool.map(life, range(30)))
    assert len(ips) == 30
    for runtime in world.runtimes:
        node = runtime.node
        assert not [p for p in agent_pods(cluster, node) if p["name"].startswith("many-")]
        with runtime.client() as cri:
            assert not [s for s in cri.list_pod_sandboxes() if s.name.startswith("many-")]
        cluster.wait_reaped(node)
        assert node_leftovers(cluster, node) == before[node.name]
        netns_dir = runtime.dir / "state" / "io.containerd.grpc.v1.cri" / "netns"
        assert not netns_dir.is_dir() or not any(netns_dir.iterdir())
    assert not [ip for ip, held in cloud_holders(cluster).items() if len(held) > 1]


def test_a_crashed_run_with_a_runtime_is_cleaned_completely():
    """What `make clean-net` does after a harness died with containerd and sandboxes
    running: no process, mount, cgroup, namespace or file of the run is left."""
    from lab import cleanup
    from lab.containerd import NodeRuntime

    with Cluster(nodes=1, instance_type="t3.small") as cluster:
        runtime = NodeRuntime(cluster, cluster.nodes[0])
        runtime.start()
        cluster.run_agent(cluster.nodes[0], AGENT)
        install_underlay(runtime, cluster.nodes[0].socket_path)
        wait_network_ready(runtime)
        pod = run_pod(runtime, "orphaned")
        pause = [p for p in Path("/proc").iterdir()
                 if p.name.isdigit() and _in_cgroup(p, runtime.cgroup_parent)]
        assert pause, "the sandbox's process is in the run's cgroup"
        cleanup.clean_run(cluster.prefix)  # as if the harness had been killed
        run_dir = cleanup.STATE_DIR / cluster.prefix
        assert not run_dir.exists()
        assert not [line for line in open("/proc/self/mountinfo")
                    if str(run_dir) in line], "mounts of the run are left"
        assert cleanup.run_cgroups(cluster.prefix) == []
        assert not any(_alive(p) for p in pause)
        assert not [p for p in cleanup.list_run_netns(cluster.prefix)]
        assert not subprocess.run(["test", "-e", pod.netns]).returncode == 0
        assert not SHIM_SOCKETS.exists() or any(SHIM_SOCKETS.iterdir()), \
            "an empty shim socket directory of ours is left"


def _in_cgroup(proc, parent: str) -> bool:
    try:
        return parent in proc.joinpath("cgroup").read_text()
    except OSError:
        return False


def _alive(proc) -> bool:
    try:
        return proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
