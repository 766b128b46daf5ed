"""Warning events: the reasons come from real errors of the emulated cloud (subnet
exhausted, ENI limit, throttling) and reach the fake API server with their numbers; they
are rate-limited per (reason, object); a slow or down API server never blocks the caller."""
from __future__ import annotations

import pytest

from cloud import errors as cloud_errors
from cloud_fixtures import control, emulator, make_cloud, make_world  # noqa: F401
from fake_apiserver.fixtures import apiserver, kube_api, wait_until  # noqa: F401
from ipam_daemon.kube.events import EventRecorder, Reason, describe, reason_for_cloud_error


def events_on(server, reason: str | None = None) -> list[dict]:
    return [e for e in server.list("events") if reason is None or e["reason"] == reason]


@pytest.fixture
def recorder(apiserver):
    with kube_api(apiserver) as api:
        rec = EventRecorder(api, "node-a", interval=60.0, queue_size=64).start()
        try:
            yield rec
        finally:
            rec.stop()


def test_reasons_from_the_emulated_cloud_reach_the_pod(apiserver, recorder, emulator, control):
    world = make_world(emulator, nodes=1, instance_type="t3.micro", subnet_cidrs=("10.0.0.0/28",))
    node = world.instances[0]
    cloud = make_cloud(emulator, attempts=2)
    try:
        subnet = world.subnet_ids[0]
        # ENI limit: a t3.micro takes 2 ENIs; the primary plus one, then the cloud refuses
        second = cloud.create_eni(subnet, [world.security_group_id], 1, cluster=world.cluster, node=node.name)
        cloud.attach_eni(second.id, node.instance_id, 1)
        third = cloud.create_eni(subnet, [world.security_group_id], 0, cluster=world.cluster, node=node.name)
        with pytest.raises(cloud_errors.CloudError) as limit:
            cloud.attach_eni(third.id, node.instance_id, 2)
        # subnet exhausted: a /28 has 11 usable addresses and 4 are taken by now
        free = cloud.describe_subnets([subnet])[0].free_addresses
        with pytest.raises(cloud_errors.CloudError) as exhausted:
            cloud.create_eni(subnet, [world.security_group_id], free + 1, cluster=world.cluster, node=node.name)
        # throttling injected into the emulated cloud
        control.set_faults([{"action": "UnassignPrivateIpAddresses", "kind": "throttle", "rate": 1.0}])
        with pytest.raises(cloud_errors.CloudError) as throttled:
            cloud.unassign_ips(second.id, list(second.secondary_ips))
    finally:
        cloud.close()
    cases = [
        (limit.value, "web-0", describe(Reason.ENI_LIMIT_REACHED, enis_used=2, enis_max=2)),
        (exhausted.value, "web-1", describe(Reason.SUBNET_EXHAUSTED, subnet=subnet, free_addresses=free)),
        (throttled.value, "web-2", describe(Reason.CLOUD_THROTTLED, ips_assigned=1, ips_capacity=2)),
    ]
    for error, pod, message in cases:
        assert recorder.warn_pod("shop", pod, f"uid-{pod}", reason_for_cloud_error(error), message)
    wait_until(lambda: len(events_on(apiserver)) == 3, "three events")
    got = {e["involvedObject"]["name"]: e for e in events_on(apiserver)}
    assert {name: e["reason"] for name, e in got.items()} == {
        "web-0": "ENILimitReached", "web-1": "SubnetExhausted", "web-2": "CloudThrottled"}
    assert "2 of 2 ENIs in use" in got["web-0"]["message"]
    assert f"subnet {subnet} has {free} free addresses" in got["web-1"]["message"]
    assert "1 of 2 pod IPs assigned" in got["web-2"]["message"]
    for event in got.values():
        assert event["type"] == "Warning" and event["metadata"]["namespace"] == "shop"
        assert event["involvedObject"]["kind"] == "Pod" and event["source"]["component"] == "underlay-agent"


def test_rate_limited_per_reason_and_object(apiserver):
    now = [0.0]
    with kube_api(apiserver) as api:
        rec = EventRecorder(api, "node-a", interval=60.0, queue_size=64, clock=lambda: now[0]).start()
        try:
            sent = [rec.warn_pod("ns", "p", "u", Reason.SUBNET_EXHAUSTED, "x") for _ in range(5)]
            assert sent == [True, False, False, False, False]
            assert rec.warn_pod("ns", "p", "u", Reason.CLOUD_THROTTLED, "x")  # other reason
            assert rec.warn_pod("ns", "q", "u2", Reason.SUBNET_EXHAUSTED, "x")  # other pod
            assert rec.warn_node(Reason.ENI_LIMIT_REACHED, "3 of 3 ENIs in use")
            now[0] += 60.0
            assert rec.warn_pod("ns", "p", "u", Reason.SUBNET_EXHAUSTED, "x")  # interval over
            wait_until(lambda: len(events_on(apiserver)) == 5, "five events")
            assert rec.stats()["rate_limited"] == 4
        finally:
            rec.stop()
    node_events = [e for e in events_on(apiserver) if e["involvedObject"]["kind"] == "Node"]
    assert [(e["involvedObject"]["name"], e["metadata"]["namespace"]) for e in node_events] == [("node-a", "default")]


def test_slow_api_server_never_blocks_the_caller(apiserver):
    apiserver.set_latency(120, path_contains="/events")
    with kube_api(apiserver) as api:
        rec = EventRecorder(api, "node-a", interval=60.0, queue_size=4).start()
        try:
            assert rec.warn_pod("ns", "p0", "u0", Reason.AGENT_NOT_READY, "starting")
            wait_until(lambda: apiserver.in_flight_delayed == 1, "the first event held by the server")
            results = [rec.warn_pod("ns", f"p{i}", f"u{i}", Reason.AGENT_NOT_READY, "starting")
                       for i in range(1, 50)]
            # every call above returned while the server still holds the first request
            assert apiserver.in_flight_delayed == 1
            assert results.count(True) == 4 and rec.stats()["dropped"] == 45
            apiserver.set_latency(0, path_contains="/events")
            wait_until(lambda: len(events_on(apiserver)) == 5, "the queued events after the delay")
        finally:
            apiserver.set_latency(0, path_contains="/events")
            rec.stop()


def test_down_api_server_counts_failures_without_blocking(apiserver):
    apiserver.go_down()
    with kube_api(apiserver) as api:
        rec = EventRecorder(api, "node-a", interval=60.0, queue_size=8).start()
        try:
            assert rec.warn_node(Reason.CLOUD_PERMISSION_DENIED, describe(Reason.CLOUD_PERMISSION_DENIED))
            wait_until(lambda: rec.stats()["failed"] == 1, "the failed send")
            apiserver.come_up()
            assert rec.warn_node(Reason.SUBNET_EXHAUSTED, "subnet-1 has 0 free addresses")
            wait_until(lambda: len(events_on(apiserver)) == 1, "the event after the server came back")
        finally:
            rec.stop()


def test_unknown_reason_is_refused():
    with pytest.raises(ValueError):
        Reason("FailedToAssignIP")
