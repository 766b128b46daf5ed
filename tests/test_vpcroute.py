"""vpc-route mode. The route reconcile's pure decision, table-tested; then agent PROCESSES
(datapath none) against the emulated EC2 and the fake API server: pod CIDR from the Node's
spec.podCIDR, pod addresses carved from it, the route to the primary ENI with source/dest
check off, no duplicates across restarts, a deleted Node's route removed by another agent,
the sweep removing routes inside the cluster CIDR whose target is gone (and never touching
one outside it), and a full route table reported with the numbers."""
from __future__ import annotations

import pytest
from fake_apiserver.fixtures import add_node, add_pod, apiserver  # noqa: F401 - fixture
from test_agent_helpers import (  # noqa: F401 - fixtures
    cloud_client, control, emulator, make_world, start_agent, wait_for,
)

from cloud.types import EniId, Route, RouteTable
from ipam_daemon.routeplan import CREATE, DELETE, REPLACE, RouteChange, plan_routes, sweep_targets
from ipam_daemon.vpcroute import pod_addresses

LOCAL = Route("10.0.0.0/16", "active", gateway_id="local")


def table(*routes: Route, tid: str = "rtb-1") -> RouteTable:
    return RouteTable(tid, "vpc-1", (LOCAL, *routes))


def to(cidr: str, eni: str, state: str = "active") -> Route:
    return Route(cidr, state, eni_id=eni)


CASES = [
    ("missing: create", [table()], {}, (),
     [RouteChange(CREATE, "rtb-1", "10.244.1.0/24", "eni-me", "missing")]),
    ("in place: nothing", [table(to("10.244.1.0/24", "eni-me"))], {}, (), []),
    ("points elsewhere: replace", [table(to("10.244.1.0/24", "eni-old"))], {}, (),
     [RouteChange(REPLACE, "rtb-1", "10.244.1.0/24", "eni-me", "points to eni-old")]),
    ("blackholed: replace", [table(to("10.244.1.0/24", "eni-me", "blackhole"))], {}, (),
     [RouteChange(REPLACE, "rtb-1", "10.244.1.0/24", "eni-me", "blackholed")]),
    ("every table in scope", [table(tid="rtb-2"), table(to("10.244.1.0/24", "eni-me"))], {}, (),
     [RouteChange(CREATE, "rtb-2", "10.244.1.0/24", "eni-me", "missing")]),
    ("other node alive: kept", [table(to("10.244.1.0/24", "eni-me"), to("10.244.2.0/24", "eni-b"))],
     {"eni-b": True}, (), []),
    ("unknown target: kept", [table(to("10.244.1.0/24", "eni-me"), to("10.244.2.0/24", "eni-b"))],
     {}, (), []),
    ("target gone: swept", [table(to("10.244.1.0/24", "eni-me"), to("10.244.2.0/24", "eni-b"))],
     {"eni-b": False}, (),
     [RouteChange(DELETE, "rtb-1", "10.244.2.0/24", None, "target eni-b is gone")]),
    ("blackhole in cluster: swept",
     [table(to("10.244.1.0/24", "eni-me"), to("10.244.3.0/24", "eni-c", "blackhole"))], {}, (),
     [RouteChange(DELETE, "rtb-1", "10.244.3.0/24", None, "blackholed")]),
    ("outside the cluster CIDR: never touched",
     [table(to("10.244.1.0/24", "eni-me"), to("192.168.0.0/24", "eni-x", "blackhole"),
            to("10.245.0.0/24", "eni-y"))], {"eni-x": False, "eni-y": False},
     ("10.245.0.0/24",), []),
    ("departed node: deleted", [table(to("10.244.1.0/24", "eni-me"), to("10.244.2.0/24", "eni-b"))],
     {"eni-b": True}, ("10.244.2.0/24",),
     [RouteChange(DELETE, "rtb-1", "10.244.2.0/24", None, "its Node was deleted")]),
    ("our own earlier CIDR: deleted", [table(to("10.244.1.0/24", "eni-me"), to("10.244.7.0/24", "eni-me"))],
     {}, (), [RouteChange(DELETE, "rtb-1", "10.244.7.0/24", None, "this node's earlier pod CIDR")]),
    ("departing our own CIDR is ignored", [table(to("10.244.1.0/24", "eni-me"))], {},
     ("10.244.1.0/24",), []),
]


@pytest.mark.parametrize("name,tables,alive,departed,expected", CASES, ids=[c[0] for c in CASES])
def test_plan_routes(name, tables, alive, departed, expected):
    assert list(plan_routes(tables, own_cidr="10.244.1.0/24", own_eni="eni-me",
                            cluster_cidr="10.244.0.0/16", alive=alive,
                            departed=departed)) == expected


def test_without_a_cluster_cidr_only_departed_nodes_are_removed():
    tables = [table(to("10.244.1.0/24", "eni-me"), to("10.244.2.0/24", "eni-b", "blackhole"),
                    to("10.244.3.0/24", "eni-c"))]
    assert plan_routes(tables, own_cidr="10.244.1.0/24", own_eni="eni-me",
                       alive={"eni-b": False}, departed=["10.244.3.0/24"]) == (
        RouteChange(DELETE, "rtb-1", "10.244.3.0/24", None, "its Node was deleted"),)
    assert sweep_targets(tables, "10.244.1.0/24", "10.244.0.0/16") == {"eni-b", "eni-c"}
    assert sweep_targets(tables, "10.244.1.0/24", "") == set()


def test_pod_addresses_reserve_network_and_broadcast():
    ips = pod_addresses("10.244.1.0/29")
    assert ips == [f"10.244.1.{i}" for i in range(1, 7)]


# ---- agent processes ---------------------------------------------------------------------

CLUSTER = "10.244.0.0/16"


def route_config(server=None, **extra) -> dict:
    config = dict(mode="vpc-route", cluster_cidr=CLUSTER, route_sweep_interval=0.5,
                  warm_ips=0)
    if server is not None:
        config.update(kubernetes="host", kube_host=server.url, kube_timeout=2.0,
                      kube_boot_wait=2.0, kube_gc_grace=0.0, kube_gc_interval=0.2,
                      kube_status_interval=0.0)
    config.update(extra)
    return config


def routes(cloud, world) -> dict[str, tuple[str, str]]:
    """cidr -> (target ENI, state) in the VPC's main table, our cluster's routes only."""
    main = next(t for t in cloud.describe_route_tables(world.vpc_id) if t.main)
    return {r.destination_cidr: (r.eni_id, r.state) for r in main.routes if not r.gateway_id}


def add_node_with_cidr(server, world, index: int, cidr: str) -> str:
    inst = world.instances[index]
    add_node(server, inst.name, instance=inst.instance_id)
    server.patch("nodes", inst.name, {"spec": {"podCIDR": cidr}})
    return inst.name


def condition(server, node: str) -> dict:
    conditions = (server.get("nodes", node).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "UnderlayIPAvailable"), {})


def test_routes_from_pod_cidrs_restart_and_node_deletion(apiserver, emulator, control,
                                                         start_agent):
    world = make_world(emulator, nodes=3)
    cloud = cloud_client(emulator)
    # routes that are not ours: outside the cluster CIDR (with a dead target), never touched
    stray = cloud.create_eni(world.subnet_ids[0], [world.security_group_id], 0,
                             cluster=world.cluster, node="stray")
    main = next(t for t in cloud.describe_route_tables(world.vpc_id) if t.main).id
    cloud.create_route(main, "192.168.7.0/24", stray.id)
    cloud.create_route(main, "10.244.9.0/24", stray.id)  # inside: swept once the ENI goes
    cloud.delete_eni(stray.id)

    names = [add_node_with_cidr(apiserver, world, i, f"10.244.{i}.0/24") for i in range(2)]
    # no pod_cidr in the configuration: it comes from spec.podCIDR
    agents = [start_agent(world, node=i, node_name=names[i], **route_config(apiserver))
              for i in range(2)]
    eni = [inst.primary_eni_id for inst in world.instances]
    expected = {"10.244.0.0/24": (eni[0], "active"), "10.244.1.0/24": (eni[1], "active"),
                "192.168.7.0/24": (stray.id, routes(cloud, world)["192.168.7.0/24"][1])}
    wait_for(lambda: routes(cloud, world) == expected, 10, f"routes {expected}")
    for i in range(2):
        assert not cloud.describe_eni(EniId(eni[i])).source_dest_check
    uid = add_pod(apiserver, "default", "pod-p0", names[0])["metadata"]["uid"]  # or pod GC frees it
    status, body = agents[0].attach("p0", pod_uid=uid)
    assert status == 200, body
    assert body["result"]["ips"][0]["address"].startswith("10.244.0.")
    pool = agents[0].pool()
    assert (pool["pod_cidr"], pool["capacity"], pool["route_problem"]) == \
        ("10.244.0.0/24", 254, None)

    creates = control.call_counts().get("CreateRoute", 0)
    agents[0].stop()
    agents[0].start()
    status, again = agents[0].attach("p0", pod_uid=uid)  # same key, same address, after the restart
    assert again["result"]["ips"] == body["result"]["ips"]
    assert agents[0].pool()["assigned"] == 1 and agents[0].pool()["total"] == 254
    assert routes(cloud, world) == expected
    assert control.call_counts().get("CreateRoute", 0) == creates  # no duplicate, no retry

    # node 1 goes away: its agent first, then its Node; node 0's agent removes the route
    assert agents[1].stop() == 0
    apiserver.delete("nodes", names[1])
    del expected["10.244.1.0/24"]
    wait_for(lambda: routes(cloud, world) == expected, 10, "node 1's route removed")
    assert "its Node was deleted" in agents[0].log_tail(300)


def test_a_full_route_table_is_reported_with_the_numbers(apiserver, emulator, control,
                                                         start_agent):
    world = make_world(emulator, nodes=2)
    cloud = cloud_client(emulator)
    names = [add_node_with_cidr(apiserver, world, i, f"10.244.{i}.0/24") for i in range(2)]
    start_agent(world, node=0, node_name=names[0], **route_config(apiserver))
    wait_for(lambda: "10.244.0.0/24" in routes(cloud, world), 10, "node 0's route")
    control.set_route_table_limit(1)
    try:
        agent = start_agent(world, node=1, node_name=names[1],
                            **route_config(apiserver, route_table_limit=1))
        problem = wait_for(lambda: agent.pool()["route_problem"], 10, "the route problem")
        assert "is full: 1 of 1 routes used; cannot add 10.244.1.0/24" in problem, problem
        cond = wait_for(lambda: (lambda c: c if c.get("status") == "False" else None)(
            condition(apiserver, names[1])), 10, "the condition False")
        assert cond["reason"] == "RouteTableFull" and "1 of 1 routes used" in cond["message"]
        event = wait_for(lambda: [e for e in apiserver.list("events")
                                  if e["reason"] == "RouteTableFull"], 10, "the Node event")
        assert event[0]["involvedObject"] == {**event[0]["involvedObject"], "kind": "Node",
                                              "name": names[1]}
        assert "1 of 1 routes used" in event[0]["message"]
        control.set_route_table_limit(50)
        wait_for(lambda: "10.244.1.0/24" in routes(cloud, world), 10, "the route once room")
        wait_for(lambda: condition(apiserver, names[1]).get("status") == "True", 10,
                 "the condition True again")
    finally:
        control.set_route_table_limit(50)
