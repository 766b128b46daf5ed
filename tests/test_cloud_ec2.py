"""Every call of the EC2 adapter against the emulated EC2 over HTTP."""
from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from cloud import errors
from cloud.types import TAG_CLUSTER, TAG_CREATED_AT, TAG_NODE
from cloud_fixtures import call_count
from cloud_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(120)
NODES_PER_WORLD = 14


def test_describe_instance_returns_our_dataclass(cloud, world, node):
    instance = cloud.describe_instance(node.instance_id)
    assert instance.id == node.instance_id
    assert instance.instance_type == "m5.large"
    assert instance.vpc_id == world.vpc_id
    assert instance.subnet_id == world.subnet_ids[0]
    assert instance.primary_ip == node.primary_ip
    assert instance.primary_eni_id == node.primary_eni_id
    assert instance.security_groups == (world.security_group_id,)
    assert instance.availability_zone.startswith(world.region)


def test_describe_unknown_instance_is_not_found(cloud, world, node):
    with pytest.raises(errors.NotFound) as caught:
        cloud.describe_instance("i-0123456789abcdef0")
    assert "DescribeInstances" in str(caught.value)


def test_instance_limits_are_ec2s_numbers_and_cached(cloud, control, calls):
    assert (cloud.instance_limits("m5.large").max_enis,
            cloud.instance_limits("m5.large").ips_per_eni) == (3, 10)
    small = cloud.instance_limits("t3.small")
    assert (small.max_enis, small.ips_per_eni) == (3, 4)
    assert cloud.instance_limits("m5.large").max_pods == 29
    assert call_count(control, "DescribeInstanceTypes") == 2  # one per type, then cached
    assert calls.count(("DescribeInstanceTypes", "ok")) == 2


def test_unknown_instance_type_is_refused(cloud, control):
    with pytest.raises(errors.InvalidRequest) as caught:
        cloud.instance_limits("m5.gigantic")
    assert caught.value.code == "InvalidInstanceType" and "m5.gigantic" in str(caught.value)
    assert call_count(control, "DescribeInstanceTypes") == 1


def test_describe_subnets_counts_free_addresses(cloud, world, add_subnet):
    big_id, small_id = add_subnet(24), add_subnet(28)
    big, small = cloud.describe_subnets([big_id, small_id])
    assert (big.id, small.id) == (big_id, small_id)
    assert big.prefix_len == 24 and big.free_addresses == 256 - 5
    assert small.prefix_len == 28 and small.free_addresses == 11
    assert small.gateway == str(ipaddress.ip_network(small.cidr).network_address + 1)
    assert small.vpc_id == world.vpc_id
    cloud.create_eni(small.id, [world.security_group_id], 3, cluster="c", node="n")
    assert cloud.describe_subnets([small.id])[0].free_addresses == 11 - 4
    with pytest.raises(errors.InvalidRequest, match="non-empty list"):
        cloud.describe_subnets([])
    with pytest.raises(errors.NotFound):
        cloud.describe_subnets(["subnet-0123456789abcdef0"])


def test_create_eni_prefills_and_tags_in_one_call(cloud, world, node, control, setup_client):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    eni = cloud.create_eni(world.subnet_ids[0], [world.security_group_id], 4,
                           cluster="alpha", node="node-a")
    assert len(eni.secondary_ips) == 4 and eni.primary_ip not in eni.secondary_ips
    assert eni.status == "available" and eni.instance_id is None
    assert eni.tag(TAG_CLUSTER) == "alpha" and eni.tag(TAG_NODE) == "node-a"
    created = datetime.fromisoformat(eni.tag(TAG_CREATED_AT))
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert before <= created <= datetime.now(timezone.utc)
    assert call_count(control, "CreateNetworkInterface") == 1
    assert call_count(control, "CreateTags") == 0
    seen = cloud.describe_eni(eni.id)
    assert seen.tags == eni.tags and set(seen.secondary_ips) == set(eni.secondary_ips)
    assert seen.mac == eni.mac and len(seen.mac.split(":")) == 6
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(world.subnet_cidrs[0])
               for ip in (eni.primary_ip, *eni.secondary_ips))


def test_create_eni_bad_input_changes_nothing(cloud, world, node, control):
    for bad in (
        dict(subnet_id="subnet", security_groups=[], secondary_ips=1),
        dict(subnet_id=world.subnet_ids[0], security_groups="sg-1", secondary_ips=1),
        dict(subnet_id=world.subnet_ids[0], security_groups=[], secondary_ips=-1),
    ):
        with pytest.raises(errors.InvalidRequest) as caught:
            cloud.create_eni(bad["subnet_id"], bad["security_groups"], bad["secondary_ips"],
                             cluster="c", node="n")
        assert "CreateNetworkInterface" in str(caught.value)
    with pytest.raises(errors.InvalidRequest, match="cluster and node"):
        cloud.create_eni(world.subnet_ids[0], [], 1, cluster="", node="n")
    assert call_count(control, "CreateNetworkInterface") == 0


def test_attach_sets_delete_on_termination_and_list_is_sorted(cloud, world, node, setup_client):
    first = cloud.create_eni(world.subnet_ids[0], [world.security_group_id], 1,
                             cluster="c", node="n")
    second = cloud.create_eni(world.subnet_ids[0], [world.security_group_id], 1,
                              cluster="c", node="n")
    # attach the later index first: the listing must still come back in index order
    attachment = cloud.attach_eni(second.id, node.instance_id, 2)
    cloud.attach_eni(first.id, node.instance_id, 1)
    assert attachment.startswith("eni-attach-")
    enis = cloud.list_enis(node.instance_id)
    assert [(e.id, e.device_index) for e in enis] == [
        (node.primary_eni_id, 0), (first.id, 1), (second.id, 2)]
    assert all(e.instance_id == node.instance_id and e.status == "in-use" for e in enis)
    assert cloud.describe_eni(second.id).attachment_id == attachment


def test_attach_sets_delete_on_termination(cloud, world, node, control, setup_client):
    sent = []
    cloud._client.meta.events.register(
        "provide-client-params.ec2.ModifyNetworkInterfaceAttribute",
        lambda params, **_: sent.append(params),
    )
    eni = cloud.create_eni(world.subnet_ids[0], [], 0, cluster="c", node="n")
    attachment = cloud.attach_eni(eni.id, node.instance_id, 1)
    assert sent == [{"NetworkInterfaceId": eni.id,
                     "Attachment": {"AttachmentId": attachment, "DeleteOnTermination": True}}]
    assert call_count(control, "ModifyNetworkInterfaceAttribute") == 1
    raw = setup_client.describe_network_interfaces(NetworkInterfaceIds=[eni.id])
    assert raw["NetworkInterfaces"][0]["Attachment"]["DeleteOnTermination"] is True


def test_list_enis_of_another_instance_is_separate(cloud, world, free_nodes):
    mine, other = free_nodes.pop(0), free_nodes.pop(0)
    eni = cloud.create_eni(world.subnet_ids[0], [], 0, cluster="c", node="n")
    cloud.attach_eni(eni.id, mine.instance_id, 1)
    assert [e.id for e in cloud.list_enis(other.instance_id)] == [other.primary_eni_id]
    assert [e.id for e in cloud.list_enis(mine.instance_id)] == [mine.primary_eni_id, eni.id]


def test_detach_then_delete(cloud, world, node):
    eni = cloud.create_eni(world.subnet_ids[0], [world.security_group_id], 0,
                           cluster="c", node="n")
    attachment = cloud.attach_eni(eni.id, node.instance_id, 1)
    with pytest.raises(errors.InUse) as caught:
        cloud.delete_eni(eni.id)  # still attached
    assert caught.value.action == "DeleteNetworkInterface"
    cloud.detach_eni(attachment)
    assert cloud.describe_eni(eni.id).status == "available"
    cloud.delete_eni(eni.id)
    with pytest.raises(errors.NotFound):
        cloud.describe_eni(eni.id)
    with pytest.raises(errors.NotFound):
        cloud.delete_eni(eni.id)


def test_assign_returns_only_the_new_addresses_and_unassign_removes(cloud, world, node, control):
    eni = cloud.create_eni(world.subnet_ids[0], [world.security_group_id], 2,
                           cluster="c", node="n")
    added = cloud.assign_ips(eni.id, 5)
    assert len(added) == 5 and len(set(added)) == 5
    assert not set(added) & {eni.primary_ip, *eni.secondary_ips}
    assert call_count(control, "AssignPrivateIpAddresses") == 1
    now = cloud.describe_eni(eni.id)
    assert set(now.secondary_ips) == set(eni.secondary_ips) | set(added)
    cloud.unassign_ips(eni.id, list(added[:3]))
    assert set(cloud.describe_eni(eni.id).secondary_ips) == (
        set(eni.secondary_ips) | set(added[3:]))


def test_assign_and_unassign_refuse_bad_input(cloud, world, node, control):
    eni = cloud.create_eni(world.subnet_ids[0], [], 0, cluster="c", node="n")
    for count in (0, -2, True, "3"):
        with pytest.raises(errors.InvalidRequest, match="count"):
            cloud.assign_ips(eni.id, count)
    with pytest.raises(errors.InvalidRequest, match="not an IPv4 address"):
        cloud.unassign_ips(eni.id, ["10.0.0.300"])
    with pytest.raises(errors.InvalidRequest, match="non-empty list"):
        cloud.unassign_ips(eni.id, "10.0.0.9")
    assert call_count(control, "AssignPrivateIpAddresses") == 0
    assert call_count(control, "UnassignPrivateIpAddresses") == 0


def test_source_dest_check(cloud, world, node):
    cloud.set_source_dest_check(node.primary_eni_id, False)
    assert cloud.describe_eni(node.primary_eni_id).source_dest_check is False
    cloud.set_source_dest_check(node.primary_eni_id, True)
    assert cloud.describe_eni(node.primary_eni_id).source_dest_check is True


def test_routes_to_an_eni(cloud, world, node):
    eni = cloud.create_eni(world.subnet_ids[0], [], 0, cluster="c", node="n")
    tables = cloud.describe_route_tables(world.vpc_id)
    assert {t.id for t in tables} == set(world.route_table_ids)
    table = tables[0]
    assert any(r.destination_cidr == "10.0.0.0/16" and r.gateway_id == "local"
               for r in table.routes)

    def route_to(cidr):
        current = {t.id: t for t in cloud.describe_route_tables(world.vpc_id)}[table.id]
        return next((r for r in current.routes if r.destination_cidr == cidr), None)

    cloud.create_route(table.id, "10.64.1.0/24", node.primary_eni_id)
    assert route_to("10.64.1.0/24").eni_id == node.primary_eni_id
    with pytest.raises(errors.CloudError) as caught:  # EC2: RouteAlreadyExists
        cloud.create_route(table.id, "10.64.1.0/24", eni.id)
    assert caught.value.code == "RouteAlreadyExists"
    cloud.replace_route(table.id, "10.64.1.0/24", eni.id)
    assert route_to("10.64.1.0/24").eni_id == eni.id
    cloud.delete_route(table.id, "10.64.1.0/24")
    assert route_to("10.64.1.0/24") is None
    with pytest.raises(errors.NotFound):
        cloud.delete_route(table.id, "10.64.1.0/24")
    with pytest.raises(errors.InvalidRequest, match="10.64.1.1/24"):
        cloud.create_route(table.id, "10.64.1.1/24", eni.id)


def test_on_call_reports_each_call_and_outcome(cloud, world, node, calls):
    with pytest.raises(errors.NotFound):
        cloud.describe_eni("eni-0123456789abcdef0")
    cloud.describe_eni(node.primary_eni_id)
    assert calls[-2:] == [
        ("DescribeNetworkInterfaces", "InvalidNetworkInterfaceID.NotFound"),
        ("DescribeNetworkInterfaces", "ok"),
    ]


def test_one_adapter_serves_many_threads(cloud, world, control, calls):
    """The agent shares one adapter between its loops: concurrent calls each get their
    own answer, and on_call sees every one of them."""
    def grow(_: int) -> set[str]:
        eni = cloud.create_eni(world.subnet_ids[0], [], 2, cluster="c", node="n")
        added = cloud.assign_ips(eni.id, 3)
        return {eni.primary_ip, *eni.secondary_ips, *added}

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(grow, range(6)))
    assert all(len(r) == 6 for r in results)
    assert len(set().union(*results)) == 36  # no address handed out twice
    assert call_count(control, "CreateNetworkInterface") == 6
    assert calls.count(("AssignPrivateIpAddresses", "ok")) == 6
