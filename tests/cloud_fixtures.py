"""Fixtures for the cloud adapter's tests: one emulated EC2 (over HTTP on 127.0.0.1) per
test module, a fresh VPC world per test, and adapters with short retry waits.

Nothing here creates network namespaces or touches the kernel: the emulated cloud is an
HTTP server on loopback and its VPC addresses are only data.
"""
from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Iterator

import boto3
import pytest

from cloud.ec2 import Ec2Cloud
from cloud.types import TAG_CLUSTER
from lab.ec2.server import EmulatedCloud
from lab.ec2.settings import EmulatorSettings
from lab.ec2.world import World, build_world, make_setup_client

# the fixtures, for `from cloud_fixtures import *` in the test modules
FIXTURES = ["emulator", "control", "calls", "cloud", "world", "free_nodes", "node",
            "setup_client", "subnet_blocks", "add_subnet", "cluster"]
__all__ = FIXTURES

TIMEOUT_FAULT_SECONDS = 1.5
NODES_PER_WORLD = 4
READ_TIMEOUT = 10.0  # generous: a loaded machine must not turn slow answers into retries
SHORT_READ_TIMEOUT = 0.5  # below TIMEOUT_FAULT_SECONDS, so an injected "timeout" times out


@functools.cache
def session_with_test_keys() -> boto3.session.Session:
    """Explicit test credentials: boto3's chain never reaches the instance metadata
    service (169.254.169.254) from a test. One session, so EC2's service model is loaded
    once."""
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatedCloud]:
    settings = EmulatorSettings(buckets_enabled=False, timeout_fault_seconds=TIMEOUT_FAULT_SECONDS)
    cloud = EmulatedCloud.start(port=0, settings=settings)
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def control(emulator: EmulatedCloud):
    """The emulator's control API, reset before and after each test."""
    emulator.control.clear_faults()
    emulator.control.set_attach_latency(0)
    emulator.control.set_buckets({"enabled": False})
    emulator.control.reset_counts()
    try:
        yield emulator.control
    finally:
        emulator.control.clear_faults()
        emulator.control.set_attach_latency(0)
        emulator.control.set_buckets({"enabled": False})


def make_cloud(emulator: EmulatedCloud, *, attempts: int = 4, on_call=None,
               read_timeout: float = READ_TIMEOUT) -> Ec2Cloud:
    """An adapter whose retry waits are a few milliseconds (a parameter, not a patch)."""
    return Ec2Cloud(
        emulator.region,
        endpoint_url=emulator.endpoint,
        connect_timeout=2.0,
        read_timeout=read_timeout,
        retry_attempts=attempts,
        retry_base_delay=0.002,
        retry_max_delay=0.01,
        retry_deadline=20.0,
        not_found_window=2.0,
        on_call=on_call,
        session=session_with_test_keys(),
    )


@pytest.fixture
def calls() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def cloud(emulator: EmulatedCloud, control, calls) -> Iterator[Ec2Cloud]:
    adapter = make_cloud(emulator, on_call=lambda action, outcome, _seconds: calls.append((action, outcome)))
    try:
        yield adapter
    finally:
        adapter.close()


def make_world(emulator: EmulatedCloud, **kwargs) -> World:
    kwargs.setdefault("cluster", "underlay-test")
    return build_world(emulator.endpoint, region=emulator.region, **kwargs)


@pytest.fixture(scope="module")
def world(emulator: EmulatedCloud, request) -> World:
    """One VPC per module (building one costs seconds); each test takes its own node.
    A module sets ``NODES_PER_WORLD`` to the number of nodes its tests use."""
    nodes = getattr(request.module, "NODES_PER_WORLD", NODES_PER_WORLD)
    return make_world(emulator, nodes=nodes, instance_type="m5.large",
                      subnet_cidrs=("10.0.0.0/22",))


@pytest.fixture(scope="module")
def free_nodes(world: World) -> list:
    return list(world.instances)


@pytest.fixture
def node(free_nodes: list):
    """An m5.large instance no other test of the module has used."""
    if not free_nodes:
        raise RuntimeError("all nodes of the module's world are used; raise the module's "
                           "NODES_PER_WORLD")
    return free_nodes.pop(0)


@pytest.fixture(scope="module")
def setup_client(emulator: EmulatedCloud):
    """Plain boto3 for arranging and inspecting state; its calls are not counted."""
    return make_setup_client(emulator.endpoint, emulator.region)


@pytest.fixture(scope="module")
def subnet_blocks() -> Iterator[int]:
    return itertools.count(16)


@pytest.fixture
def add_subnet(world: World, setup_client, subnet_blocks):
    """Create a new subnet of the given prefix length in the world's VPC."""

    def add(prefix_len: int) -> str:
        cidr = f"10.0.{next(subnet_blocks)}.0/{prefix_len}"
        made = setup_client.create_subnet(VpcId=world.vpc_id, CidrBlock=cidr,
                                          AvailabilityZone=f"{world.region}a")
        return made["Subnet"]["SubnetId"]

    return add


@pytest.fixture
def cluster() -> str:
    """A cluster name of the test's own, so its tagged ENIs are told from the others'."""
    return f"c-{secrets.token_hex(3)}"


def enis_of(setup_client, cluster: str) -> list[dict]:
    """Every ENI tagged with the cluster, whatever its state (uncounted set-up call)."""
    found = setup_client.describe_network_interfaces(
        Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}])
    return found["NetworkInterfaces"]


def refused(control, action: str, code: str) -> int:
    return control.refused_counts().get((action, code), 0)


def call_count(control, action: str) -> int:
    return control.call_counts().get(action, 0)
