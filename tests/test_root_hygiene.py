"""The machine's root network namespace is never a node: a cluster run (fabric, agents, pods
on primary and secondary ENIs, cross-node traffic) adds no link, address, route, rule or
iptables rule there, neither while it runs nor after it stops. (tests/conftest.py guards the
whole suite; this names the harness explicitly and also looks mid-run.)

Namespaces are not compared: other test runs on the machine may create their own."""
from __future__ import annotations

import json
import secrets
import subprocess

from lab.harness import Cluster
from test_e2e_vpc_tools import reachable

_TIMEOUT = 10


def snapshot_root(netns: str | None = None) -> dict[str, set[str]]:
    """What a node would change, in a form that ignores counters and timers (``netns``:
    another namespace, for the test of this check itself)."""
    def _run(*cmd: str) -> str:
        prefix = ("ip", "netns", "exec", netns) if netns else ()
        return subprocess.run(prefix + cmd, capture_output=True, text=True, check=True,
                              timeout=_TIMEOUT).stdout

    links = {f"{l['ifname']} {l.get('link_type')} {l.get('address', '')} "
             f"{l.get('master', '')} mtu {l.get('mtu')}"
             for l in json.loads(_run("ip", "-j", "link", "show"))}
    addresses = {f"{a['ifname']} {i['local']}/{i['prefixlen']}"
                 for a in json.loads(_run("ip", "-j", "addr", "show"))
                 for i in a.get("addr_info", [])}
    routes = set()
    for family in ("-4", "-6"):
        routes |= {f"{family} {line.strip()}"
                   for line in _run("ip", family, "route", "show", "table", "all").splitlines()}
    rules = {f"{family} {line.strip()}" for family in ("-4", "-6")
             for line in _run("ip", family, "rule", "show").splitlines()}
    iptables = {f"{table} {line}" for table in ("filter", "nat", "mangle")
                for line in _run("iptables", "-w", "5", "-t", table, "-S").splitlines()}
    return {"links": links, "addresses": addresses, "routes": routes, "rules": rules,
            "iptables": iptables}


def added_since(before: dict[str, set[str]], netns: str | None = None) -> dict[str, list[str]]:
    after = snapshot_root(netns)
    return {k: sorted(after[k] - before[k]) for k in before if after[k] - before[k]}


def test_a_cluster_run_leaves_the_root_namespace_as_it_found_it() -> None:
    before = snapshot_root()
    with Cluster(nodes=2, instance_type="t3.small") as cluster:
        for node in cluster.nodes:
            cluster.run_agent(node, {"warm_ips": 1, "batch_size": 1,
                                     "vpc_cidrs": ["10.0.0.0/16"]})
        pods = [cluster.add_pod(0, f"h{i}") for i in range(4)]  # the fourth: secondary ENI
        other = cluster.add_pod(1, "o")
        assert all(reachable(cluster, pod, other.ip) for pod in pods)
        assert added_since(before) == {}, "the running cluster changed the root namespace"
    assert added_since(before) == {}, "the stopped cluster left things in the root namespace"


def test_the_snapshot_sees_each_kind_of_change() -> None:
    """The check itself, in a scratch namespace (never in the root one)."""
    netns = f"hyg-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=_TIMEOUT)
    try:
        before = snapshot_root(netns)
        for cmd in (["ip", "link", "add", "ha", "type", "veth", "peer", "name", "hb"],
                    ["ip", "link", "set", "ha", "up"],
                    ["ip", "addr", "add", "10.250.0.1/32", "dev", "ha"],
                    ["ip", "route", "add", "10.250.0.2/32", "dev", "ha"],
                    ["ip", "rule", "add", "from", "10.250.0.1", "lookup", "7"],
                    ["iptables", "-w", "5", "-t", "nat", "-N", "HYGIENE"]):
            subprocess.run(["ip", "netns", "exec", netns, *cmd], check=True, timeout=_TIMEOUT)
        added = added_since(before, netns)
        assert set(added) == {"links", "addresses", "routes", "rules", "iptables"}, added
        assert any("10.250.0.2" in r for r in added["routes"])
        assert added["iptables"] == ["nat -N HYGIENE"]
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=_TIMEOUT)
