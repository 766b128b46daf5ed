"""Shared pieces of the agent tests (no tests here): one emulated EC2 per module, a VPC
world per test, and the agent as a real subprocess (datapath none: IPAM only, so it may run
in the root namespace; its socket lives in a temp dir and its status port on 127.0.0.1)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from pathlib import Path

import boto3
import pytest

from cloud.ec2 import Ec2Cloud
from lab.ec2.server import EmulatedCloud
from lab.ec2.settings import EmulatorSettings
from lab.ec2.world import World, build_world
from cloud.types import TAG_CLUSTER, InstanceId
from ipam_daemon.client import AgentClient

if TYPE_CHECKING:
    from ipam_daemon.agent import Agent

PYTHON = sys.executable
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_EC2_METADATA_DISABLED": "true"}


def fast_config(**overrides) -> dict:
    """Intervals short enough that a test takes seconds; batch_size 1 (no hysteresis band)
    unless a test asks for one, so pool sizes are exact."""
    base = dict(datapath="none", warm_ips=3, batch_size=1, pool_interval=0.2, shrink_interval=0.2,
                reconcile_interval=5.0, cooldown_seconds=0.3, eni_min_age=0.0,
                borrow_wait_seconds=3.0, subnet_full_backoff=1.0, max_backoff=1.0,
                leaked_eni_age=1.0,
                leaked_eni_interval=1.0, cloud_timeout=5.0, log_level="INFO",
                imds_endpoint="")  # the root namespace never asks 169.254.169.254
    base.update(overrides)
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def cloud_client(emulator: EmulatedCloud) -> Ec2Cloud:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name=emulator.region)
    return Ec2Cloud(emulator.region, endpoint_url=emulator.endpoint, session=session,
                    retry_base_delay=0.01, retry_max_delay=0.05)


class AgentProcess:
    """``python -m ipam_daemon.main --config FILE`` against the emulator."""

    def __init__(self, workdir: Path, emulator: EmulatedCloud, world: World, node: int = 0,
                 **config) -> None:
        self.workdir = workdir
        self.instance = world.instances[node]
        self.status_port = free_port()
        self.metrics_port = free_port()
        self.config = fast_config(
            cluster=world.cluster, instance_id=self.instance.instance_id,
            node_name=self.instance.name, region=emulator.region,
            cloud_endpoint=emulator.endpoint, socket_path=str(workdir / "run" / "agent.sock"),
            state_path=str(workdir / "state" / "ipam.db"), status_port=self.status_port,
            metrics_address="127.0.0.1", metrics_port=self.metrics_port)
        self.config.update(config)
        self.config_path = workdir / "agent.json"
        self.config_path.write_text(json.dumps(self.config))
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen | None = None
        self.client = AgentClient(self.config["socket_path"], timeout=30.0)
        self.starts = 0

    def start(self, wait_ready: bool = True, extra_env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "UNDERLAY_"))}
        env.update(CREDS)
        env.update(extra_env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([PYTHON, "-m", "ipam_daemon.main", "--config",
                                          str(self.config_path)], stdout=log, stderr=log,
                                         env=env, cwd=str(self.workdir))
        self.starts += 1
        if wait_ready:
            wait_for(self.ready, 30, "the agent to serve")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            status, body = self.client.get("/v1/status")
        except OSError:
            self.client.close()
            return False
        return status == 200 and body["ready"]

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.client.close()

    def stop(self) -> int:
        """SIGTERM: the agent stops cleanly and exits 0."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"agent ignored SIGTERM:\n{self.log_tail()}") from None
        self.client.close()
        return code

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    # ---- the socket protocol ----------------------------------------------------------

    def attach(self, container_id: str, ifname: str = "eth0", network: str = "net",
               client: AgentClient | None = None, **extra) -> tuple[int, dict]:
        body = {"api": 1, "cni_version": "1.0.0", "network": network,
                "container_id": container_id, "ifname": ifname, "netns": f"/proc/1/ns/{container_id}",
                "mode": "veth", "pod_namespace": "default", "pod_name": f"pod-{container_id}"}
        body.update(extra)
        return (client or self.client).post("/v1/attach", body)

    def detach(self, container_id: str, ifname: str = "eth0", network: str = "net",
               client: AgentClient | None = None):
        return (client or self.client).post("/v1/detach", {
            "api": 1, "network": network, "container_id": container_id, "ifname": ifname})

    def pool(self) -> dict:
        status, body = self.client.get("/v1/pool")
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatedCloud]:
    cloud = EmulatedCloud.start(port=0, settings=EmulatorSettings(buckets_enabled=False))
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def control(emulator):
    emulator.control.clear_faults()
    emulator.control.set_attach_latency(0)
    emulator.control.reset_counts()
    try:
        yield emulator.control
    finally:
        emulator.control.clear_faults()
        emulator.control.set_attach_latency(0)


def make_world(emulator: EmulatedCloud, **kwargs) -> World:
    cluster = f"agent-{uuid.uuid4().hex[:8]}"
    return build_world(emulator.endpoint, region=emulator.region, cluster=cluster, **kwargs)


@pytest.fixture
def start_agent(tmp_path, emulator) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def start(world: World, **config) -> AgentProcess:
        workdir = tmp_path / f"agent{len(agents)}"
        workdir.mkdir()
        agent = AgentProcess(workdir, emulator, world, **config)
        agents.append(agent)
        agent.start()
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.kill9()


def cloud_ips(cloud: Ec2Cloud, instance_id: str, cluster: str, primary_eni: str) -> set[str]:
    """Secondary addresses on our ENIs attached to the instance, as the cloud says."""
    out = set()
    for eni in cloud.list_enis(InstanceId(instance_id)):
        if eni.id == primary_eni or eni.tag(TAG_CLUSTER) == cluster:
            out |= set(eni.secondary_ips)
    return out


@contextlib.contextmanager
def in_process_agent(emulator: EmulatedCloud, workdir: Path, monkeypatch,
                     **config) -> Iterator["Agent"]:
    """An Agent in this process (datapath none unless given) on a fresh world, started;
    stopped at the end. Its listeners take free ports."""
    from ipam_daemon.agent import Agent
    from ipam_daemon.config import parse_config

    for name, value in CREDS.items():
        monkeypatch.setenv(name, value)
    world = make_world(emulator)
    parsed = parse_config(fast_config(
        cluster=world.cluster, instance_id=world.instances[0].instance_id,
        region=emulator.region, cloud_endpoint=emulator.endpoint,
        socket_path=str(workdir / "run" / "agent.sock"), state_path=str(workdir / "ipam.db"),
        status_port=0, metrics_port=0, **config), {})
    running = Agent(parsed)
    try:
        running.start()
        yield running
    finally:
        running.stop()
