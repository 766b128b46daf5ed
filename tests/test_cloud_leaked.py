"""list_leaked_enis against the emulated EC2: only ENIs tagged with our cluster, available
and older than the threshold; never untagged, foreign, attached or young ones."""
from __future__ import annotations

import secrets

import pytest

from cloud import errors
from cloud.types import TAG_CLUSTER, TAG_CREATED_AT, TAG_NODE
from cloud_fixtures import call_count
from cloud_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(120)
NODES_PER_WORLD = 2
OLD = "2020-01-01T00:00:00+00:00"


def make_eni(setup_client, subnet_id: str, tags: dict[str, str]) -> str:
    spec = [{"ResourceType": "network-interface",
             "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
    made = setup_client.create_network_interface(SubnetId=subnet_id, TagSpecifications=spec)
    return made["NetworkInterface"]["NetworkInterfaceId"]


def test_only_our_old_available_enis_are_leaked(cloud, world, node, setup_client, control):
    cluster, foreign = f"leak-{secrets.token_hex(3)}", f"other-{secrets.token_hex(3)}"
    subnet = node.subnet_id

    def ours(**extra: str) -> dict[str, str]:
        return {TAG_CLUSTER: cluster, TAG_NODE: "node-x", TAG_CREATED_AT: OLD, **extra}

    leaked = make_eni(setup_client, subnet, ours())
    leaked_too = make_eni(setup_client, subnet, ours(**{TAG_CREATED_AT: "2024-05-01T10:00:00Z"}))
    never = {
        "untagged": make_eni(setup_client, subnet, {}),
        "foreign": make_eni(setup_client, subnet, {**ours(), TAG_CLUSTER: foreign}),
        "other tags only": make_eni(setup_client, subnet, {"Name": cluster}),
        "no created-at": make_eni(setup_client, subnet,
                                  {TAG_CLUSTER: cluster, TAG_NODE: "node-x"}),
        "bad created-at": make_eni(setup_client, subnet, ours(**{TAG_CREATED_AT: "yesterday"})),
        "naive created-at": make_eni(setup_client, subnet,
                                     ours(**{TAG_CREATED_AT: "2020-01-01T00:00:00"})),
        "attached": make_eni(setup_client, subnet, ours()),
        "young": cloud.create_eni(subnet, [], 0, cluster=cluster, node="node-x").id,
    }
    cloud.attach_eni(never["attached"], node.instance_id, 1)

    found = cloud.list_leaked_enis(cluster, older_than_seconds=300)
    assert sorted(e.id for e in found) == sorted([leaked, leaked_too])
    assert all(e.status == "available" and e.tag(TAG_CLUSTER) == cluster for e in found)
    assert not set(never.values()) & {e.id for e in found}
    assert call_count(control, "DescribeNetworkInterfaces") == 1  # filtered server-side

    # the young one counts once the threshold is shorter than its age
    now_found = {e.id for e in cloud.list_leaked_enis(cluster, older_than_seconds=0)}
    assert now_found == {leaked, leaked_too, never["young"]}
    assert cloud.list_leaked_enis(foreign, older_than_seconds=300)[0].id == never["foreign"]


def test_leaked_listing_refuses_bad_input(cloud, control):
    with pytest.raises(errors.InvalidRequest, match="cluster"):
        cloud.list_leaked_enis("", older_than_seconds=300)
    with pytest.raises(errors.InvalidRequest, match="older_than_seconds"):
        cloud.list_leaked_enis("c", older_than_seconds=-1)
    assert call_count(control, "DescribeNetworkInterfaces") == 0
