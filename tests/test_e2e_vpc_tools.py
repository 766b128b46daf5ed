"""Shared checks for the end-to-end VPC tests (no tests here): ping and a TCP echo between
pod namespaces, router-link counters, what the cloud and the agents say they hold, and the
churn tests' parallel batches, duplicate watch and leftover checks."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ipam_daemon.store import prefix_addresses
from lab import cleanup
from lab.ec2.addresses import usable_range
from lab.fabric_plan import name_router_link
from lab.harness import Cluster, LabNode, Pod
from lab.node_io import wait_until

PYTHON = sys.executable
TCP_PORT = 7001
THREADS = 10  # parallel libcni calls per batch in the churn tests
_EXCHANGE_TIMEOUT = 20.0

# One-shot echo server: binds the pod's address, echoes one connection until EOF.
_ECHO_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
server.settimeout(float(sys.argv[3]))
print("ready", flush=True)
conn, peer = server.accept()
conn.settimeout(float(sys.argv[3]))
while True:
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
conn.close()
print(peer[0], flush=True)
"""

# Client: sends N pseudo-random bytes, half-closes, reads the echo back, prints a verdict.
_ECHO_CLIENT = """
import hashlib, random, socket, sys
payload = random.Random(7).randbytes(int(sys.argv[3]))
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
sock.sendall(payload)
sock.shutdown(socket.SHUT_WR)
got = bytearray()
while True:
    data = sock.recv(65536)
    if not data:
        break
    got += data
print("match" if bytes(got) == payload else f"mismatch {len(got)} of {len(payload)}")
"""


def ping(cluster: Cluster, source: LabNode | Pod, address: str) -> bool:
    proc = cluster.exec_in(source, ["busybox", "ping", "-c", "1", "-W", "2", address],
                           check=False)
    return proc.returncode == 0


def reachable(cluster: Cluster, source: LabNode | Pod, address: str) -> bool:
    """A positive check, retried for a few seconds so a loaded machine cannot fail it."""
    return wait_until(lambda: ping(cluster, source, address), 5.0, step=0.2)


def unreachable_from(cluster: Cluster, source: LabNode | Pod, addresses: Iterable[str]) -> list[str]:
    """Ping every address once from one namespace (one shell); the ones that did not answer.
    Each miss is retried once more so a loaded machine cannot fail it."""
    script = ("for ip in \"$@\"; do busybox ping -c 1 -W 2 \"$ip\" >/dev/null 2>&1 || "
              "busybox ping -c 1 -W 2 \"$ip\" >/dev/null 2>&1 || echo \"$ip\"; done")
    addresses = list(addresses)
    proc = cluster.exec_in(source, ["sh", "-c", script, "ping-all", *addresses],
                           timeout=30 + 5 * len(addresses))
    return proc.stdout.split()


def tcp_exchange(cluster: Cluster, client: Pod, server: Pod, size: int = 256 * 1024) -> str:
    """``size`` bytes from ``client`` to an echo server in ``server`` and back; returns the
    peer address the server saw (it must be the client's own IP: no SNAT between pods)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", server.netns, PYTHON, "-c", _ECHO_SERVER, server.ip,
         str(TCP_PORT), str(_EXCHANGE_TIMEOUT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        if proc.stdout.readline().strip() != "ready":
            raise AssertionError(f"echo server in {server.name} failed: {proc.stderr.read()}")
        result = cluster.exec_in(client, [PYTHON, "-c", _ECHO_CLIENT, server.ip, str(TCP_PORT),
                                          str(size), str(_EXCHANGE_TIMEOUT)],
                                 timeout=_EXCHANGE_TIMEOUT + 10)
        assert result.stdout.strip() == "match", (
            f"TCP {client.name} -> {server.name}: {result.stdout} {result.stderr}")
        seen = proc.stdout.readline().strip()
        proc.wait(timeout=_EXCHANGE_TIMEOUT)
        return seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def router_link_bytes(cluster: Cluster, eni_id: str) -> dict[str, int]:
    """Bytes the VPC router received from (rx) and sent to (tx) this ENI's link."""
    assert cluster.fabric is not None
    out = cluster.exec_in(cluster.fabric.router,
                          ["ip", "-j", "-s", "link", "show", name_router_link(eni_id)]).stdout
    stats = json.loads(out)[0]["stats64"]
    return {"rx": stats["rx"]["bytes"], "tx": stats["tx"]["bytes"],
            "rx_packets": stats["rx"]["packets"]}


def router_route_dev(cluster: Cluster, address: str) -> str | None:
    """The router link that a /32 route for ``address`` points to, if any."""
    assert cluster.fabric is not None
    out = cluster.exec_in(cluster.fabric.router,
                          ["ip", "-j", "route", "show", f"{address}/32"]).stdout
    routes = json.loads(out) if out.strip() else []
    return routes[0]["dev"] if routes else None


def agent_pods(cluster: Cluster, node: LabNode) -> list[dict[str, Any]]:
    status, body = cluster.agent_get(node, "/v1/pods")
    assert status == 200, body
    return body


def agent_pool(cluster: Cluster, node: LabNode) -> dict[str, Any]:
    status, body = cluster.agent_get(node, "/v1/pool")
    assert status == 200, body
    return body


def eni_of_pod(cluster: Cluster, pod: Pod) -> str:
    return next(p["eni"] for p in agent_pods(cluster, pod.node) if p["ip"] == pod.ip)


def held_addresses(eni: dict[str, Any]) -> list[str]:
    """What one ENI of the cloud's snapshot holds: its own and secondary addresses, and
    each address inside its delegated /28 prefixes."""
    return list(eni["ips"]) + [ip for prefix in eni["prefixes"] for ip in prefix_addresses(prefix)]


def cloud_holders(cluster: Cluster) -> dict[str, list[tuple[str, str | None]]]:
    """Every IP in the cloud, an address inside a prefix included -> [(ENI id, instance
    id)] (more than one entry is a bug)."""
    assert cluster.cloud is not None
    holders: dict[str, list[tuple[str, str | None]]] = {}
    for eni in cluster.cloud.snapshot()["enis"]:
        for ip in held_addresses(eni):
            holders.setdefault(ip, []).append((eni["id"], eni["instance_id"]))
    return holders


def duplicates(values: Sequence[str]) -> list[str]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def free_in_subnet(cluster: Cluster, subnet_id: str) -> list[str]:
    """Usable addresses of the subnet no ENI or instance holds (the cloud's view)."""
    assert cluster.cloud is not None
    snapshot = cluster.cloud.snapshot()
    cidr = next(s["cidr"] for s in snapshot["subnets"] if s["id"] == subnet_id)
    used = {ip for eni in snapshot["enis"] if eni["subnet_id"] == subnet_id
            for ip in held_addresses(eni)}
    used |= {i["private_ip"] for i in snapshot["instances"]
             if i["subnet_id"] == subnet_id and i["state"] != "terminated"}
    return [str(ipaddress.IPv4Address(a)) for a in usable_range(cidr)
            if str(ipaddress.IPv4Address(a)) not in used]


def node_leftovers(cluster: Cluster, node: LabNode) -> dict[str, list[str]]:
    """Pod traces on a node: host-side pod links, per-pod rules, /32 pod routes."""
    links = json.loads(cluster.exec_in(node, ["ip", "-j", "link", "show"]).stdout)
    pod_links = [link["ifname"] for link in links
                 if link["ifname"] != "lo" and not link["ifname"].startswith("eth")]
    rules = cluster.exec_in(node, ["ip", "rule", "show"]).stdout.splitlines()
    pod_rules = [r.strip() for r in rules if " to " in r or ("from " in r and "from all" not in r)]
    routes = cluster.exec_in(node, ["ip", "route", "show", "table", "main"]).stdout.splitlines()
    pod_routes = [r for r in routes if "proto static" in r and "scope link" in r
                  and not r.startswith("default")]
    return {k: v for k, v in (("links", pod_links), ("rules", pod_rules),
                              ("routes", pod_routes)) if v}


def node_state(cluster: Cluster, node: LabNode) -> dict[str, set[str]]:
    """A node's links (name, kind), rules, routes of every table and iptables rules: what
    pods and secondary ENIs add and must take away again."""
    links = {f"{link['ifname']} {link.get('link_type')}" for link in
             json.loads(cluster.exec_in(node, ["ip", "-j", "link", "show"]).stdout)}
    rules = set(cluster.exec_in(node, ["ip", "rule", "show"]).stdout.splitlines())
    routes = {r for r in cluster.exec_in(node, ["ip", "-4", "route", "show", "table", "all"])
              .stdout.splitlines()}
    iptables = {f"{table} {rule}" for table in ("filter", "nat", "mangle") for rule in
                cluster.exec_in(node, ["iptables", "-w", "5", "-t", table, "-S"])
                .stdout.splitlines()}
    return {"links": links, "rules": rules, "routes": routes, "iptables": iptables}


def state_diff(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, Any]:
    return {k: {"added": sorted(after[k] - before[k]), "removed": sorted(before[k] - after[k])}
            for k in before if after[k] != before[k]}


def run_batches(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``work`` over ``items`` in batches of THREADS parallel calls; errors propagate."""
    results = []
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for start in range(0, len(items), THREADS):
            results += list(pool.map(work, items[start:start + THREADS]))
    return results


def check_no_duplicates(cluster: Cluster, live: Sequence[Pod]) -> None:
    """The agents list exactly the live pods' IPs, none twice; the cloud holds no address
    on two ENIs; each pod's address is held by an ENI of the pod's own node."""
    listed = [p["ip"] for node in cluster.nodes for p in agent_pods(cluster, node)]
    assert not duplicates(listed), f"agents hand out an IP twice: {duplicates(listed)}"
    assert sorted(listed) == sorted(p.ip for p in live)
    holders = cloud_holders(cluster)
    twice = {ip: h for ip, h in holders.items() if len(h) > 1}
    assert not twice, f"the cloud has IPs on two ENIs: {twice}"
    for pod in live:  # each pod's address is the cloud's, on an ENI of the pod's node
        assert holders[pod.ip][0][1] == pod.node.instance_id, (pod.name, holders.get(pod.ip))


class DuplicateWatch:
    """Polls every agent's /v1/pods and the cloud while pods churn: an IP never appears on
    two pods, nor on two ENIs. Polls back to back; stopped by an event."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.polls = 0
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dup-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            listed = [p["ip"] for node in self.cluster.nodes
                      for p in agent_pods(self.cluster, node)]
            twice = {ip: h for ip, h in cloud_holders(self.cluster).items() if len(h) > 1}
            if duplicates(listed) or twice:
                self.seen.append(f"agents {duplicates(listed)} cloud {twice}")
            self.polls += 1
            self._stop.wait(0.05)

    def __enter__(self) -> DuplicateWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def check_no_pod_left(cluster: Cluster) -> None:
    """After the last DEL: no allocation in any agent, no pod link, rule or route on any
    node, no pod namespace of the run. Each DEL hands its host veth to the agent's reaper
    and returns: the reaper is given its moment (a burst of DELs takes it longer) and must
    have deleted them all."""
    for node in cluster.nodes:
        cluster.wait_reaped(node)
        assert agent_pods(cluster, node) == [], node.name
        assert node_leftovers(cluster, node) == {}, node.name
    pod_netns = [n for n in os.listdir(cleanup.NETNS_DIR) if n.startswith(f"{cluster.prefix}-p")]
    assert pod_netns == []


def check_nodes_restored(cluster: Cluster, before: dict[str, dict[str, set[str]]],
                         timeout: float = 30.0) -> None:
    """Every link, rule, route (all tables) and iptables rule that pods and secondary ENIs
    added is gone again: each node is as ``before`` (its node_state before the first pod).
    Waited for: a detached ENI's link goes once the fabric has followed the cloud."""
    def restored() -> bool:
        return all(state_diff(before[n.name], node_state(cluster, n)) == {}
                   for n in cluster.nodes)

    wait_until(restored, timeout, step=0.5)
    for node in cluster.nodes:
        assert state_diff(before[node.name], node_state(cluster, node)) == {}, node.name


def check_agents_match_cloud(cluster: Cluster) -> dict[str, set[str]]:
    """Each agent's ENIs hold exactly the addresses the cloud says they hold (the ENI's own,
    secondary ones, those inside its prefixes); returns them by ENI id."""
    holders = cloud_holders(cluster)
    held: dict[str, set[str]] = {}
    for node in cluster.nodes:
        status, enis = cluster.agent_get(node, "/v1/enis")
        assert status == 200
        for eni in enis:
            agent_ips = {a["ip"] for a in eni["addresses"]} | {eni["primary_ip"]}
            cloud_ips = {ip for ip, h in holders.items() if h[0][0] == eni["id"]}
            assert agent_ips == cloud_ips, (node.name, eni["id"])
            held[eni["id"]] = agent_ips
    return held
