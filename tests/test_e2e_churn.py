"""50-pod churn across 3 nodes (m5.large: 3 ENIs x 10 addresses), pods created and deleted
through libcni in parallel batches of 10 while the agents' pools grow and shrink: no IP is
ever held twice (agents and cloud), every live pod answers from every other node, and after
the last delete nothing is left: no pod links, rules, routes, allocations or namespaces.
Part of `make test` (about a minute); kept lean: one pinger pod per node."""
from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from lab.harness import Cluster, Pod
from lab.node_io import wait_until
from test_e2e_vpc_tools import (
    DuplicateWatch,
    agent_pool,
    check_agents_match_cloud,
    check_no_duplicates,
    check_no_pod_left,
    check_nodes_restored,
    node_state,
    run_batches,
    unreachable_from,
)

pytestmark = pytest.mark.timeout(300)

VPC_CIDR = "10.0.0.0/16"
# the harness's fast intervals; SNAT on with the VPC excluded; the default hysteresis band
AGENT = {"warm_ips": 2, "batch_size": 4, "vpc_cidrs": [VPC_CIDR]}
TOTAL = 50


def check_all_reachable(cluster: Cluster, live: Sequence[Pod], pingers: dict[str, Pod]) -> None:
    for name, pinger in pingers.items():
        others = [p.ip for p in live if p.node.name != name]
        missing = unreachable_from(cluster, pinger, others)
        assert not missing, f"from {name} ({pinger.ip}) these pods do not answer: {missing}"


def test_fifty_pods_churn_across_three_nodes() -> None:
    rng = random.Random(5)
    with Cluster(nodes=3, vpc_cidr=VPC_CIDR) as cluster:
        for node in cluster.nodes:
            cluster.run_agent(node, AGENT)
        # settled pools first (warm addresses on the primary ENI), then each node's state
        assert wait_until(lambda: all(agent_pool(cluster, n)["available"] >= AGENT["warm_ips"]
                                      for n in cluster.nodes), 30.0, step=0.2)
        before = {node.name: node_state(cluster, node) for node in cluster.nodes}
        counter = iter(range(10_000))

        def add(node_index: int) -> Pod:
            return cluster.add_pod(node_index, f"w{next(counter)}")

        # 50 pods in batches of 10, spread over the nodes at random
        with DuplicateWatch(cluster) as watch:
            live = run_batches(add, [rng.randrange(3) for _ in range(TOTAL)])
        check_no_duplicates(cluster, live)
        # at 50 pods the nodes hold more than a primary ENI's 9 secondary addresses
        assert max(agent_pool(cluster, n)["enis"] for n in cluster.nodes) >= 2
        # churn, twice: half the pods go while as many new ones come, mixed in the same
        # parallel batches (releases cool down and shrink while new pods borrow)
        with DuplicateWatch(cluster) as churn_watch:
            for _ in range(2):
                rng.shuffle(live)
                gone, live = live[:TOTAL // 2], live[TOTAL // 2:]
                tasks = [("del", pod) for pod in gone] + [("add", rng.randrange(3))
                                                          for _ in gone]
                rng.shuffle(tasks)
                done = run_batches(
                    lambda t: cluster.del_pod(t[1]) if t[0] == "del" else add(t[1]), tasks)
                live += [pod for pod in done if pod is not None]
                assert len(live) == TOTAL
                check_no_duplicates(cluster, live)
        for w in (watch, churn_watch):  # it really looked, many times, while pods churned
            assert w.polls >= 5 and w.seen == [], (w.polls, w.seen)
        # every live pod answers from every other node (one pinger pod per node)
        pingers = {node.name: next(p for p in live if p.node is node) for node in cluster.nodes
                   if any(p.node is node for p in live)}
        assert len(pingers) == 3
        check_all_reachable(cluster, live, pingers)

        run_batches(cluster.del_pod, live)
        check_no_pod_left(cluster)

        # the pools drain back to the band, idle secondary ENIs go, cloud and agents agree
        def settled() -> bool:
            pools = [agent_pool(cluster, node) for node in cluster.nodes]
            return all(p["assigned"] == 0 and p["cooling"] == 0
                       and p["total"] < AGENT["warm_ips"] + 2 * AGENT["batch_size"]
                       and p["enis"] == 1 for p in pools)

        assert wait_until(settled, 60.0, step=0.5), [agent_pool(cluster, n)
                                                    for n in cluster.nodes]
        # each node is as it was before the first pod (the pool stops counting an ENI when
        # it starts giving it back; its link goes when the detach is done and the fabric
        # has followed it)
        check_nodes_restored(cluster, before)
        check_agents_match_cloud(cluster)
