"""A full state disk: the agent refuses attaches with the I/O failure code and a message that
says where to look, loses nothing it had committed, and serves again once there is room."""
from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from test_agent_helpers import emulator, make_world, start_agent, wait_for  # noqa: F401

from cni.spec import Code


@pytest.fixture
def small_disk(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True,
                       timeout=30)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    try:
        with open(filler, "wb") as out:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    return filler


def test_full_state_disk_is_an_io_failure_and_nothing_is_lost(emulator, start_agent,
                                                              small_disk):
    world = make_world(emulator)
    agent = start_agent(world, warm_ips=4, state_path=str(small_disk / "ipam.db"))
    wait_for(lambda: agent.pool()["available"] >= 4, 15, "the warm pool")
    status, body = agent.attach("before")
    assert status == 200, body
    held = agent.client.get("/v1/pods")

    filler = fill(small_disk)
    status, body = agent.attach("during")
    assert status >= 500 and body["code"] == Code.IO_FAILURE, body
    assert "state store" in body["msg"] and "disk" in body["msg"], body
    assert agent.client.get("/v1/pods") == held  # what was committed is still there

    filler.unlink()
    status, body = agent.attach("during")
    assert status == 200, body
    assert agent.proc.poll() is None, agent.log_tail()
