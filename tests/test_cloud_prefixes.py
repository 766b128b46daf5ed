"""Prefix delegation through the EC2 adapter and provision_eni, against the emulated EC2
over HTTP: prefixes in our Eni, assign_prefixes / unassign_prefixes, ENIs created or
provisioned pre-filled with prefixes, a fragmented subnet as SubnetFragmented naming the
subnet, and refused calls that leave nothing behind."""
from __future__ import annotations

import ipaddress

import pytest

from cloud import errors
from cloud.provision import provision_eni
from cloud_fixtures import call_count, enis_of
from cloud_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(120)
NODES_PER_WORLD = 8


def aligned(prefixes) -> bool:
    networks = [ipaddress.ip_network(p) for p in prefixes]
    return all(n.prefixlen == 28 for n in networks) and len(set(networks)) == len(networks)


@pytest.fixture
def fragmented_subnet(add_subnet, setup_client) -> str:
    """A new /24 with one address inside each of its 14 candidate /28 blocks."""
    subnet_id = add_subnet(24)
    cidr = ipaddress.ip_network(setup_client.describe_subnets(
        SubnetIds=[subnet_id])["Subnets"][0]["CidrBlock"])
    addresses = [str(cidr.network_address + 16 * block + 5) for block in range(1, 15)]
    setup_client.create_network_interface(
        SubnetId=subnet_id, PrivateIpAddresses=[
            {"PrivateIpAddress": a, "Primary": i == 0} for i, a in enumerate(addresses)])
    return subnet_id


def test_assign_returns_only_the_new_prefixes_and_unassign_removes_them(cloud, node, control):
    first = cloud.assign_prefixes(node.primary_eni_id, 2)
    second = cloud.assign_prefixes(node.primary_eni_id, 3)
    assert len(first) == 2 and len(second) == 3 and aligned(first + second)
    assert call_count(control, "AssignPrivateIpAddresses") == 2
    eni = cloud.describe_eni(node.primary_eni_id)
    assert eni.prefixes == first + second and eni.secondary_ips == ()
    assert eni.address_slots == 1 + 5
    assert not any(ipaddress.ip_address(eni.primary_ip) in ipaddress.ip_network(p)
                   for p in eni.prefixes)
    assert cloud.list_enis(node.instance_id)[0].prefixes == first + second
    cloud.unassign_prefixes(node.primary_eni_id, [first[1], second[0]])
    assert cloud.describe_eni(node.primary_eni_id).prefixes == (first[0],) + second[1:]


def test_prefixes_and_addresses_share_the_m5_large_slots(cloud, node):
    """1 primary + 9 prefixes fill an m5.large ENI's 10 slots: the 10th is refused."""
    assert len(cloud.assign_prefixes(node.primary_eni_id, 9)) == 9
    with pytest.raises(errors.IpLimitReached) as caught:
        cloud.assign_prefixes(node.primary_eni_id, 1)
    assert caught.value.code == "PrivateIpAddressLimitExceeded"
    with pytest.raises(errors.IpLimitReached):
        cloud.assign_ips(node.primary_eni_id, 1)
    assert cloud.describe_eni(node.primary_eni_id).address_slots == 10


def test_create_eni_pre_filled_with_prefixes_in_one_call(cloud, world, control, setup_client,
                                                          cluster):
    eni = cloud.create_eni(world.subnet_ids[0], [world.security_group_id], 0, cluster=cluster,
                           node="n", prefix_count=4)
    assert len(eni.prefixes) == 4 and aligned(eni.prefixes) and eni.secondary_ips == ()
    assert call_count(control, "CreateNetworkInterface") == 1
    assert call_count(control, "AssignPrivateIpAddresses") == 0
    listed = enis_of(setup_client, cluster)[0]
    assert tuple(p["Ipv4Prefix"] for p in listed["Ipv4Prefixes"]) == eni.prefixes


def test_a_fragmented_subnet_is_subnet_fragmented_naming_the_subnet(cloud, world,
                                                                     fragmented_subnet,
                                                                     setup_client, cluster):
    loose = cloud.create_eni(fragmented_subnet, [], 1, cluster=cluster, node="n")
    with pytest.raises(errors.SubnetFragmented) as caught:
        cloud.assign_prefixes(loose.id, 1)
    error = caught.value
    assert error.code == "InsufficientCidrBlocks" and error.cni_code == 108
    assert f"subnet {fragmented_subnet} has no free aligned /28" in str(error)
    assert cloud.describe_eni(loose.id).prefixes == ()
    assert cloud.assign_ips(loose.id, 3)  # single addresses still come
    with pytest.raises(errors.SubnetFragmented, match=f"subnet {fragmented_subnet}"):
        cloud.create_eni(fragmented_subnet, [], 0, cluster=cluster, node="n", prefix_count=1)
    assert [e["NetworkInterfaceId"] for e in enis_of(setup_client, cluster)] == [loose.id]


def test_provision_eni_attaches_an_eni_pre_filled_with_prefixes(cloud, node, control, cluster):
    instance = cloud.describe_instance(node.instance_id)
    limits = cloud.instance_limits(instance.instance_type)
    eni = provision_eni(cloud, instance, limits, instance.subnet_id, instance.security_groups,
                        0, cluster, instance.id, prefix_count=9)
    assert (eni.device_index, eni.instance_id, eni.status) == (1, instance.id, "in-use")
    assert len(eni.prefixes) == 9 and eni.secondary_ips == () and eni.address_slots == 10
    creates = call_count(control, "CreateNetworkInterface")
    for kwargs, words in (({"secondary_ips": 0, "prefix_count": 10}, "prefix_count must be"),
                          ({"secondary_ips": 0, "prefix_count": -1}, "prefix_count must be"),
                          ({"secondary_ips": 2, "prefix_count": 2}, "not both")):
        with pytest.raises(errors.InvalidRequest, match=words):
            provision_eni(cloud, instance, limits, instance.subnet_id,
                          instance.security_groups, kwargs["secondary_ips"], cluster,
                          instance.id, prefix_count=kwargs["prefix_count"])
    assert call_count(control, "CreateNetworkInterface") == creates  # refused up front


def test_provision_refused_in_a_fragmented_subnet_leaves_nothing(cloud, node, control,
                                                                  fragmented_subnet,
                                                                  setup_client, cluster):
    instance = cloud.describe_instance(node.instance_id)
    limits = cloud.instance_limits(instance.instance_type)
    with pytest.raises(errors.SubnetFragmented, match=f"subnet {fragmented_subnet}"):
        provision_eni(cloud, instance, limits, fragmented_subnet, instance.security_groups,
                      0, cluster, instance.id, prefix_count=2)
    assert enis_of(setup_client, cluster) == []
    assert call_count(control, "AttachNetworkInterface") == 0
    assert [e.device_index for e in cloud.list_enis(instance.id)] == [0]


def test_provision_with_prefixes_on_a_type_that_is_not_nitro_leaves_no_orphan(
        cloud, world, control, setup_client, cluster):
    """Creating an ENI with prefixes succeeds (an unattached ENI has no instance type);
    EC2 refuses to attach it to a t2.medium, and provision_eni deletes it again."""
    launched = setup_client.run_instances(
        ImageId="ami-760aaa0f", MinCount=1, MaxCount=1, InstanceType="t2.medium",
        SubnetId=world.subnet_ids[0], SecurityGroupIds=[world.security_group_id],
    )["Instances"][0]
    instance = cloud.describe_instance(launched["InstanceId"])
    limits = cloud.instance_limits("t2.medium")
    with pytest.raises(errors.InvalidRequest, match="t2.medium.*Nitro|Nitro.*t2.medium"):
        provision_eni(cloud, instance, limits, instance.subnet_id, instance.security_groups,
                      0, cluster, instance.id, prefix_count=2)
    assert call_count(control, "CreateNetworkInterface") == 1
    assert call_count(control, "DeleteNetworkInterface") == 1
    assert enis_of(setup_client, cluster) == []
    assert [e.device_index for e in cloud.list_enis(instance.id)] == [0]


def test_prefix_calls_refuse_bad_input_before_any_call(cloud, world, node, control):
    eni_id = node.primary_eni_id
    for count in (0, -1, True, "2"):
        with pytest.raises(errors.InvalidRequest, match="count"):
            cloud.assign_prefixes(eni_id, count)
    with pytest.raises(errors.InvalidRequest, match="ENI id"):
        cloud.assign_prefixes("i-123", 1)
    for bad, words in (([], "non-empty list"), ("10.0.0.16/28", "non-empty list"),
                       (["10.0.0.24/28"], "host bits zero"), (["10.0.0.0/27"], "/28 prefix"),
                       (["10.0.0.16"], "/28 prefix"), (["banana"], "not an IPv4 CIDR")):
        with pytest.raises(errors.InvalidRequest, match=words):
            cloud.unassign_prefixes(eni_id, bad)
    for secondary, prefixes, words in ((1, 1, "not both"), (0, -1, "prefix_count")):
        with pytest.raises(errors.InvalidRequest, match=words):
            cloud.create_eni(world.subnet_ids[0], [], secondary, cluster="c", node="n",
                             prefix_count=prefixes)
    for action in ("AssignPrivateIpAddresses", "UnassignPrivateIpAddresses",
                   "CreateNetworkInterface"):
        assert call_count(control, action) == 0
    assert cloud.describe_eni(eni_id).prefixes == ()
