"""End to end across the emulated VPC with 3 nodes: real agents in node namespaces, pods
made by libcni, real packets through the VPC router that follows the emulated cloud.

Nodes are m5.large (3 ENIs x 10 addresses): node 0 gets ten pods, the tenth on a secondary
ENI (the agent hands out addresses from the lowest device index first). Two /26 subnets:
node 0 and node 2 share the first, node 1 is in the second. SNAT is on (the VPC CIDR is
excluded, as a real deployment configures it), so pod-to-pod traffic must keep the pod's
own address."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.fabric_plan import name_router_link
from lab.harness import Cluster, Pod
from lab.node_io import wait_until
from lab.ec2.world import make_setup_client
from test_e2e_vpc_tools import (
    agent_pods,
    agent_pool,
    cloud_holders,
    eni_of_pod,
    free_in_subnet,
    ping,
    reachable,
    router_link_bytes,
    router_route_dev,
    tcp_exchange,
)

pytestmark = pytest.mark.timeout(240)

VPC_CIDR = "10.0.0.0/16"
AGENT = {"warm_ips": 1, "batch_size": 1, "cooldown_seconds": 1.0, "eni_min_age": 2.0,
         "vpc_cidrs": [VPC_CIDR]}
# node 2 (node B of the reuse test) may not attach ENIs: all its growth is assignments
AGENT_NODE2 = dict(AGENT, max_enis=1)
SECONDARY = "a9"  # node 0's tenth pod, on its second ENI
PAYLOAD = 256 * 1024


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=3, instance_type="m5.large", vpc_cidr=VPC_CIDR,
                 subnet_cidrs=("10.0.0.0/26", "10.0.1.0/26")) as made:
        for node in made.nodes:
            made.run_agent(node, AGENT_NODE2 if node.index == 2 else AGENT)
        yield made


@pytest.fixture(scope="module")
def pods(cluster: Cluster) -> dict[str, Pod]:
    made = {f"a{i}": cluster.add_pod(0, f"a{i}") for i in range(10)}
    made["b0"] = cluster.add_pod(1, "b0")
    made["c0"] = cluster.add_pod(2, "c0")
    return made


def test_pods_on_primary_and_secondary_enis_talk_across_nodes_both_ways(
        cluster: Cluster, pods: dict[str, Pod]) -> None:
    node0 = cluster.nodes[0]
    assert eni_of_pod(cluster, pods["a0"]) == node0.primary_eni_id
    assert eni_of_pod(cluster, pods[SECONDARY]) != node0.primary_eni_id
    assert len({p.ip for p in pods.values()}) == len(pods)
    for left, right in (("a0", "b0"), (SECONDARY, "b0"), (SECONDARY, "c0"), ("a0", "c0")):
        x, y = pods[left], pods[right]
        assert reachable(cluster, x, y.ip), f"{left} cannot ping {right}"
        assert reachable(cluster, y, x.ip), f"{right} cannot ping {left}"
        # a TCP echo each way; the server sees the client's own VPC address (no SNAT, no NAT)
        assert tcp_exchange(cluster, x, y, PAYLOAD) == x.ip
        assert tcp_exchange(cluster, y, x, PAYLOAD) == y.ip


def test_traffic_leaves_through_the_eni_that_owns_the_source_ip(
        cluster: Cluster, pods: dict[str, Pod]) -> None:
    primary = cluster.nodes[0].primary_eni_id
    secondary = eni_of_pod(cluster, pods[SECONDARY])
    for pod, owner, other in ((pods["a0"], primary, secondary),
                              (pods[SECONDARY], secondary, primary)):
        before = {eni: router_link_bytes(cluster, eni) for eni in (owner, other)}
        tcp_exchange(cluster, pod, pods["b0"], PAYLOAD)
        after = {eni: router_link_bytes(cluster, eni) for eni in (owner, other)}
        # the payload went out through the owner's link and its echo came back on it
        assert after[owner]["rx"] - before[owner]["rx"] >= PAYLOAD
        assert after[owner]["tx"] - before[owner]["tx"] >= PAYLOAD
        # the other ENI of the same node carried none of it
        assert after[other]["rx"] - before[other]["rx"] < PAYLOAD // 8
        assert after[other]["tx"] - before[other]["tx"] < PAYLOAD // 8


def icmp_echoes_received(cluster: Cluster, pod: Pod) -> int:
    out = cluster.exec_in(pod, ["nstat", "-asz", "IcmpInEchos"]).stdout
    return int(next(line.split()[1] for line in out.splitlines()
                    if line.startswith("IcmpInEchos")))


def test_an_address_the_cloud_never_assigned_is_dropped_by_the_source_check(
        cluster: Cluster, pods: dict[str, Pod]) -> None:
    pod, target = pods["b0"], pods["a0"]
    node = pod.node
    assert eni_of_pod(cluster, pod) == node.primary_eni_id
    forged = free_in_subnet(cluster, node.subnet_id)[-1]
    assert forged not in cloud_holders(cluster)
    assert router_route_dev(cluster, forged) is None
    assert reachable(cluster, pod, target.ip)  # control: the real address works
    link = node.primary_eni_id
    try:
        cluster.exec_in(pod, ["ip", "addr", "add", f"{forged}/32", "dev", pod.ifname])
        cluster.exec_in(pod, ["ip", "addr", "del", f"{pod.ip}/32", "dev", pod.ifname])
        routes = cluster.exec_in(pod, ["ip", "route"]).stdout
        assert "default" in routes, routes
        echoes = icmp_echoes_received(cluster, target)
        sent = router_link_bytes(cluster, link)["rx_packets"]
        for _ in range(3):
            assert not ping(cluster, pod, target.ip)
        # the packets did leave the node (the node does not filter) ...
        assert router_link_bytes(cluster, link)["rx_packets"] - sent >= 3
        # ... and the VPC router dropped them: not one echo request reached the target
        assert icmp_echoes_received(cluster, target) == echoes
    finally:
        cluster.exec_in(pod, ["ip", "addr", "add", f"{pod.ip}/32", "dev", pod.ifname],
                        check=False)
        cluster.exec_in(pod, ["ip", "addr", "del", f"{forged}/32", "dev", pod.ifname],
                        check=False)
    assert reachable(cluster, pod, target.ip)
    assert icmp_echoes_received(cluster, target) > echoes


def fill_subnet_except(cluster: Cluster, subnet_id: str, keep: str) -> str:
    """An unattached ENI (made by the test, as another tenant of the subnet would) holding
    every free address of the subnet but ``keep``; returns its id."""
    assert cluster.cloud is not None
    free = [ip for ip in free_in_subnet(cluster, subnet_id) if ip != keep]
    assert keep in free_in_subnet(cluster, subnet_id) and free
    ec2 = make_setup_client(cluster.cloud.endpoint, cluster.cloud.region)
    reply = ec2.create_network_interface(
        SubnetId=subnet_id, Description="e2e filler",
        PrivateIpAddresses=[{"PrivateIpAddress": ip, "Primary": i == 0}
                            for i, ip in enumerate(free)])
    return reply["NetworkInterface"]["NetworkInterfaceId"]


def test_a_released_ip_cools_down_goes_back_to_the_cloud_and_is_reused_on_another_node(
        cluster: Cluster, pods: dict[str, Pod]) -> None:
    node_a, node_b = cluster.nodes[0], cluster.nodes[2]
    assert node_a.subnet_id == node_b.subnet_id
    moved = pods[SECONDARY]
    secondary = eni_of_pod(cluster, moved)
    _, enis = cluster.agent_get(node_a, "/v1/enis")
    ifname = f"eth{next(e['device_index'] for e in enis if e['id'] == secondary)}"
    router_link = name_router_link(secondary)
    assert ifname in cluster.exec_in(node_a, ["ip", "-o", "link"]).stdout
    # the secondary ENI's pod and most of the primary's go (a6-a8 stay): once the addresses
    # have cooled the secondary ENI is idle and not needed, so the agent deletes it
    for name in (SECONDARY, "a0", "a1", "a2", "a3", "a4", "a5"):
        cluster.del_pod(pods[name])

    def secondary_gone() -> bool:
        return not any(e["id"] == secondary for e in cluster.cloud.snapshot()["enis"])

    assert wait_until(secondary_gone, 30.0, step=0.2), "node A kept its idle secondary ENI"
    # its address is back with the cloud, no longer routed, and the ENI's link is gone
    assert moved.ip not in cloud_holders(cluster)
    assert wait_until(lambda: router_route_dev(cluster, moved.ip) is None, 5.0)
    assert wait_until(lambda: ifname not in cluster.exec_in(
        node_a, ["ip", "-o", "link"]).stdout, 5.0), "detached ENI's link still on node A"
    assert router_link not in cluster.exec_in(cluster.fabric.router,
                                              ["ip", "-o", "link"]).stdout
    assert all(p["ip"] != moved.ip for p in agent_pods(cluster, node_a))
    # node A's agent stops, so nothing but node B can take addresses in the subnet now
    cluster.stop_agent(node_a)
    assert moved.ip not in cloud_holders(cluster)

    # the freed address is now the only free one in the subnet: node B's next grow gets it
    # (B may not attach ENIs and its primary ENI has room: the grow is one assignment)
    primary_b = next(e for e in agent_pool(cluster, node_b)["per_eni"] if e["primary"])
    assert primary_b["capacity"] > primary_b["free"] + primary_b["assigned"] + primary_b["cooling"]
    filler = fill_subnet_except(cluster, node_a.subnet_id, moved.ip)
    reused = None
    for i in range(primary_b["free"] + 2):  # B's idle addresses go first, then the new one
        pod = cluster.add_pod(node_b, f"r{i}")
        if pod.ip == moved.ip:
            reused = pod
            break
    assert reused is not None, f"node B never got {moved.ip}"
    holders = cloud_holders(cluster)[moved.ip]
    assert len(holders) == 1 and holders[0][1] == node_b.instance_id
    owner = eni_of_pod(cluster, reused)
    assert wait_until(lambda: router_route_dev(cluster, moved.ip) == name_router_link(owner),
                      5.0)
    assert filler not in {h[0] for h in holders}
    # reachable at its new home from the other two nodes (a pod and a node), TCP included
    assert reachable(cluster, pods["b0"], reused.ip)
    assert reachable(cluster, pods["a8"], reused.ip)
    assert tcp_exchange(cluster, pods["b0"], reused, PAYLOAD) == pods["b0"].ip
