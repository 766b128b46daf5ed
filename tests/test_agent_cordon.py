"""The seams the Kubernetes module plugs into, on an in-process agent (datapath none)
against the emulated EC2: a cordoned node's pool stops growing and resumes when
uncordoned; release by key goes through the same path as DEL."""
from __future__ import annotations

import os

import pytest
from test_agent_helpers import (  # noqa: F401 - fixtures
    control, emulator, in_process_agent, wait_for,
)

from ipam_daemon.store import AllocationKey, PodInfo


@pytest.fixture
def agent(emulator, tmp_path, monkeypatch):
    with in_process_agent(emulator, tmp_path, monkeypatch, warm_ips=2) as running:
        yield running
    assert not os.path.exists(running.config.socket_path)


def test_cordon_pauses_growth_and_release_by_key(agent, control):
    service = agent.service
    wait_for(lambda: service.pool_summary()["available"] == 2, 10, "warm pool")
    agent.pool.set_cordoned(True)
    control.reset_counts()
    keys = [AllocationKey("net", f"c{i}", "eth0") for i in range(2)]
    for key in keys:
        assert service.borrow(key, PodInfo("ns", key.container_id)) is not None
    for _ in range(5):  # several loop turns: nothing is assigned while cordoned
        agent.pool.wake()
        agent.pool.wait_for_change(0.2)
    assert service.pool_summary()["available"] == 0
    assert control.call_counts().get("AssignPrivateIpAddresses", 0) == 0
    agent.pool.set_cordoned(False)
    wait_for(lambda: service.pool_summary()["available"] == 2, 10, "growth after uncordon")

    assert [row[0] for row in service.allocation_rows()] == keys
    assert service.release_key(keys[0]) is True
    assert service.release_key(keys[0]) is False
    assert [row[0] for row in service.allocation_rows()] == keys[1:]
    assert service.pool_summary()["cooling"] == 1
