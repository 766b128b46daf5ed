"""End to end through libcni: the real agent (veth datapath, SNAT on) in node namespaces of
the emulated VPC, pods added, checked and deleted by libcni (the library containerd and
CRI-O use), and real packets. GC and STATUS (CNI 1.1.0, which libcni 1.1.2 lacks) are run
exactly as the spec describes: the plugin executable with CNI_COMMAND and the netconf.

One cluster for the module: node 0 (t3.small: 3 ENIs x 4 addresses) grows a second ENI for
its fourth pod; node 1 keeps only its primary ENI (``max_enis=1``), so its links and route
tables change only by what the pods do. Each test removes its pods; the cluster's stop
removes every namespace, link, rule, iptables chain and process it made.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lab import cleanup
from lab.fabric_plan import name_router_link
from lab.harness import REFERENCE_PLUGINS, Cluster, LabNode, Pod
from lab.node_io import probe_source_outside, wait_until
from cni.conflist import ConflistOptions, render_conflist_json

VPC_CIDR = "10.0.0.0/16"
NODE0 = {"vpc_cidrs": [VPC_CIDR], "batch_size": 1, "warm_ips": 2}
NODE1 = {"vpc_cidrs": [VPC_CIDR], "batch_size": 1, "warm_ips": 1, "max_enis": 1}
PING_COUNT = 20
HOST_PORT = 8080
# a one-shot TCP server in the pod: answers with its name and the peer address it saw
POD_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(1)
server.settimeout(float(sys.argv[3]))
print("ready", flush=True)
conn, peer = server.accept()
conn.sendall(f"{sys.argv[2]} saw {peer[0]}\\n".encode())
conn.close()
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as conn:
    print(conn.makefile().readline().strip())
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=2, instance_type="t3.small", vpc_cidr=VPC_CIDR) as made:
        made.run_agent(0, NODE0)
        made.run_agent(1, NODE1)
        yield made
    # the stop removed every namespace (nodes, pods, router, outside) and file of the run
    left = [n for n in os.listdir(cleanup.NETNS_DIR) if n.startswith(made.prefix + "-")] \
        if cleanup.NETNS_DIR.is_dir() else []
    assert left == [] and not made.workdir.exists(), (left, made.workdir)


@pytest.fixture
def pods(cluster: Cluster) -> Iterator[list[Pod]]:
    """Pods a test adds go in here; they are deleted (libcni DEL) whatever happens."""
    made: list[Pod] = []
    try:
        yield made
    finally:
        for pod in reversed(made):
            cluster.del_pod(pod)


# -- helpers ---------------------------------------------------------------------------------
def ping(cluster: Cluster, source: LabNode | Pod, address: str, count: int = 1) -> bool:
    proc = cluster.exec_in(source, ["busybox", "ping", "-c", str(count), "-i", "0.02", "-W",
                                    "2", address], check=False)
    return proc.returncode == 0


def reachable(cluster: Cluster, source: LabNode | Pod, address: str) -> bool:
    """A positive check, retried for a few seconds so a loaded machine cannot fail it."""
    return wait_until(lambda: ping(cluster, source, address), 5.0)


def router_rx(cluster: Cluster, eni_id: str) -> int:
    """Packets the VPC router received from this ENI (the RX counter of its router end)."""
    out = cluster.exec_in(cluster.fabric.router,
                          ["ip", "-j", "-s", "link", "show", name_router_link(eni_id)]).stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def pods_of(cluster: Cluster, node: LabNode) -> dict[str, dict]:
    """The agent's allocations on ``node``, by container id."""
    status, listed = cluster.agent_get(node, "/v1/pods")
    assert status == 200, listed
    return {p["container_id"]: p for p in listed}


def node_state(cluster: Cluster, node: LabNode) -> dict[str, list[str]]:
    """What a pod may leave behind in the node namespace: links, rules, routes (all tables,
    both families), neighbours and the iptables rules."""
    def lines(*cmd: str) -> list[str]:
        return sorted(line.strip() for line in cluster.exec_in(node, list(cmd)).stdout
                      .splitlines() if line.strip() and not line.startswith("#"))
    links = sorted(line.split(":")[1].strip().split("@")[0]
                   for line in cluster.exec_in(node, ["ip", "-o", "link"]).stdout.splitlines())
    return {"links": links, "rules": lines("ip", "rule"),
            "routes": lines("ip", "-4", "route", "show", "table", "all"),
            "routes6": lines("ip", "-6", "route", "show", "table", "all"),
            "neigh": lines("ip", "neigh", "show", "nud", "permanent"),
            "iptables": [r for r in lines("iptables-save") if not r.startswith(":")]}


def wait_pool_warm(cluster: Cluster, node: LabNode) -> None:
    """The warm pool holds its free addresses again and nothing cools."""
    def warm() -> bool:
        pool = cluster.agent_get(node, "/v1/pool")[1]
        return pool["available"] >= pool["targets"]["warm_ips"] and pool["cooling"] == 0
    assert wait_until(warm, 15.0), cluster.agent_get(node, "/v1/pool")


def libcni(cluster: Cluster, pod: Pod, command: str, *, conflist: str | None = None,
           cap_args: dict | None = None, netns_path: str | None = None
           ) -> subprocess.CompletedProcess:
    """``libcni-client COMMAND`` for ``pod`` as the runtime on its node would run it."""
    node = pod.node
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "CNI_PATH": f"{cluster.cni_bin_dir}:{REFERENCE_PLUGINS}",
           "LIBCNI_CACHE_DIR": str(node.workdir / "cni-cache")}
    if cap_args is not None:
        env["LIBCNI_CAP_ARGS"] = json.dumps(cap_args)
    args = (f"K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id}")
    return subprocess.run(
        ["ip", "netns", "exec", node.netns, cluster.libcni_client, command,
         conflist or cluster.conflist_for(node), netns_path or pod.netns_path,
         pod.container_id, pod.ifname, args],
        capture_output=True, text=True, env=env, timeout=60, check=False)


def plugin_conf(cluster: Cluster, node: LabNode, **extra: object) -> dict:
    """The netconf a 1.1.0 runtime passes to the first plugin of the node's conflist."""
    with open(cluster.conflist_for(node)) as f:
        conflist = json.load(f)
    return {"cniVersion": "1.1.0", "name": conflist["name"], **conflist["plugins"][0], **extra}


def exec_plugin(cluster: Cluster, node: LabNode, command: str, conf: dict
                ) -> subprocess.CompletedProcess:
    """Exec the plugin on the node as the spec describes: CNI_* env and netconf on stdin."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
           "CNI_PATH": f"{cluster.cni_bin_dir}:{REFERENCE_PLUGINS}"}
    return subprocess.run(["ip", "netns", "exec", node.netns,
                           os.path.join(cluster.cni_bin_dir, "underlay")],
                          input=json.dumps(conf), env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def host_veth(pod: Pod) -> str:
    return pod.result["interfaces"][0]["name"]


def names_pod(line: str, ip: str, links: tuple[str, ...]) -> bool:
    """The line mentions the pod's address (as a whole address) or one of its links."""
    return bool(re.search(rf"(?<![\d.]){re.escape(ip)}(?![\d])", line)) or \
        any(re.search(rf"\b{re.escape(link)}\b", line) for link in links)


def rules_for(cluster: Cluster, node: LabNode, ip: str) -> list[str]:
    return [r for r in node_state(cluster, node)["rules"] if f" {ip} " in f"{r} "]


# -- tests -----------------------------------------------------------------------------------
def test_packets_same_node_to_node_and_out_through_the_eni_that_owns_the_ip(
        cluster: Cluster, pods: list[Pod]) -> None:
    node0, node1 = cluster.nodes
    pods.extend(cluster.add_pod(node0, f"a{i}") for i in range(4))
    b = cluster.add_pod(node1, "b")
    pods.append(b)
    eni_of = {p["ip"]: p["eni"] for p in pods_of(cluster, node0).values()}
    on_primary = next(p for p in pods[:4] if eni_of[p.ip] == node0.primary_eni_id)
    on_secondary = next(p for p in pods[:4] if eni_of[p.ip] != node0.primary_eni_id)

    assert reachable(cluster, on_primary, on_secondary.ip)  # pod to pod, same node
    assert reachable(cluster, on_secondary, on_primary.ip)
    assert reachable(cluster, on_secondary, node0.primary_ip)  # pod to its node
    assert reachable(cluster, node0, on_secondary.ip)  # and back
    assert reachable(cluster, on_primary, b.ip) and reachable(cluster, on_secondary, b.ip)

    for pod, other in ((on_primary, on_secondary), (on_secondary, on_primary)):
        owner, not_owner = eni_of[pod.ip], eni_of[other.ip]
        before = router_rx(cluster, owner), router_rx(cluster, not_owner)
        assert ping(cluster, pod, b.ip, PING_COUNT)
        grown = router_rx(cluster, owner) - before[0], router_rx(cluster, not_owner) - before[1]
        # every request left node 0 on the ENI that holds the pod's address, none on the other
        assert grown[0] >= PING_COUNT and grown[1] < PING_COUNT // 2, (pod.ip, owner, grown)


def test_snat_applies_to_off_vpc_destinations_only(cluster: Cluster, pods: list[Pod]) -> None:
    node0, node1 = cluster.nodes
    wait_pool_warm(cluster, node0)  # nothing cools: the primary ENI's addresses go first
    pods.extend(cluster.add_pod(node0, f"s{i}") for i in range(4))
    b = cluster.add_pod(node1, "sb")
    pods.append(b)
    eni_of = {p["ip"]: p["eni"] for p in pods_of(cluster, node0).values()}
    enis = {eni_of[p.ip] for p in pods[:4]}
    assert node0.primary_eni_id in enis and len(enis) >= 2  # on the primary and another
    for pod in pods[:4]:
        # the outside host sees the node's primary IP, also for a pod of a secondary ENI
        # (its replies must come back through the primary ENI to be un-NATed)
        assert cluster.source_seen_outside(pod) == node0.primary_ip, pod
        # a pod on another node sees the pod's own address
        assert probe_source_outside(b.netns, pod.netns, b.ip, 8081, 10.0) == pod.ip
    assert probe_source_outside(pods[0].netns, b.netns, pods[0].ip, 8082, 10.0) == b.ip


def link_mac(netns: str, link: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show", link],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return json.loads(out)[0]["address"]


def test_the_add_result_names_both_veth_ends_with_their_macs(cluster: Cluster,
                                                            pods: list[Pod]) -> None:
    """The result lists the host end (no sandbox) and the pod's interface (its sandbox),
    each with the MAC the kernel shows for it, and the address points at the pod's."""
    node0 = cluster.nodes[0]
    pod = cluster.add_pod(node0, "macs")
    pods.append(pod)
    host, inside = pod.result["interfaces"]
    assert "sandbox" not in host and host["mac"] == link_mac(node0.netns, host["name"])
    assert inside["name"] == pod.ifname and inside["sandbox"] == pod.netns_path
    assert inside["mac"] == link_mac(pod.netns, pod.ifname)
    assert pod.result["ips"][0]["interface"] == 1


def test_add_again_through_libcni_answers_the_same_and_keeps_the_pod(cluster: Cluster,
                                                                   pods: list[Pod]) -> None:
    """libcni ADD of a pod that is already wired: the same result, the same single
    allocation, the pod's interface untouched and its packets flowing."""
    node0 = cluster.nodes[0]
    pod = cluster.add_pod(node0, "again")
    pods.append(pod)
    before = link_mac(pod.netns, pod.ifname), pods_of(cluster, node0)[pod.container_id]
    again = libcni(cluster, pod, "add")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout) == pod.result
    assert (link_mac(pod.netns, pod.ifname), pods_of(cluster, node0)[pod.container_id]) \
        == before
    assert reachable(cluster, pod, node0.primary_ip)


def test_del_leaves_nothing_behind_and_a_second_del_succeeds(cluster: Cluster,
                                                             pods: list[Pod]) -> None:
    node1 = cluster.nodes[1]
    wait_pool_warm(cluster, node1)
    before, allocations = node_state(cluster, node1), pods_of(cluster, node1)
    pod = cluster.add_pod(node1, "d")
    pods.append(pod)
    during = node_state(cluster, node1)
    assert host_veth(pod) in during["links"]
    assert rules_for(cluster, node1, pod.ip) == sorted(
        [f"1536:\tfrom {pod.ip} lookup 1", f"512:\tfrom all to {pod.ip} lookup main"])
    assert any(r.startswith(f"{pod.ip} dev {host_veth(pod)}") for r in during["routes"])
    assert pod.container_id in pods_of(cluster, node1)

    for attempt in ("first", "second"):
        proc = libcni(cluster, pod, "del")
        assert proc.returncode == 0, (attempt, proc.stdout, proc.stderr)
    assert not ping(cluster, node1, pod.ip)  # cut at once; the host veth goes a moment later
    cluster.wait_reaped(node1)
    assert node_state(cluster, node1) == before
    assert pods_of(cluster, node1) == allocations
    in_pod = cluster.exec_in(pod, ["ip", "-o", "link"]).stdout.splitlines()
    assert [line.split(":")[1].strip() for line in in_pod] == ["lo"]  # eth0 went with it
    cluster.del_pod(pod)  # the sandbox goes; a DEL once its netns is gone succeeds too
    assert libcni(cluster, pod, "del").returncode == 0
    assert node_state(cluster, node1) == before


def test_a_pod_whose_netns_went_while_the_agent_was_down_is_released_at_restart(
        cluster: Cluster, pods: list[Pod]) -> None:
    """The kernel side of reconcile: the DEL never reached the killed agent, the sandbox's
    netns is gone; the restarted agent releases the address and unwires the host side."""
    node1 = cluster.nodes[1]
    wait_pool_warm(cluster, node1)
    before, allocations = node_state(cluster, node1), pods_of(cluster, node1)
    pod = cluster.add_pod(node1, "o")
    pods.append(pod)
    assert host_veth(pod) in node_state(cluster, node1)["links"]
    config = dict(cluster.agents[node1.name].config)
    cluster.stop_agent(node1, kill=True)
    try:
        subprocess.run(["ip", "netns", "delete", pod.netns], check=True, timeout=30)
    finally:
        cluster.run_agent(node1, {k: config[k] for k in NODE1})
    assert wait_until(lambda: pod.container_id not in pods_of(cluster, node1), 10.0)
    assert pods_of(cluster, node1) == allocations
    cluster.wait_reaped(node1)
    assert node_state(cluster, node1) == before


def test_gc_releases_exactly_the_attachments_not_listed(cluster: Cluster,
                                                        pods: list[Pod]) -> None:
    node0 = cluster.nodes[0]
    wait_pool_warm(cluster, node0)
    keep, *gone = [cluster.add_pod(node0, f"g{i}") for i in range(3)]
    pods.extend([keep, *gone])
    assert {keep.container_id, *(p.container_id for p in gone)} <= set(pods_of(cluster, node0))
    valid = [{"containerID": keep.container_id, "ifname": keep.ifname}]
    proc = exec_plugin(cluster, node0, "GC",
                       plugin_conf(cluster, node0, **{"cni.dev/valid-attachments": valid}))
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr

    assert set(pods_of(cluster, node0)) == {keep.container_id}
    state = node_state(cluster, node0)
    for pod in gone:  # their host side is gone: veth, host route, rules
        assert host_veth(pod) not in state["links"]
        assert not any(r.startswith(f"{pod.ip} ") for r in state["routes"])
        assert rules_for(cluster, node0, pod.ip) == []
    assert host_veth(keep) in state["links"] and len(rules_for(cluster, node0, keep.ip)) == 2
    assert libcni(cluster, keep, "check").returncode == 0
    assert reachable(cluster, keep, node0.primary_ip)
    # a runtime still DELs the collected pods later: that succeeds
    for pod in gone:
        proc = libcni(cluster, pod, "del")
        assert proc.returncode == 0, proc.stdout


def test_check_names_a_rule_removed_by_hand(cluster: Cluster, pods: list[Pod]) -> None:
    node1 = cluster.nodes[1]
    pod = cluster.add_pod(node1, "c")
    pods.append(pod)
    proc = libcni(cluster, pod, "check")
    assert proc.returncode == 0, proc.stdout
    cluster.exec_in(node1, ["ip", "rule", "del", "from", pod.ip, "priority", "1536"])
    proc = libcni(cluster, pod, "check")
    assert proc.returncode != 0
    error = json.loads(proc.stdout)
    assert error["code"] >= 100, error
    assert pod.ip in error["msg"] and "1536" in error["msg"] and "missing" in error["msg"], error
    cluster.del_pod(pod)  # DEL tolerates the missing rule and removes the other one
    assert rules_for(cluster, node1, pod.ip) == []


def test_status_is_0_with_warm_ips_and_50_without_the_agent(cluster: Cluster) -> None:
    node1 = cluster.nodes[1]
    wait_pool_warm(cluster, node1)
    proc = exec_plugin(cluster, node1, "STATUS", plugin_conf(cluster, node1))
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    config = dict(cluster.agents[node1.name].config)
    cluster.stop_agent(node1)
    try:
        proc = exec_plugin(cluster, node1, "STATUS", plugin_conf(cluster, node1))
        assert proc.returncode != 0
        error = json.loads(proc.stdout)
        assert error["code"] == 50 and "agent" in error["msg"], error
    finally:
        cluster.run_agent(node1, {k: config[k] for k in NODE1})


def test_chain_with_portmap_and_bandwidth_maps_a_port_and_del_removes_their_rules(
        cluster: Cluster) -> None:
    """``underlay`` + ``portmap`` + ``bandwidth`` (the installer's conflist) through libcni
    with the capability arguments kubelet sends. CHECK is not run on this chain: portmap
    1.1.1 checks ip6tables rules it never made for an IPv4-only pod (upstream issue
    containernetworking/plugins#819)."""
    node0, node1 = cluster.nodes
    conflist = node0.workdir / "chain.conflist"
    conflist.write_text(render_conflist_json(ConflistOptions(socket=node0.socket_path)))
    cap_args = {"portMappings": [{"hostPort": HOST_PORT, "containerPort": 80,
                                  "protocol": "tcp"}],
                "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 1_000_000,
                              "egressRate": 8_000_000, "egressBurst": 1_000_000}}
    before = node_state(cluster, node0)
    netns = f"{cluster.prefix}-pchain"
    cluster.record.add_netns(netns)  # the cluster's stop removes it whatever happens
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=30)
    pod = Pod("chain", "default", node0, f"{cluster.prefix}-chain", netns, "eth0", "", {})
    try:
        proc = libcni(cluster, pod, "add", conflist=str(conflist), cap_args=cap_args)
        assert proc.returncode == 0, proc.stdout
        result = json.loads(proc.stdout)
        ip = result["ips"][0]["address"].split("/")[0]
        veth = result["interfaces"][0]["name"]
        qdiscs = cluster.exec_in(node0, ["tc", "qdisc", "show"]).stdout
        # bandwidth: ingress shaping on the host veth, egress on its ifb device
        assert f"qdisc tbf 1: dev {veth} root" in qdiscs and "rate 8Mbit" in qdiscs, qdiscs
        ifb = result["interfaces"][-1]["name"]
        assert ifb.startswith("bwp") and f"qdisc tbf 1: dev {ifb} root" in qdiscs, qdiscs
        dnat = [r for r in node_state(cluster, node0)["iptables"]
                if f"--to-destination {ip}:80" in r]
        assert len(dnat) == 1, dnat

        for client in (node1, node0):
            server = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-c", POD_SERVER, "80",
                 "chain", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, text=True)
            try:
                assert server.stdout.readline().strip() == "ready", server.stderr.read()
                answer = cluster.exec_in(client, [sys.executable, "-c", CLIENT,
                                                  node0.primary_ip, str(HOST_PORT)]
                                         ).stdout.strip()
                # the pod answers and sees the connecting node's own address
                assert answer == f"chain saw {client.primary_ip}", (client.name, answer)
            finally:
                server.kill()
                server.wait(timeout=10)
    finally:
        proc = libcni(cluster, pod, "del", conflist=str(conflist), cap_args=cap_args)
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=30)
    assert proc.returncode == 0, proc.stdout
    after = node_state(cluster, node0)
    # portmap keeps only its shared, container-independent chains; nothing names the pod
    left = set(after["iptables"]) - set(before["iptables"])
    assert all("CNI-HOSTPORT" in r and "CNI-DN-" not in r for r in left), left
    assert not any(ip in r or pod.container_id in r for r in after["iptables"]), after
    # node 0's pool may attach or drop an ENI meanwhile (its link and table come and go on
    # their own), so what is compared is everything that names the pod
    traces = {kind: [line for line in lines if names_pod(line, ip, (veth, ifb))]
              for kind, lines in after.items()}
    assert traces == {kind: [] for kind in after}, traces
    assert ip not in json.dumps(pods_of(cluster, node0))


def test_a_second_attachment_of_a_pod_works_beside_the_first(cluster: Cluster,
                                                             pods: list[Pod]) -> None:
    """As a runtime with the kubelet's CNI_ARGS would: ADD eth0, then ADD net1 for the same
    container and netns. Both get an address, a host veth and rules of their own; packets
    go in and out of each; DEL of net1 leaves eth0 intact."""
    node1 = cluster.nodes[1]
    wait_pool_warm(cluster, node1)
    first = cluster.add_pod(node1, "multi")
    pods.append(first)
    second = dataclasses.replace(first, ifname="net1")
    add = libcni(cluster, second, "add")
    assert add.returncode == 0, add.stdout + add.stderr
    second = dataclasses.replace(second, ip=json.loads(add.stdout)["ips"][0]["address"]
                                 .split("/")[0])
    held = {(p["container_id"], p["ifname"]): p["ip"] for p in
            cluster.agent_get(node1, "/v1/pods")[1] if p["container_id"] == first.container_id}
    assert held == {(first.container_id, "eth0"): first.ip,
                    (first.container_id, "net1"): second.ip}
    links = [line.split(":")[1].strip().split("@")[0] for line in
             cluster.exec_in(first, ["ip", "-o", "link"]).stdout.splitlines()]
    assert sorted(links) == ["eth0", "lo", "net1"]
    hosts = {pod.ifname: json.loads(out)["interfaces"][0]["name"] for pod, out in
             ((first, json.dumps(first.result)), (second, add.stdout))}
    assert hosts["eth0"] != hosts["net1"]
    assert len(rules_for(cluster, node1, first.ip)) == 2
    assert len(rules_for(cluster, node1, second.ip)) == 2
    for pod in (first, second):
        assert reachable(cluster, node1, pod.ip)  # into each interface
        assert cluster.exec_in(first, ["busybox", "ping", "-c", "1", "-W", "2", "-I",
                                       pod.ifname, node1.primary_ip],
                               check=False).returncode == 0  # out of each
        assert libcni(cluster, pod, "check").returncode == 0
    assert libcni(cluster, second, "del").returncode == 0
    assert libcni(cluster, first, "check").returncode == 0
    assert reachable(cluster, first, node1.primary_ip)
    assert second.ip not in json.dumps(pods_of(cluster, node1))
