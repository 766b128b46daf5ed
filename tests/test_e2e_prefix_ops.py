"""Day-two operations on prefix-delegation nodes, end to end in the emulated VPC (real agent
processes, pods made by libcni, real packets through the VPC router, which routes each
delegated /28 whole to the ENI holding it):

- an agent SIGKILLed with pods running on its prefixes and started again: the pods keep
  their addresses and their packets, the new agent lists them, new pods come from the /28s
  already held (no AssignPrivateIpAddresses, per the emulator's call counts), no address
  is handed out twice, and once every pod is gone the node keeps only what the warm
  target needs;
- a node switched secondary addresses -> prefixes -> secondary addresses by its operator
  (the agent's configuration edited, the agent restarted) with pods running: each pod keeps
  its address and its packets, new pods come in the new mode's unit, and once the old
  mode's pods are gone its addresses (or /28s) go back to the cloud;
- a secondary ENI whose /28s all fall idle after churn is detached and deleted (the cloud
  no longer lists it, the router no longer routes its prefixes, the node loses its link)
  once the primary ENI could have held the recent peak (``eni_min_age`` 2 s here).
"""
from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from lab.ec2.settings import EmulatorSettings
from lab.harness import Cluster, LabNode, Pod
from lab.node_io import wait_until
from test_e2e_prefixes import PREFIX_AGENT, VPC_CIDR, settled_prefix_count
from test_e2e_vpc_tools import (
    agent_pods,
    agent_pool,
    check_agents_match_cloud,
    check_no_duplicates,
    check_no_pod_left,
    run_batches,
    unreachable_from,
)

pytestmark = pytest.mark.timeout(300)

SECONDARY_AGENT = {"prefix_delegation": False, "warm_ips": 2, "batch_size": 4,
                   "vpc_cidrs": [VPC_CIDR]}
ASSIGN = "AssignPrivateIpAddresses"


def node_enis(cluster: Cluster, node: LabNode) -> list[dict[str, Any]]:
    """The node's ENIs as the cloud holds them (DescribeNetworkInterfaces' data), by device
    index: each with ``ips`` (its own first, then secondary ones) and ``prefixes``."""
    assert cluster.cloud is not None
    enis = [e for e in cluster.cloud.snapshot()["enis"] if e["instance_id"] == node.instance_id]
    return sorted(enis, key=lambda e: e["device_index"] or 0)


def node_prefixes(cluster: Cluster, node: LabNode) -> set[str]:
    return {p for eni in node_enis(cluster, node) for p in eni["prefixes"]}


def node_secondary_ips(cluster: Cluster, node: LabNode) -> set[str]:
    return {ip for eni in node_enis(cluster, node) for ip in eni["ips"][1:]}


def inside(address: str, prefixes: Iterable[str]) -> bool:
    return any(ipaddress.IPv4Address(address) in ipaddress.IPv4Network(p) for p in prefixes)


def assign_calls(cluster: Cluster) -> int:
    assert cluster.cloud is not None
    return cluster.cloud.control.call_counts().get(ASSIGN, 0)


def listed(cluster: Cluster, node: LabNode) -> dict[str, str]:
    """The node agent's pods: address -> pod name."""
    return {p["ip"]: p["name"] for p in agent_pods(cluster, node)}


def check_both_ways(cluster: Cluster, pods: Sequence[Pod], peer: Pod) -> None:
    """Each pod pings the peer (another node) and the peer pings each pod."""
    for pod in pods:
        assert not unreachable_from(cluster, pod, [peer.ip]), f"{pod.name} ({pod.ip}) -> peer"
    missing = unreachable_from(cluster, peer, [p.ip for p in pods])
    assert not missing, f"peer cannot reach {missing}"


def settled(cluster: Cluster, node: LabNode, quiet: float = 1.5) -> bool:
    """The node's pool is at its warm target and the cloud saw no Assign for ``quiet``
    seconds (a burst's extra /28 is asked for, or given back, within a few steps)."""
    def calm() -> bool:
        before = (assign_calls(cluster), node_prefixes(cluster, node))
        time.sleep(quiet)
        pool = agent_pool(cluster, node)
        releasing = sum(e["releasing"] for e in pool["per_eni"])
        return pool["available"] >= PREFIX_AGENT["warm_ips"] and releasing == 0 \
            and before == (assign_calls(cluster), node_prefixes(cluster, node))

    return wait_until(calm, 30.0, step=0.2)


def new_cluster(instance_type: str, rules_off: frozenset[str]) -> Cluster:
    return Cluster(nodes=2, instance_type=instance_type, vpc_cidr=VPC_CIDR,
                   subnet_cidrs=("10.0.0.0/24",),
                   settings=EmulatorSettings(rules_off=rules_off))


# ---- 1: SIGKILL and restart on a prefix node ---------------------------------------------

def test_agent_sigkilled_on_a_prefix_node_comes_back_with_its_pods_and_prefixes(
        emulator_rules_off: frozenset[str]) -> None:
    """20 pods on node 0's /28s; its agent is SIGKILLed and started again. The pods keep
    their addresses and reach the other node's pod both ways (also while no agent runs);
    the new agent lists the same pods; it asks the cloud for nothing, and new pods get
    addresses inside the /28s already held; no address is on two pods. After every pod is
    gone the node holds the /28s the policy keeps at warm 2 (one) and no more."""
    with new_cluster("m5.large", emulator_rules_off) as cluster:
        node, other = cluster.nodes
        for n in cluster.nodes:
            cluster.run_agent(n, PREFIX_AGENT)
        peer = cluster.add_pod(other, "peer")
        old = run_batches(lambda i: cluster.add_pod(node, f"old{i}"), range(20))
        assert settled(cluster, node), agent_pool(cluster, node)
        prefixes = node_prefixes(cluster, node)
        assert len(prefixes) >= 2 and all(inside(p.ip, prefixes) for p in old), prefixes
        before = listed(cluster, node)
        assert set(before) == {p.ip for p in old}
        peak = len(prefixes)

        cluster.stop_agent(node, kill=True)
        check_both_ways(cluster, old[:3], peer)  # the kernel carries them, agent or not
        # the emulator counts calls cluster-wide; node 1 sits at its target (one pod, one
        # /28) and asks for nothing, so any further Assign is the restarted agent's
        assigns = assign_calls(cluster)
        cluster.run_agent(node, PREFIX_AGENT)

        assert listed(cluster, node) == before
        check_both_ways(cluster, old, peer)
        assert settled(cluster, node), agent_pool(cluster, node)
        assert node_prefixes(cluster, node) == prefixes
        pool = agent_pool(cluster, node)
        assert (pool["mode"], pool["prefixes"], pool["assigned"]) == (
            "prefixes", len(prefixes), len(old)), pool
        # new pods, as many as fit above the warm target (and below a burst's surge)
        room = min(pool["available"] - PREFIX_AGENT["warm_ips"] - 1, 4)
        assert room >= 2, pool
        new = [cluster.add_pod(node, f"new{i}") for i in range(room)]
        assert all(inside(p.ip, prefixes) for p in new), ([p.ip for p in new], prefixes)
        assert settled(cluster, node)
        assert assign_calls(cluster) == assigns, "the restarted agent asked for addresses"
        assert node_prefixes(cluster, node) == prefixes
        check_no_duplicates(cluster, [peer, *old, *new])
        check_both_ways(cluster, new, peer)

        run_batches(cluster.del_pod, [*old, *new, peer])
        check_no_pod_left(cluster)
        expected = settled_prefix_count(peak, "m5.large")

        def given_back() -> bool:
            pool = agent_pool(cluster, node)
            return len(node_prefixes(cluster, node)) == expected and (
                pool["prefixes"], pool["assigned"], pool["cooling"], pool["enis"]) == (
                    expected, 0, 0, 1)

        assert wait_until(given_back, 30.0, step=0.5), (node_prefixes(cluster, node),
                                                        agent_pool(cluster, node))
        assert len(node_enis(cluster, node)) == 1 and node_secondary_ips(cluster, node) == set()
        check_agents_match_cloud(cluster)


# ---- 2: secondary addresses -> prefixes -> secondary addresses ---------------------------

def switch_mode(cluster: Cluster, node: LabNode, config: dict[str, Any]) -> None:
    """As an operator does: the agent's configuration edited, the agent restarted."""
    cluster.stop_agent(node)
    cluster.run_agent(node, config)


def test_a_node_switched_between_modes_keeps_its_pods_and_gives_back_the_old_unit(
        emulator_rules_off: frozenset[str]) -> None:
    """Node 0 runs 3 pods on secondary addresses; it is switched to prefixes: the pods keep
    their addresses and packets, 3 new pods get addresses inside a /28, and once the old
    pods are gone no secondary address is left on the node. Switched back: the prefix pods
    keep theirs, new pods get secondary addresses (not the /28's free ones), and once the
    prefix pods are gone no /28 is left."""
    with new_cluster("m5.large", emulator_rules_off) as cluster:
        node, other = cluster.nodes
        cluster.run_agent(node, SECONDARY_AGENT)
        cluster.run_agent(other, PREFIX_AGENT)
        peer = cluster.add_pod(other, "peer")
        singles = [cluster.add_pod(node, f"s{i}") for i in range(3)]
        assert node_prefixes(cluster, node) == set()
        assert {p.ip for p in singles} <= node_secondary_ips(cluster, node)
        check_both_ways(cluster, singles, peer)

        switch_mode(cluster, node, PREFIX_AGENT)
        assert listed(cluster, node) == {p.ip: p.name for p in singles}
        check_both_ways(cluster, singles, peer)
        prefixed = [cluster.add_pod(node, f"p{i}") for i in range(3)]
        prefixes = node_prefixes(cluster, node)
        assert prefixes and all(inside(p.ip, prefixes) for p in prefixed), (
            [p.ip for p in prefixed], prefixes)
        check_both_ways(cluster, prefixed + singles, peer)
        # the idle secondary addresses go back at once; those of running pods stay
        assert wait_until(lambda: node_secondary_ips(cluster, node)
                          == {p.ip for p in singles}, 20.0, step=0.5), (
            node_secondary_ips(cluster, node))
        for pod in singles:
            cluster.del_pod(pod)
        assert wait_until(lambda: node_secondary_ips(cluster, node) == set(), 20.0, step=0.5), (
            node_secondary_ips(cluster, node), agent_pool(cluster, node))
        check_both_ways(cluster, prefixed, peer)
        check_no_duplicates(cluster, [peer, *prefixed])

        switch_mode(cluster, node, SECONDARY_AGENT)
        assert listed(cluster, node) == {p.ip: p.name for p in prefixed}
        check_both_ways(cluster, prefixed, peer)
        pool = agent_pool(cluster, node)
        assert pool["mode"] == "secondary addresses", pool
        singles = [cluster.add_pod(node, f"t{i}") for i in range(3)]
        held = node_secondary_ips(cluster, node)
        assert all(p.ip in held and not inside(p.ip, prefixes) for p in singles), (
            [p.ip for p in singles], held, prefixes)
        check_both_ways(cluster, singles + prefixed, peer)
        for pod in prefixed:
            cluster.del_pod(pod)
        assert wait_until(lambda: node_prefixes(cluster, node) == set(), 20.0, step=0.5), (
            node_prefixes(cluster, node), agent_pool(cluster, node))
        check_both_ways(cluster, singles, peer)
        check_no_duplicates(cluster, [peer, *singles])
        run_batches(cluster.del_pod, [*singles, peer])
        check_no_pod_left(cluster)
        check_agents_match_cloud(cluster)


# ---- 3: an idle secondary ENI goes --------------------------------------------------------

# The harness's eni_min_age is 2 s; a burst (surge_rise pods within 30 s) also keeps one
# more address warm, and an ENI goes only when the others hold that too: 18 pods arriving
# at once would hold the secondary ENI for 30 s. No surge here: the ENI goes in seconds.
QUICK_ENI_RELEASE = dict(PREFIX_AGENT, surge_rise=0)


def node_macs(cluster: Cluster, node: LabNode) -> set[str]:
    links = json.loads(cluster.exec_in(node, ["ip", "-j", "link", "show"]).stdout)
    return {link.get("address", "").lower() for link in links}


def router_routes(cluster: Cluster) -> str:
    assert cluster.fabric is not None
    return cluster.exec_in(cluster.fabric.router, ["ip", "route", "show"]).stdout


def test_a_secondary_eni_whose_prefixes_fall_idle_is_deleted(
        emulator_rules_off: frozenset[str]) -> None:
    """t3.micro (2 ENIs, one /28 slot each): 18 pods put 16 on the primary ENI's /28 and 2
    on the secondary ENI's. Churn (10 go, 2 come, and land on the primary) leaves 10 pods,
    all on the primary ENI: the secondary ENI's /28 falls idle, and once the peak is
    older than eni_min_age the ENI is detached and deleted: the cloud lists it no more,
    the VPC router routes none of its prefixes, the node has no link for it. The pods
    left keep their packets."""
    with new_cluster("t3.micro", emulator_rules_off) as cluster:
        node, other = cluster.nodes
        for n in cluster.nodes:
            cluster.run_agent(n, QUICK_ENI_RELEASE)
        peer = cluster.add_pod(other, "peer")
        pods = run_batches(lambda i: cluster.add_pod(node, f"c{i}"), range(18))
        enis = node_enis(cluster, node)
        assert len(enis) == 2 and all(len(e["prefixes"]) == 1 for e in enis), enis
        primary, secondary = enis
        on_secondary = [p for p in pods if inside(p.ip, secondary["prefixes"])]
        assert len(on_secondary) == 2, [p.ip for p in pods]
        # the fabric follows the cloud within a moment
        assert wait_until(lambda: all(f"{p} via {secondary['primary_ip']}" in router_routes(
            cluster) for p in secondary["prefixes"]), 10.0, step=0.2), router_routes(cluster)
        assert secondary["mac"] in node_macs(cluster, node)

        on_primary = [p for p in pods if p not in on_secondary]
        gone = on_secondary + on_primary[:8]
        run_batches(cluster.del_pod, gone)
        # once the released addresses cooled (cooldown 1 s), new pods fill the primary first
        assert wait_until(lambda: agent_pool(cluster, node)["cooling"] == 0, 10.0, step=0.2)
        pods = on_primary[8:] + [cluster.add_pod(node, f"d{i}") for i in range(2)]
        assert all(inside(p.ip, primary["prefixes"]) for p in pods), [p.ip for p in pods]

        def eni_deleted() -> bool:
            return [e["id"] for e in node_enis(cluster, node)] == [primary["id"]] and all(
                e["id"] != secondary["id"] for e in cluster.cloud.snapshot()["enis"])

        assert wait_until(eni_deleted, 30.0, step=0.5), (node_enis(cluster, node),
                                                         agent_pool(cluster, node))
        assert wait_until(lambda: not any(f"{p} " in router_routes(cluster)
                                          for p in secondary["prefixes"]), 10.0, step=0.2), (
            router_routes(cluster))
        assert wait_until(lambda: secondary["mac"] not in node_macs(cluster, node), 10.0), (
            node_macs(cluster, node))
        pool = agent_pool(cluster, node)
        assert (pool["enis"], pool["assigned"]) == (1, len(pods)), pool
        check_no_duplicates(cluster, [peer, *pods])
        check_both_ways(cluster, pods, peer)
        run_batches(cluster.del_pod, [*pods, peer])
        check_no_pod_left(cluster)
