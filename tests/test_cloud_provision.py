"""provision_eni and release_eni against the emulated EC2 over HTTP: attach at the lowest
free index, move on when another attach takes it, and never leave an orphan ENI behind
when attaching fails."""
from __future__ import annotations

import pytest

from cloud import errors
from cloud.provision import provision_eni, release_eni
from cloud.types import TAG_CLUSTER, InstanceLimits
from cloud_fixtures import call_count, enis_of, make_cloud
from cloud_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(120)
NODES_PER_WORLD = 8


def provision(cloud, node, cluster, secondary_ips=2, limits=None):
    instance = cloud.describe_instance(node.instance_id)
    limits = limits or cloud.instance_limits(instance.instance_type)
    return provision_eni(cloud, instance, limits, instance.subnet_id, instance.security_groups,
                         secondary_ips, cluster, instance.id)


def test_provision_fills_the_lowest_free_indexes_then_stops_at_the_limit(
        cloud, control, node, cluster, setup_client):
    first = provision(cloud, node, cluster, secondary_ips=9)
    second = provision(cloud, node, cluster, secondary_ips=0)
    assert (first.device_index, second.device_index) == (1, 2)
    assert first.instance_id == node.instance_id and first.status == "in-use"
    assert len(first.secondary_ips) == 9 and first.tag(TAG_CLUSTER) == cluster
    creates = call_count(control, "CreateNetworkInterface")
    with pytest.raises(errors.EniLimitReached, match="already holds 3 ENIs"):
        provision(cloud, node, cluster)
    assert call_count(control, "CreateNetworkInterface") == creates  # refused up front
    # a freed index is reused
    release_eni(cloud, first)
    assert provision(cloud, node, cluster).device_index == 1
    assert len(enis_of(setup_client, cluster)) == 2


def test_attach_refused_at_the_eni_limit_leaves_no_orphan(cloud, control, node, cluster,
                                                          setup_client):
    """The caller's limits are stale (4 ENIs for an m5.large): EC2 refuses the attach with
    AttachmentLimitExceeded, and the ENI created for it is deleted again."""
    provision(cloud, node, cluster)
    provision(cloud, node, cluster)
    stale = InstanceLimits("m5.large", max_enis=4, ips_per_eni=10)
    with pytest.raises(errors.EniLimitReached) as caught:
        provision(cloud, node, cluster, limits=stale)
    assert caught.value.code == "AttachmentLimitExceeded"
    assert call_count(control, "CreateNetworkInterface") == 3
    assert call_count(control, "DeleteNetworkInterface") == 1
    assert len(enis_of(setup_client, cluster)) == 2  # the two attached ones, no orphan
    assert len(cloud.list_enis(node.instance_id)) == 3


def test_a_failing_attach_rolls_back(emulator, control, node, cluster, setup_client):
    control.set_faults([{"action": "AttachNetworkInterface", "kind": "5xx", "rate": 1.0}])
    cloud = make_cloud(emulator, attempts=2)
    with pytest.raises(errors.CloudUnavailable):
        provision(cloud, node, cluster)
    assert call_count(control, "AttachNetworkInterface") == 2
    assert enis_of(setup_client, cluster) == []


def test_attached_but_not_marked_rolls_back_by_detaching(emulator, control, node, cluster,
                                                        setup_client):
    """Attach succeeds, setting DeleteOnTermination fails: the rollback detaches the ENI
    and deletes it."""
    control.set_faults([{"action": "ModifyNetworkInterfaceAttribute", "kind": "5xx",
                         "rate": 1.0}])
    cloud = make_cloud(emulator, attempts=2)
    with pytest.raises(errors.CloudUnavailable):
        provision(cloud, node, cluster)

    assert enis_of(setup_client, cluster) == []
    assert [e.device_index for e in cloud.list_enis(node.instance_id)] == [0]


def test_an_index_taken_meanwhile_moves_on_to_the_next(emulator, control, node, cluster,
                                                      setup_client):
    """Another attach takes index 1 between the listing and our attach (a real
    interleaving: it runs when our CreateNetworkInterface has answered)."""
    rival = setup_client.create_network_interface(SubnetId=node.subnet_id)
    rival_id = rival["NetworkInterface"]["NetworkInterfaceId"]

    def on_call(action: str, outcome: str, _seconds: float) -> None:
        if (action, outcome) == ("CreateNetworkInterface", "ok"):
            setup_client.attach_network_interface(
                NetworkInterfaceId=rival_id, InstanceId=node.instance_id, DeviceIndex=1)

    cloud = make_cloud(emulator, on_call=on_call)
    eni = provision(cloud, node, cluster)
    assert eni.device_index == 2
    assert call_count(control, "AttachNetworkInterface") == 2
    by_index = {e.device_index: e.id for e in cloud.list_enis(node.instance_id)}
    assert by_index == {0: node.primary_eni_id, 1: rival_id, 2: eni.id}


def test_no_index_left_after_a_collision_rolls_back(emulator, control, node, cluster,
                                                    setup_client):
    provision(make_cloud(emulator), node, cluster)  # index 1
    rival = setup_client.create_network_interface(SubnetId=node.subnet_id)
    rival_id = rival["NetworkInterface"]["NetworkInterfaceId"]

    def on_call(action: str, outcome: str, _seconds: float) -> None:
        if (action, outcome) == ("CreateNetworkInterface", "ok"):
            setup_client.attach_network_interface(
                NetworkInterfaceId=rival_id, InstanceId=node.instance_id, DeviceIndex=2)

    with pytest.raises(errors.EniLimitReached, match="no free device index"):
        provision(make_cloud(emulator, on_call=on_call), node, cluster)
    assert len(enis_of(setup_client, cluster)) == 1  # only the first, attached one


def test_bad_secondary_count_is_refused_before_any_call(cloud, control, node, cluster):
    with pytest.raises(errors.InvalidRequest, match="between 0 and 9"):
        provision(cloud, node, cluster, secondary_ips=10)
    assert call_count(control, "CreateNetworkInterface") == 0


def test_release_detaches_waits_and_deletes(cloud, control, node, cluster, setup_client):
    eni = provision(cloud, node, cluster)
    release_eni(cloud, eni)
    assert enis_of(setup_client, cluster) == []
    assert [e.device_index for e in cloud.list_enis(node.instance_id)] == [0]
    assert call_count(control, "DetachNetworkInterface") == 1
    control.reset_counts()
    release_eni(cloud, eni)  # already gone: nothing to do, no error
    assert call_count(control, "DescribeNetworkInterfaces") == 1  # no consistency retries
    primary = cloud.describe_eni(node.primary_eni_id)
    with pytest.raises(errors.InvalidRequest, match="primary ENI"):
        release_eni(cloud, primary)
    assert call_count(control, "DetachNetworkInterface") == 0
