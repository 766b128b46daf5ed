"""Prefix delegation end to end in the emulated VPC: agents with ``prefix_delegation`` on,
pods made by libcni, real packets through the VPC router, which routes each delegated /28
whole to the ENI holding it and checks every address inside it (source/destination check).

- 3 t3.micro nodes (2 ENIs, 2 address slots each: the one free slot of an ENI is one /28,
  16 pods): 18 pods a node are 16 on a prefix of the primary ENI and 2 on a prefix of the
  secondary ENI, on every node, as the cloud's DescribeNetworkInterfaces says. Every pod
  reaches every pod of the other nodes; since the router checks sources per ENI, a pod on
  the secondary ENI's prefix that left through the primary ENI would be dropped.
- A source address inside another node's prefix never arrives; the pod's own does.
- 200 pods churn on 2 m5.large nodes: no address held twice, each pod's address in exactly
  one prefix of its own node, nothing left afterwards, and the idle prefixes go back to
  what the warm target needs.

``--emulator-rules-off prefix-blocks`` lets the emulated EC2 delegate /28s that hold taken
addresses: the duplicate checks here then fail (see conftest.py).
"""
from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator, Sequence

import boto3
import pytest

from cloud.ec2 import Ec2Cloud
from cloud.types import InstanceId
from ipam_daemon.policy import Limits, Targets, Totals, surplus
from ipam_daemon.store import prefix_addresses
from lab.ec2.limits import limits_for
from lab.ec2.settings import EmulatorSettings
from lab.ec2.world import make_setup_client
from lab.harness import Cluster, LabNode, Pod
from lab.node_io import wait_until
from test_e2e_vpc_tools import (
    DuplicateWatch,
    agent_pods,
    agent_pool,
    check_agents_match_cloud,
    check_no_duplicates,
    check_no_pod_left,
    check_nodes_restored,
    node_state,
    reachable,
    router_link_bytes,
    run_batches,
    tcp_exchange,
    unreachable_from,
)

pytestmark = pytest.mark.timeout(300)

VPC_CIDR = "10.0.0.0/16"
PREFIX_AGENT = {"prefix_delegation": True, "warm_ips": 2, "batch_size": 4,
                "vpc_cidrs": [VPC_CIDR]}
SMALL_TYPE = "t3.micro"  # 2 ENIs x 2 address slots: one /28 of pods per ENI
PODS_PER_SMALL_NODE = 18  # 16 fill the primary ENI's /28, 2 go to the secondary ENI's
CHURN_TYPE = "m5.large"  # 3 ENIs x 10 slots: 9 /28s, 144 pods, on the primary ENI alone
CHURN_PODS = 200


def cloud_prefixes(cluster: Cluster) -> dict[str, tuple[str, str, int]]:
    """Every delegated /28 of the cluster's nodes -> (ENI id, instance id, device index),
    from DescribeNetworkInterfaces through the cloud boundary (the agents' own adapter).
    Also checks that no ENI holds a secondary address: the nodes are in prefix mode."""
    assert cluster.cloud is not None
    session = boto3.session.Session(aws_access_key_id="testing",
                                    aws_secret_access_key="testing",
                                    region_name=cluster.cloud.region)
    cloud = Ec2Cloud(cluster.cloud.region, endpoint_url=cluster.cloud.endpoint,
                     session=session)
    owners: dict[str, tuple[str, str, int]] = {}
    for node in cluster.nodes:
        for eni in cloud.list_enis(InstanceId(node.instance_id)):
            assert eni.secondary_ips == (), (eni.id, eni.secondary_ips)
            for prefix in eni.prefixes:
                assert prefix not in owners, (prefix, owners[prefix], eni.id)
                owners[prefix] = (eni.id, node.instance_id, eni.device_index or 0)
    return owners


def prefix_of(address: str, prefixes: dict[str, tuple[str, str, int]]) -> str:
    """The one prefix holding ``address``; fails when none or several do."""
    holding = [p for p in prefixes
               if ipaddress.IPv4Address(address) in ipaddress.IPv4Network(p)]
    assert len(holding) == 1, f"{address} lies in {len(holding)} prefixes: {holding}"
    return holding[0]


def check_in_own_prefix(cluster: Cluster, live: Sequence[Pod]) -> dict[str, int]:
    """Each pod's address lies in exactly one prefix, on an ENI of the pod's own node, the
    ENI the pod's agent names. Returns the number of prefixes each node holds."""
    prefixes = cloud_prefixes(cluster)
    agents_say = {p["ip"]: p["eni"] for node in cluster.nodes
                  for p in agent_pods(cluster, node)}
    for pod in live:
        eni_id, instance_id, _ = prefixes[prefix_of(pod.ip, prefixes)]
        assert instance_id == pod.node.instance_id, (pod.name, pod.ip, instance_id)
        assert agents_say[pod.ip] == eni_id, (pod.name, pod.ip, agents_say[pod.ip], eni_id)
    return {node.name: sum(owner[1] == node.instance_id for owner in prefixes.values())
            for node in cluster.nodes}


# ---- 3 small nodes: pods on the primary and the secondary ENI's prefixes ------------------

@pytest.fixture(scope="module")
def small_cluster(emulator_rules_off: frozenset[str]) -> Iterator[Cluster]:
    with Cluster(nodes=3, instance_type=SMALL_TYPE, vpc_cidr=VPC_CIDR,
                 settings=EmulatorSettings(rules_off=emulator_rules_off)) as made:
        limits = limits_for(SMALL_TYPE)
        assert (limits.max_enis, limits.ips_per_eni) == (2, 2)  # one /28 slot per ENI
        for node in made.nodes:
            made.run_agent(node, PREFIX_AGENT)
        yield made


@pytest.fixture(scope="module")
def small_pods(small_cluster: Cluster) -> list[Pod]:
    wanted = [(node, f"n{node.index}p{i}") for node in small_cluster.nodes
              for i in range(PODS_PER_SMALL_NODE)]
    return run_batches(lambda nw: small_cluster.add_pod(*nw), wanted)


def pods_by_device(cluster: Cluster, pods: Sequence[Pod]) -> dict[tuple[str, int], list[Pod]]:
    """(node name, device index of the ENI whose prefix holds the pod) -> pods."""
    prefixes = cloud_prefixes(cluster)
    placed: dict[tuple[str, int], list[Pod]] = {}
    for pod in pods:
        device = prefixes[prefix_of(pod.ip, prefixes)][2]
        placed.setdefault((pod.node.name, device), []).append(pod)
    return placed


def test_pods_on_primary_and_secondary_eni_prefixes_reach_every_other_node(
        small_cluster: Cluster, small_pods: list[Pod]) -> None:
    """On every node 16 pods sit in the primary ENI's /28 and 2 in the secondary ENI's (the
    cloud's view, which the agents' agree with); every pod pings every pod of the other two
    nodes, and a TCP echo between the two kinds keeps the pods' own addresses."""
    assert len({p.ip for p in small_pods}) == len(small_pods)
    check_in_own_prefix(small_cluster, small_pods)
    placed = pods_by_device(small_cluster, small_pods)
    assert {key: len(pods) for key, pods in placed.items()} == {
        key: count for node in small_cluster.nodes
        for key, count in (((node.name, 0), 16), ((node.name, 1), 2))}
    for pod in small_pods:
        others = [p.ip for p in small_pods if p.node is not pod.node]
        missing = unreachable_from(small_cluster, pod, others)
        assert not missing, f"{pod.name} ({pod.ip}) cannot reach {missing}"
    node0, node1 = (n.name for n in small_cluster.nodes[:2])
    primary_pod, secondary_pod = placed[(node0, 0)][0], placed[(node1, 1)][0]
    assert tcp_exchange(small_cluster, primary_pod, secondary_pod) == primary_pod.ip
    assert tcp_exchange(small_cluster, secondary_pod, primary_pod) == secondary_pod.ip


def count_icmp(cluster: Cluster, pod: Pod, sources: Sequence[str]) -> None:
    """Count the ICMP packets reaching ``pod`` from each source (no verdict, only counters)."""
    for source in sources:
        cluster.exec_in(pod, ["iptables", "-w", "5", "-A", "INPUT", "-s", f"{source}/32",
                              "-p", "icmp"])


def icmp_count(cluster: Cluster, pod: Pod, source: str) -> int:
    """Packets counted by :func:`count_icmp`'s rule for ``source`` (``[packets:bytes]``)."""
    out = cluster.exec_in(pod, ["iptables-save", "-c", "-t", "filter"]).stdout
    rule = f"-A INPUT -s {source}/32 -p icmp"
    return sum(int(line[1:line.index(":")]) for line in out.splitlines()
               if line.endswith(rule) and line.startswith("["))


def ping_from(cluster: Cluster, pod: Pod, source: str, address: str) -> bool:
    return cluster.exec_in(pod, ["busybox", "ping", "-c", "1", "-W", "1", "-I", source,
                                 address], check=False).returncode == 0


def test_a_source_inside_another_nodes_prefix_never_arrives(
        small_cluster: Cluster, small_pods: list[Pod]) -> None:
    """A pod on node 0's primary ENI sends with an idle address of node 1's /28 as its
    source to a pod on node 2's secondary ENI: the packets leave node 0 and the VPC router
    drops them (the target's counter stays at 0),
    while the pod's own address gets through. With node 0's source/destination check off
    (as EC2 allows), the same packets arrive: the count can see them."""
    node_a, node_b, node_c = small_cluster.nodes
    prefixes = cloud_prefixes(small_cluster)
    used = {p.ip for p in small_pods}
    idle_b = [ip for prefix, owner in prefixes.items() if owner[1] == node_b.instance_id
              for ip in prefix_addresses(prefix) if ip not in used]
    forged = idle_b[-1]
    assert prefixes[prefix_of(forged, prefixes)][1] == node_b.instance_id
    placed = pods_by_device(small_cluster, small_pods)
    sender, target = placed[(node_a.name, 0)][0], placed[(node_c.name, 1)][0]
    count_icmp(small_cluster, target, [sender.ip, forged])
    assert reachable(small_cluster, sender, target.ip)  # control: its own address works
    assert icmp_count(small_cluster, target, sender.ip) >= 1
    link = node_a.primary_eni_id  # the pod's ENI, and the main table's way out (eth0)
    ec2 = make_setup_client(small_cluster.cloud.endpoint, small_cluster.cloud.region)
    small_cluster.exec_in(sender, ["ip", "addr", "add", f"{forged}/32", "dev", sender.ifname])
    try:
        sent = router_link_bytes(small_cluster, link)["rx_packets"]
        for _ in range(3):
            assert not ping_from(small_cluster, sender, forged, target.ip)
        # the packets did leave node 0 (the node does not filter) ...
        assert router_link_bytes(small_cluster, link)["rx_packets"] - sent >= 3
        # ... and the VPC router dropped them: not one reached the target
        assert icmp_count(small_cluster, target, forged) == 0

        ec2.modify_network_interface_attribute(NetworkInterfaceId=link,
                                               SourceDestCheck={"Value": False})

        def forged_arrives() -> bool:
            ping_from(small_cluster, sender, forged, target.ip)  # the reply goes to node 1
            return icmp_count(small_cluster, target, forged) >= 1

        assert wait_until(forged_arrives, 10.0, step=0.2)
    finally:
        ec2.modify_network_interface_attribute(NetworkInterfaceId=link,
                                               SourceDestCheck={"Value": True})
        small_cluster.exec_in(sender, ["ip", "addr", "del", f"{forged}/32", "dev",
                                       sender.ifname], check=False)
    assert reachable(small_cluster, sender, target.ip)


# ---- 200 pods churn on 2 m5.large nodes -------------------------------------------------

def settled_prefix_count(peak: int, instance_type: str) -> int:
    """The /28s a node keeps once ``peak`` of them lie idle (nothing assigned or cooling):
    the policy's surplus, given back until there is none (one ENI, the primary)."""
    targets = Targets(warm_ips=PREFIX_AGENT["warm_ips"], batch_size=PREFIX_AGENT["batch_size"])
    type_limits = limits_for(instance_type)
    limits = Limits(type_limits.max_enis, type_limits.ips_per_eni, unit=16)
    held = peak * limits.unit
    while over := surplus(Totals(total=held, available=held, assigned=0, cooling=0),
                          targets, limits):
        held -= over
    return held // limits.unit


def test_two_hundred_pods_churn_and_the_idle_prefixes_go_back(
        emulator_rules_off: frozenset[str]) -> None:
    """200 pods (100 a node) come in parallel batches of 10, then half of them go while as
    many new ones come, then all go. Throughout: no address on two pods or two ENIs; at
    each count every pod's address lies in exactly one /28 of its own node. Afterwards
    nothing is left on the nodes, and each node's prefixes fall from their peak (at least
    the 7 that 100 pods need) to the one /28 that warm_ips 2 and batch_size 4 keep."""
    rng = random.Random(11)
    with Cluster(nodes=2, instance_type=CHURN_TYPE, vpc_cidr=VPC_CIDR,
                 settings=EmulatorSettings(rules_off=emulator_rules_off)) as cluster:
        for node in cluster.nodes:
            cluster.run_agent(node, PREFIX_AGENT)
        assert wait_until(lambda: all(agent_pool(cluster, n)["available"] >= 2
                                      for n in cluster.nodes), 30.0, step=0.2)
        before = {node.name: node_state(cluster, node) for node in cluster.nodes}
        counter = iter(range(10_000))

        def add(node: LabNode) -> Pod:
            return cluster.add_pod(node, f"c{next(counter)}")

        wanted = [cluster.nodes[i % 2] for i in range(CHURN_PODS)]
        rng.shuffle(wanted)
        with DuplicateWatch(cluster) as watch:
            live = run_batches(add, wanted)
        check_no_duplicates(cluster, live)
        peak = check_in_own_prefix(cluster, live)
        assert min(peak.values()) >= 7, peak  # 100 pods need 7 /28s at least

        with DuplicateWatch(cluster) as churn_watch:
            rng.shuffle(live)
            gone, live = live[:CHURN_PODS // 2], live[CHURN_PODS // 2:]
            tasks = [("del", pod) for pod in gone] + [("add", pod.node) for pod in gone]
            rng.shuffle(tasks)
            done = run_batches(
                lambda t: cluster.del_pod(t[1]) if t[0] == "del" else add(t[1]), tasks)
            live += [pod for pod in done if pod is not None]
        assert len(live) == CHURN_PODS
        check_no_duplicates(cluster, live)
        after_churn = check_in_own_prefix(cluster, live)
        peak = {name: max(peak[name], after_churn[name]) for name in peak}  # most seen
        for w in (watch, churn_watch):  # it really looked, many times, while pods churned
            assert w.polls >= 5 and w.seen == [], (w.polls, w.seen)

        run_batches(cluster.del_pod, live)
        check_no_pod_left(cluster)
        expected = settled_prefix_count(max(peak.values()), CHURN_TYPE)
        # 2 idle /28s lie 30 above warm 2, at least batch 4 + one /28: one goes back;
        # 1 lies 14 above: it stays
        assert expected == 1

        def prefixes_back() -> bool:
            held = check_in_own_prefix(cluster, [])
            pools = [agent_pool(cluster, node) for node in cluster.nodes]
            return all(count == expected for count in held.values()) and all(
                (p["prefixes"], p["assigned"], p["cooling"], p["enis"]) == (expected, 0, 0, 1)
                for p in pools)

        assert wait_until(prefixes_back, 60.0, step=0.5), (
            peak, check_in_own_prefix(cluster, []), [agent_pool(cluster, n)
                                                     for n in cluster.nodes])
        assert all(count > expected for count in peak.values()), peak
        check_nodes_restored(cluster, before)
        # the agents' addresses are exactly the cloud's: the kept /28 and the ENI's own
        held = check_agents_match_cloud(cluster)
        assert sorted(len(ips) for ips in held.values()) == [1 + 16 * expected] * 2
