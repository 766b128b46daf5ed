"""Retries against the emulated EC2 over HTTP: injected throttling, 5xx and timeouts are
retried with backoff; when they persist the typed error surfaces after exactly the
configured number of attempts (counted by the emulator)."""
from __future__ import annotations

import socket

import pytest

from cloud import errors
from cloud.ec2 import Ec2Cloud
from cloud_fixtures import (
    SHORT_READ_TIMEOUT, call_count, make_cloud, refused, session_with_test_keys,
)
from cloud_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(120)
NODES_PER_WORLD = 8


def lift_faults_after(control, failures: int, calls: list):
    """An on_call hook that switches the injected faults off after ``failures`` failed
    attempts: the fault is real (the emulator refuses the calls) and then goes away."""

    def on_call(action: str, outcome: str, _seconds: float) -> None:
        calls.append((action, outcome))
        if sum(1 for _, o in calls if o != "ok") == failures:
            control.clear_faults()

    return on_call


def test_throttling_is_retried_until_it_lifts(emulator, control, world, calls):
    eni_id = world.instances[0].primary_eni_id
    control.set_faults([{"action": "DescribeNetworkInterfaces", "kind": "throttle", "rate": 1.0}])
    cloud = make_cloud(emulator, attempts=5, on_call=lift_faults_after(control, 2, calls))
    assert cloud.describe_eni(eni_id).id == eni_id
    assert calls == [("DescribeNetworkInterfaces", "RequestLimitExceeded")] * 2 + [
        ("DescribeNetworkInterfaces", "ok")]
    assert call_count(control, "DescribeNetworkInterfaces") == 3
    assert refused(control, "DescribeNetworkInterfaces", "RequestLimitExceeded") == 2


def test_persistent_throttling_surfaces_as_throttled(emulator, control, world, node, calls):
    control.set_faults([{"action": "AssignPrivateIpAddresses", "kind": "throttle", "rate": 1.0}])
    cloud = make_cloud(emulator, attempts=4, on_call=lambda a, o, _s: calls.append((a, o)))
    with pytest.raises(errors.Throttled) as caught:
        cloud.assign_ips(node.primary_eni_id, 2)
    assert caught.value.code == "RequestLimitExceeded"
    assert "AssignPrivateIpAddresses" in str(caught.value)
    assert call_count(control, "AssignPrivateIpAddresses") == 4
    assert refused(control, "AssignPrivateIpAddresses", "RequestLimitExceeded") == 4
    assert calls == [("AssignPrivateIpAddresses", "RequestLimitExceeded")] * 4
    control.clear_faults()
    assert cloud.describe_eni(node.primary_eni_id).secondary_ips == ()  # nothing assigned


def test_token_bucket_throttling_surfaces_as_throttled(emulator, control, world, node):
    """EC2's own request token bucket (no injected fault): capacity 2, no refill."""
    control.set_buckets({"enabled": True,
                         "eni_mutating": {"capacity": 2, "refill_per_second": 0}})
    cloud = make_cloud(emulator, attempts=3)
    cloud.assign_ips(node.primary_eni_id, 1)
    cloud.assign_ips(node.primary_eni_id, 1)
    with pytest.raises(errors.Throttled):
        cloud.assign_ips(node.primary_eni_id, 1)
    assert call_count(control, "AssignPrivateIpAddresses") == 2 + 3


def test_5xx_is_retried_and_persistent_5xx_is_unavailable(emulator, control, world, node,
                                                          calls):
    control.set_faults([{"action": "DescribeInstances", "kind": "5xx", "rate": 1.0}])
    cloud = make_cloud(emulator, attempts=5, on_call=lift_faults_after(control, 1, calls))
    assert cloud.describe_instance(node.instance_id).id == node.instance_id
    assert [o for _, o in calls] == ["InternalError", "ok"]

    control.reset_counts()
    control.set_faults([{"action": "DescribeInstances", "kind": "5xx", "rate": 1.0}])
    with pytest.raises(errors.CloudUnavailable) as caught:
        make_cloud(emulator, attempts=3).describe_instance(node.instance_id)
    assert caught.value.code == "InternalError"
    assert call_count(control, "DescribeInstances") == 3


def test_a_call_that_hangs_times_out_and_surfaces_as_unavailable(emulator, control, world,
                                                                node, calls):
    """The emulator stalls longer than the adapter's read timeout: every attempt ends at
    the timeout, and the caller gets CloudUnavailable, not a hang."""
    control.set_faults([{"action": "DescribeSubnets", "kind": "timeout", "rate": 1.0}])
    cloud = make_cloud(emulator, attempts=2, on_call=lambda a, o, _s: calls.append((a, o)),
                       read_timeout=SHORT_READ_TIMEOUT)
    with pytest.raises(errors.CloudUnavailable) as caught:
        cloud.describe_subnets([node.subnet_id])
    assert caught.value.code == "ReadTimeout"
    assert calls == [("DescribeSubnets", "ReadTimeout")] * 2
    assert call_count(control, "DescribeSubnets") == 2


def test_permanent_errors_are_not_retried(cloud, control, calls):
    with pytest.raises(errors.NotFound):
        cloud.describe_eni("eni-0123456789abcdef0")
    assert call_count(control, "DescribeNetworkInterfaces") == 1


def test_not_found_on_a_just_created_eni_is_retried_briefly(cloud, control, world, node,
                                                           setup_client, calls):
    """Right after CreateNetworkInterface EC2 may not know the new id yet; the adapter
    retries NotFound for ENIs it created moments ago (here the ENI really is gone, so
    the retries run out and NotFound surfaces)."""
    eni = cloud.create_eni(node.subnet_id, [], 0, cluster="c", node="n")
    setup_client.delete_network_interface(NetworkInterfaceId=eni.id)
    control.reset_counts()
    with pytest.raises(errors.NotFound):
        cloud.describe_eni(eni.id)
    assert call_count(control, "DescribeNetworkInterfaces") == cloud.policy.attempts


def test_a_closed_client_makes_no_calls(cloud, control, node):
    cloud.close()
    with pytest.raises(errors.CloudUnavailable, match="closed"):
        cloud.describe_eni(node.primary_eni_id)
    assert call_count(control, "DescribeNetworkInterfaces") == 0


def test_an_unreachable_endpoint_is_unavailable():
    with socket.socket() as probe:  # a port on loopback that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cloud = Ec2Cloud("us-east-1", endpoint_url=f"http://127.0.0.1:{port}", retry_attempts=2,
                     retry_base_delay=0.001, retry_max_delay=0.002, connect_timeout=0.5,
                     read_timeout=0.5, session=session_with_test_keys())
    with pytest.raises(errors.CloudUnavailable) as caught:
        cloud.describe_eni("eni-0123456789abcdef0")
    assert caught.value.code == "EndpointConnectionError"
