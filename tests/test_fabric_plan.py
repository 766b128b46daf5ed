"""The fabric's plan as a pure function of the cloud snapshot (no kernel, no cloud): the
shape snapshot.py produces, read into a view, turned into links, routes, neighbours and
the source/destination-check ruleset."""
from __future__ import annotations

import copy

import pytest

from lab.fabric_plan import (
    Neighbour,
    RouterRoute,
    SnapshotError,
    name_router_link,
    plan_fabric,
    read_view,
)

VPC, OTHER_VPC = "vpc-1", "vpc-2"


def eni(eni_id, instance, index, ips, *, subnet="subnet-a", vpc=VPC, check=True,
        status="in-use", mac=None):
    return {"id": eni_id, "mac": mac or f"02:00:00:00:00:{len(eni_id):02x}",
            "subnet_id": subnet, "vpc_id": vpc, "status": status, "instance_id": instance,
            "device_index": index, "primary_ip": ips[0], "ips": list(ips),
            "source_dest_check": check}


SNAPSHOT = {
    "vpcs": [{"id": VPC, "cidr": "10.0.0.0/16"}],
    "subnets": [{"id": "subnet-a", "vpc_id": VPC, "cidr": "10.0.0.0/24"},
                {"id": "subnet-b", "vpc_id": VPC, "cidr": "10.0.1.0/24"},
                {"id": "subnet-x", "vpc_id": OTHER_VPC, "cidr": "10.0.0.0/24"}],
    "instances": [{"id": "i-1", "state": "running", "subnet_id": "subnet-a"},
                  {"id": "i-2", "state": "running", "subnet_id": "subnet-b"},
                  {"id": "i-gone", "state": "terminated", "subnet_id": "subnet-a"},
                  {"id": "i-x", "state": "running", "subnet_id": "subnet-x"}],
    "enis": [
        eni("eni-1", "i-1", 0, ["10.0.0.4", "10.0.0.10", "10.0.0.11"]),
        eni("eni-1b", "i-1", 1, ["10.0.0.20", "10.0.0.21"], check=False),
        eni("eni-2", "i-2", 0, ["10.0.1.4"], subnet="subnet-b"),
        eni("eni-free", None, None, ["10.0.0.30"], status="available"),
        eni("eni-gone", "i-gone", 0, ["10.0.0.40"]),  # still attached to a dead instance
        eni("eni-x", "i-x", 0, ["10.0.0.4"], subnet="subnet-x", vpc=OTHER_VPC),
    ],
    "route_tables": [
        {"id": "rtb-1", "vpc_id": VPC, "routes": [
            {"destination": "10.0.0.0/16", "local": True, "eni_id": None,
             "instance_id": None, "gateway_id": None},
            {"destination": "10.244.1.0/24", "local": False, "eni_id": "eni-1b",
             "instance_id": None, "gateway_id": None},
            {"destination": "10.244.2.0/24", "local": False, "eni_id": None,
             "instance_id": "i-2", "gateway_id": None},
            {"destination": "10.244.9.0/24", "local": False, "eni_id": "eni-free",
             "instance_id": None, "gateway_id": None},
        ]},
        {"id": "rtb-x", "vpc_id": OTHER_VPC, "routes": [
            {"destination": "10.244.3.0/24", "local": False, "eni_id": "eni-x",
             "instance_id": None, "gateway_id": None}]},
    ],
}


def test_view_keeps_one_vpc_attached_enis_and_live_instances():
    view = read_view(SNAPSHOT, VPC)
    assert view.instances == ("i-1", "i-2")
    assert [(e.id, e.instance_id, e.device_index) for e in view.enis] == [
        ("eni-1", "i-1", 0), ("eni-1b", "i-1", 1), ("eni-2", "i-2", 0)]
    assert view.enis[2].subnet_cidr == "10.0.1.0/24"
    assert [r.cidr for r in view.routes] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.9.0/24"]


def test_plan_links_routes_and_neighbours():
    plan = plan_fabric(read_view(SNAPSHOT, VPC))
    links = {link.eni.id: link for link in plan.links}
    assert {(k, v.node, v.ifname, v.gateway, v.prefix_len) for k, v in links.items()} == {
        ("eni-1", "i-1", "eth0", "10.0.0.1", 24), ("eni-1b", "i-1", "eth1", "10.0.0.1", 24),
        ("eni-2", "i-2", "eth0", "10.0.1.1", 24)}
    dev1, dev1b, dev2 = (links[e].router_ifname for e in ("eni-1", "eni-1b", "eni-2"))
    assert plan.routes == {
        RouterRoute("10.0.0.4/32", dev1), RouterRoute("10.0.0.10/32", dev1),
        RouterRoute("10.0.0.11/32", dev1), RouterRoute("10.0.0.20/32", dev1b),
        RouterRoute("10.0.0.21/32", dev1b), RouterRoute("10.0.1.4/32", dev2),
        # an ENI target goes to that ENI's primary address; an instance to its primary ENI
        RouterRoute("10.244.1.0/24", dev1b, "10.0.0.20"),
        RouterRoute("10.244.2.0/24", dev2, "10.0.1.4"),
        # 10.244.9.0/24 targets a detached ENI: a blackhole, not routed
    }
    assert Neighbour("10.0.0.21", dev1b, links["eni-1b"].eni.mac) in plan.neighbours
    assert len(plan.neighbours) == 6


def test_filter_checks_only_enis_with_the_check_on():
    plan = plan_fabric(read_view(SNAPSHOT, VPC))
    links = {link.eni.id: link.router_ifname for link in plan.links}
    rules = plan.filter_rules.splitlines()
    assert rules[0] == "*filter" and rules[-1] == "COMMIT"
    dev1, dev1b = links["eni-1"], links["eni-1b"]
    for ip in ("10.0.0.4", "10.0.0.10", "10.0.0.11"):
        assert f"-A S{dev1} -s {ip}/32 -j RETURN" in rules
        assert f"-A D{dev1} -d {ip}/32 -j RETURN" in rules
    assert rules.index(f"-A S{dev1} -j DROP") > rules.index(f"-A S{dev1} -s 10.0.0.11/32 -j RETURN")
    assert f"-A FORWARD -i {dev1} -j S{dev1}" in rules
    assert not [r for r in rules if dev1b in r]  # check off: nothing filters eni-1b


def test_a_change_in_the_cloud_changes_only_what_it_touches():
    before = plan_fabric(read_view(SNAPSHOT, VPC))
    changed = copy.deepcopy(SNAPSHOT)
    changed["enis"][2]["ips"].append("10.0.1.50")
    after = plan_fabric(read_view(changed, VPC))
    assert after.routes - before.routes == {
        RouterRoute("10.0.1.50/32", name_router_link("eni-2"))}
    assert before.routes - after.routes == set()
    assert [link.alias for link in after.links] == [link.alias for link in before.links]


def test_a_reattached_eni_gets_a_new_alias_so_its_link_is_replaced():
    moved = copy.deepcopy(SNAPSHOT)
    moved["enis"][1]["instance_id"], moved["enis"][1]["device_index"] = "i-2", 1
    old = {link.eni.id: link.alias for link in plan_fabric(read_view(SNAPSHOT, VPC)).links}
    new = {link.eni.id: link.alias for link in plan_fabric(read_view(moved, VPC)).links}
    assert old["eni-1b"] != new["eni-1b"] and old["eni-1"] == new["eni-1"]


def test_router_link_names_fit_ifnamsiz_and_differ():
    names = {name_router_link(f"eni-{i:017x}") for i in range(2000)}
    assert len(names) == 2000 and max(map(len, names)) <= 15


def test_an_address_held_twice_is_routed_once_and_a_route_cannot_steal_an_eni_address():
    twice = copy.deepcopy(SNAPSHOT)
    twice["enis"][2]["ips"].append("10.0.0.10")
    twice["route_tables"][0]["routes"].append(
        {"destination": "10.0.0.11/32", "eni_id": "eni-2", "instance_id": None})
    plan = plan_fabric(read_view(twice, VPC))
    dsts = [r.dst for r in plan.routes]
    assert dsts.count("10.0.0.10/32") == 1 and dsts.count("10.0.0.11/32") == 1
    assert RouterRoute("10.0.0.11/32", name_router_link("eni-1")) in plan.routes


def test_bad_snapshots_are_named():
    no_cidr = copy.deepcopy(SNAPSHOT)
    no_cidr["subnets"] = []
    with pytest.raises(SnapshotError, match="eni-1 is in subnet subnet-a with no CIDR"):
        read_view(no_cidr)
    no_ips = copy.deepcopy(SNAPSHOT)
    no_ips["enis"][0]["ips"] = []
    with pytest.raises(SnapshotError, match="eni-1 has no private IP"):
        read_view(no_ips)
    with pytest.raises(SnapshotError, match="none of the fields"):
        read_view({"subnets": []})


def with_prefixes() -> dict:
    snapshot = copy.deepcopy(SNAPSHOT)
    snapshot["enis"][0]["prefixes"] = ["10.0.0.48/28", "10.0.0.64/28"]  # eni-1, check on
    snapshot["enis"][1]["prefixes"] = ["10.0.0.80/28"]  # eni-1b, check off
    return snapshot


def test_a_prefix_is_one_route_to_its_eni_via_the_enis_primary_address():
    plan = plan_fabric(read_view(with_prefixes(), VPC))
    dev1, dev1b = name_router_link("eni-1"), name_router_link("eni-1b")
    assert {r for r in plan.routes if not r.dst.endswith("/32") and r.dst.startswith("10.0.0.")} \
        == {RouterRoute("10.0.0.48/28", dev1, "10.0.0.4"),
            RouterRoute("10.0.0.64/28", dev1, "10.0.0.4"),
            RouterRoute("10.0.0.80/28", dev1b, "10.0.0.20")}
    # no neighbour entry per address inside a prefix: the via address's entry carries it
    assert len(plan.neighbours) == 6
    assert read_view(SNAPSHOT, VPC).enis[0].prefixes == ()  # a snapshot without prefixes


def test_source_dest_check_covers_every_address_inside_a_prefix():
    plan = plan_fabric(read_view(with_prefixes(), VPC))
    dev1, dev1b = name_router_link("eni-1"), name_router_link("eni-1b")
    rules = plan.filter_rules.splitlines()
    for prefix in ("10.0.0.48/28", "10.0.0.64/28"):
        assert f"-A S{dev1} -s {prefix} -j RETURN" in rules
        assert f"-A D{dev1} -d {prefix} -j RETURN" in rules
        assert rules.index(f"-A S{dev1} -j DROP") > rules.index(f"-A S{dev1} -s {prefix} -j RETURN")
    assert not [r for r in rules if dev1b in r]  # check off: its prefix is not filtered either
    assert not [r for r in rules if "10.0.0.80/28" in r]


def test_a_prefix_held_twice_is_routed_once_and_a_route_cannot_steal_it():
    twice = with_prefixes()
    twice["enis"][2]["prefixes"] = ["10.0.0.48/28"]  # eni-2 claims eni-1's prefix
    twice["route_tables"][0]["routes"].append(
        {"destination": "10.0.0.64/28", "eni_id": "eni-2", "instance_id": None})
    plan = plan_fabric(read_view(twice, VPC))
    by_dst = {r.dst: r for r in plan.routes}
    assert [r.dst for r in plan.routes].count("10.0.0.48/28") == 1
    assert by_dst["10.0.0.48/28"].dev == by_dst["10.0.0.64/28"].dev == name_router_link("eni-1")
