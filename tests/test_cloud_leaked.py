"""list_leaked_enis against the emulated EC2: only ENIs tagged with our cluster, available
and older than the threshold; never untagged, foreign, attached or young ones."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import pytest

from cloud import errors
from cloud.leaks import select_leaked_enis
from cloud.types import TAG_CLUSTER, TAG_CREATED_AT, TAG_NODE, Eni
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


def eni(eni_id: str, status: str = "available", **tags: str) -> Eni:
    return Eni(id=eni_id, mac="02:00:00:00:00:01", subnet_id="subnet-1", vpc_id="vpc-1",
               primary_ip="10.0.0.9", secondary_ips=(), status=status,
               tags=tuple(sorted(tags.items())))


def test_selection_is_decided_by_tags_state_and_age_only():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    five_min = timedelta(minutes=5)

    def ours(eni_id, created, status="available"):
        return eni(eni_id, status, **{TAG_CLUSTER: "c1", TAG_CREATED_AT: created})

    candidates = [
        ours("eni-old", "2026-01-01T11:54:59+00:00"),
        ours("eni-edge", "2026-01-01T11:55:00+00:00"),   # exactly the threshold: counts
        ours("eni-young", "2026-01-01T11:55:01+00:00"),
        ours("eni-future", "2027-01-01T00:00:00+00:00"),  # a skewed clock: never
        ours("eni-other-offset", "2026-01-01T13:54:00+02:00"),  # 11:54 UTC
        ours("eni-in-use", "2020-01-01T00:00:00+00:00", status="in-use"),
        ours("eni-naive", "2020-01-01T00:00:00"),
        eni("eni-foreign", **{TAG_CLUSTER: "c2", TAG_CREATED_AT: "2020-01-01T00:00:00+00:00"}),
        eni("eni-prefix", **{TAG_CLUSTER: "c1-x", TAG_CREATED_AT: "2020-01-01T00:00:00Z"}),
        eni("eni-untagged"),
    ]
    chosen = [e.id for e in select_leaked_enis(candidates, "c1", five_min, now)]
    assert chosen == ["eni-edge", "eni-old", "eni-other-offset"]
    with pytest.raises(ValueError, match="timezone-aware"):
        select_leaked_enis(candidates, "c1", five_min, now.replace(tzinfo=None))
