"""EC2's limits through the adapter, refused exactly at their numbers by the emulated EC2
over HTTP: ENIs per instance and IPv4 addresses per ENI (m5.large 3 x 10, t3.small 3 x 4)
and the free addresses of a /28 (11 usable)."""
from __future__ import annotations

import pytest

from cloud import errors
from cloud_fixtures import call_count, make_world
from cloud_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(120)
NODES_PER_WORLD = 3


@pytest.fixture(scope="module")
def small_world(emulator):
    return make_world(emulator, nodes=2, instance_type="t3.small", cluster="small",
                      subnet_cidrs=("10.0.0.0/24",))


@pytest.mark.parametrize(("instance_type", "enis", "ips"), [("m5.large", 3, 10),
                                                            ("t3.small", 3, 4)])
def test_ips_per_eni_are_refused_exactly_at_the_limit(cloud, control, instance_type, enis,
                                                      ips, world, small_world, free_nodes):
    instance = free_nodes.pop(0) if instance_type == "m5.large" else small_world.instances[0]
    limits = cloud.instance_limits(instance_type)
    assert (limits.max_enis, limits.ips_per_eni) == (enis, ips)
    primary = instance.primary_eni_id
    # the primary ENI holds its primary IP: fill it up to the limit, one short first
    cloud.assign_ips(primary, ips - 2)
    cloud.assign_ips(primary, 1)
    assert len(cloud.describe_eni(primary).secondary_ips) == ips - 1
    with pytest.raises(errors.IpLimitReached) as caught:
        cloud.assign_ips(primary, 1)
    assert caught.value.code == "PrivateIpAddressLimitExceeded"
    assert "AssignPrivateIpAddresses" in str(caught.value)
    assert len(cloud.describe_eni(primary).secondary_ips) == ips - 1  # nothing changed
    # a batch that would cross the limit is refused as a whole
    eni = cloud.create_eni(instance.subnet_id, [], 1, cluster="c", node="n")
    cloud.attach_eni(eni.id, instance.instance_id, 1)
    with pytest.raises(errors.IpLimitReached):
        cloud.assign_ips(eni.id, ips - 1)
    assert len(cloud.assign_ips(eni.id, ips - 2)) == ips - 2
    assert call_count(control, "AssignPrivateIpAddresses") == 5


@pytest.mark.parametrize(("instance_type", "enis"), [("m5.large", 3), ("t3.small", 3)])
def test_enis_per_instance_are_refused_exactly_at_the_limit(cloud, control, instance_type,
                                                            enis, world, small_world,
                                                            free_nodes):
    instance = free_nodes.pop(0) if instance_type == "m5.large" else small_world.instances[1]
    assert cloud.instance_limits(instance_type).max_enis == enis
    for index in range(1, enis):
        eni = cloud.create_eni(instance.subnet_id, [], 0, cluster="c", node="n")
        cloud.attach_eni(eni.id, instance.instance_id, index)
    extra = cloud.create_eni(instance.subnet_id, [], 0, cluster="c", node="n")
    with pytest.raises(errors.EniLimitReached) as caught:
        cloud.attach_eni(extra.id, instance.instance_id, enis)
    assert caught.value.code == "AttachmentLimitExceeded"
    assert "AttachNetworkInterface" in str(caught.value)
    assert len(cloud.list_enis(instance.instance_id)) == enis
    assert cloud.describe_eni(extra.id).status == "available"


def test_a_28_runs_out_after_11_addresses(cloud, control, add_subnet):
    subnet = add_subnet(28)
    assert cloud.describe_subnets([subnet])[0].free_addresses == 11
    with pytest.raises(errors.SubnetExhausted) as caught:  # 12 addresses in one go
        cloud.create_eni(subnet, [], 11, cluster="c", node="n")
    assert caught.value.code == "InsufficientFreeAddressesInSubnet"
    assert cloud.describe_subnets([subnet])[0].free_addresses == 11  # nothing taken
    first = cloud.create_eni(subnet, [], 5, cluster="c", node="n")
    second = cloud.create_eni(subnet, [], 3, cluster="c", node="n")
    cloud.assign_ips(second.id, 1)
    assert cloud.describe_subnets([subnet])[0].free_addresses == 0
    addresses = [ip for e in (cloud.describe_eni(first.id), cloud.describe_eni(second.id))
                 for ip in (e.primary_ip, *e.secondary_ips)]
    assert len(addresses) == len(set(addresses)) == 11
    with pytest.raises(errors.SubnetExhausted):
        cloud.assign_ips(first.id, 1)
    with pytest.raises(errors.SubnetExhausted):
        cloud.create_eni(subnet, [], 0, cluster="c", node="n")
    # a released address can be handed out again
    cloud.unassign_ips(second.id, [second.secondary_ips[0]])
    assert len(cloud.assign_ips(first.id, 1)) == 1
    assert call_count(control, "CreateNetworkInterface") == 4
