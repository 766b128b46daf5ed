"""vpc-route mode end to end: agents in node namespaces of the emulated VPC, pods through
libcni, real packets through the VPC router, which follows the route table and enforces
source/destination check.

- 3 nodes in vpc-route mode: pods on different nodes reach each other through the routes;
  turning the check back on (agent stopped) cuts the traffic, the restarted agent turns it
  off again; restarting every agent creates no route twice; a full table is reported with
  the numbers and the route is added once there is room; a terminated node's route is
  removed by the sweep of another agent.
- mixed: one node in eni mode and two in vpc-route mode all reach each other.
"""
from __future__ import annotations

import boto3

from lab.harness import Cluster
from lab.node_io import wait_until

CLUSTER_CIDR = "10.244.0.0/16"


def route_mode(index: int, **extra) -> dict:
    config = {"mode": "vpc-route", "pod_cidr": f"10.244.{index}.0/24",
              "cluster_cidr": CLUSTER_CIDR, "route_sweep_interval": 0.5, "snat": False}
    config.update(extra)
    return config


def ec2(cluster: Cluster):
    return boto3.client("ec2", region_name=cluster.cloud.region,
                        endpoint_url=cluster.cloud.endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def main_table(cluster: Cluster) -> dict:
    tables = ec2(cluster).describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [cluster.world.vpc_id]}])["RouteTables"]
    return next(t for t in tables if any(a.get("Main") for a in t.get("Associations", [])))


def pod_routes(cluster: Cluster) -> list[tuple[str, str]]:
    """(cidr, target ENI) of every non-local route in the main table, duplicates kept."""
    return sorted((r["DestinationCidrBlock"], r.get("NetworkInterfaceId", ""))
                  for r in main_table(cluster)["Routes"]
                  if r.get("GatewayId") != "local" and "DestinationCidrBlock" in r)


def ping(cluster: Cluster, pod, address: str) -> bool:
    return cluster.exec_in(pod, ["busybox", "ping", "-c", "1", "-W", "1", address],
                           check=False).returncode == 0


def reachable(cluster: Cluster, pod, address: str) -> bool:
    """Positive checks are retried for a few seconds (the fabric follows the cloud)."""
    return wait_until(lambda: ping(cluster, pod, address), 8.0)


def pool(cluster: Cluster, node) -> dict:
    status, body = cluster.agent_get(node, "/v1/pool")
    assert status == 200, body
    return body


def test_three_route_mode_nodes() -> None:
    with Cluster(nodes=3) as cluster:
        for i, node in enumerate(cluster.nodes):
            cluster.run_agent(node, route_mode(i))
        eni = [n.primary_eni_id for n in cluster.nodes]
        expected = [(f"10.244.{i}.0/24", eni[i]) for i in range(3)]
        assert wait_until(lambda: pod_routes(cluster) == expected, 10), pod_routes(cluster)
        pods = [cluster.add_pod(i, f"p{i}") for i in range(3)]
        for i, pod in enumerate(pods):
            assert pod.ip.startswith(f"10.244.{i}."), pod.ip
        for a, b in ((0, 1), (1, 2), (2, 0)):
            assert reachable(cluster, pods[a], pods[b].ip), (a, b)

        # source/destination check, enforced by the fabric: on -> node 1's pod is cut off
        cluster.stop_agent(1)
        client = ec2(cluster)
        client.modify_network_interface_attribute(NetworkInterfaceId=eni[1],
                                                  SourceDestCheck={"Value": True})
        assert wait_until(lambda: not ping(cluster, pods[0], pods[1].ip), 8.0)
        assert not ping(cluster, pods[0], pods[1].ip)
        cluster.run_agent(1, route_mode(1))  # the agent turns it off again
        assert reachable(cluster, pods[0], pods[1].ip)

        # restarting every agent creates nothing twice
        creates = cluster.cloud.control.call_counts().get("CreateRoute", 0)
        for i in range(3):
            cluster.stop_agent(i)
            cluster.run_agent(i, route_mode(i))
        assert pod_routes(cluster) == expected
        assert cluster.cloud.control.call_counts().get("CreateRoute", 0) == creates

        # a full table: node 2's route gone, a foreign route outside the cluster CIDR takes
        # the last slot; the agent says so with the numbers and adds it once there is room
        cluster.stop_agent(2)
        table = main_table(cluster)["RouteTableId"]
        client.delete_route(RouteTableId=table, DestinationCidrBlock="10.244.2.0/24")
        client.create_route(RouteTableId=table, DestinationCidrBlock="192.168.50.0/24",
                            NetworkInterfaceId=eni[0])
        cluster.cloud.control.set_route_table_limit(3)
        try:
            cluster.run_agent(2, route_mode(2, route_table_limit=3))
            assert wait_until(lambda: pool(cluster, 2)["route_problem"], 10)
            assert "is full: 3 of 3 routes used; cannot add 10.244.2.0/24" in \
                pool(cluster, 2)["route_problem"]
            assert not ping(cluster, pods[0], pods[2].ip)
        finally:
            cluster.cloud.control.set_route_table_limit(50)
        assert wait_until(lambda: pool(cluster, 2)["route_problem"] is None, 10)
        assert reachable(cluster, pods[0], pods[2].ip)
        assert ("192.168.50.0/24", eni[0]) in pod_routes(cluster)  # outside: left alone

        # node 2 is terminated: the sweep of another agent removes its route
        cluster.stop_agent(2)
        client.terminate_instances(InstanceIds=[cluster.nodes[2].instance_id])
        assert wait_until(lambda: ("10.244.2.0/24", eni[2]) not in pod_routes(cluster), 10), \
            pod_routes(cluster)
        assert pod_routes(cluster) == sorted(expected[:2] + [("192.168.50.0/24", eni[0])])
        assert reachable(cluster, pods[0], pods[1].ip)


def test_mixed_eni_and_route_mode_nodes_reach_each_other() -> None:
    with Cluster(nodes=3) as cluster:
        cluster.run_agent(0, {"snat": False})  # eni mode
        for i in (1, 2):
            cluster.run_agent(i, route_mode(i))
        pods = [cluster.add_pod(i, f"m{i}") for i in range(3)]
        assert not pods[0].ip.startswith("10.244.")  # a VPC address from an ENI
        for a in range(3):
            for b in range(3):
                if a != b:
                    assert reachable(cluster, pods[a], pods[b].ip), (a, b)
