"""Fixtures for the Kubernetes module's tests: a fresh fake API server per test, settings
with short waits, and small builders for Nodes and Pods. Every request the agent made (its
user agent) is kept in :data:`AGENT_REQUESTS` for the RBAC comparison."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ipam_daemon.kube.client import USER_AGENT, KubeApi, KubeSettings, build_api_client

from .server import FakeApiServer, RequestRecord

AGENT_REQUESTS: list[RequestRecord] = []
INSTANCE = "i-0123456789abcdef0"


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()
        AGENT_REQUESTS.extend(server.agent_requests(USER_AGENT))


def settings_for(server: FakeApiServer, node: str = "node-a", **overrides: Any) -> KubeSettings:
    values: dict[str, Any] = dict(
        node_name=node, host=server.url, connect_timeout=1.0, request_timeout=2.0, watch_timeout=5,
        backoff_min=0.05, backoff_max=0.5, boot_wait_seconds=1.0, gc_grace_seconds=0.0,
        gc_interval=0.2, event_interval=60.0, status_min_interval=0.0)
    values.update(overrides)
    return KubeSettings(**values)


@contextmanager
def kube_api(server: FakeApiServer, **overrides: Any) -> Iterator[KubeApi]:
    settings = settings_for(server, **overrides)
    client = build_api_client(settings)
    try:
        yield KubeApi(client, settings)
    finally:
        client.close()


def add_node(server: FakeApiServer, name: str = "node-a", *, instance: str = INSTANCE,
             zone: str = "us-east-1a", labels: dict | None = None, unschedulable: bool = False) -> dict:
    spec: dict[str, Any] = {"providerID": f"aws:///{zone}/{instance}"} if instance else {}
    if unschedulable:
        spec["unschedulable"] = True
    return server.create("nodes", {
        "metadata": {"name": name, "labels": labels or {"kubernetes.io/hostname": name}},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
    })


def add_pod(server: FakeApiServer, namespace: str, name: str, node: str = "node-a") -> dict:
    return server.create("pods", {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
    }, namespace=namespace)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll until ``predicate()`` is truthy; the timeout only bounds a broken run."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
