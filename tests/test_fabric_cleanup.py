"""A run that crashes (SIGKILL, no finally blocks run) leaves namespaces, links and
processes; ``python -m lab.cleanup`` removes them, and never touches a run
whose owner is still alive."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import cleanup

PYTHON = sys.executable
REPO = str(Path(__file__).resolve().parents[1])

# A fabric run with one node and an "agent" (a sleep) inside the node's namespace, which
# reports what it made and then waits to be killed.
CRASHING_RUN = textwrap.dedent("""
    import json, subprocess, sys, time
    from lab.ec2 import EmulatedCloud
    from lab.cleanup import RunRecord
    from lab.fabric import Fabric
    from lab.ec2.world import build_world

    cloud = EmulatedCloud.start()
    world = build_world(cloud.endpoint, region=cloud.region, nodes=1)
    record = RunRecord(sys.argv[1])
    fabric = Fabric(cloud, record=record, vpc_id=world.vpc_id).start()
    node_ns = fabric.node_netns(world.instances[0].instance_id)
    agent = subprocess.Popen(["ip", "netns", "exec", node_ns, "sleep", "600"])
    record.add_process(agent.pid)
    print(json.dumps({"agent": agent.pid, "node": node_ns}), flush=True)
    time.sleep(600)
""")


def list_netns() -> set[str]:
    return set(os.listdir(cleanup.NETNS_DIR)) if cleanup.NETNS_DIR.is_dir() else set()


def run_cleanup(*args: str) -> str:
    result = subprocess.run([PYTHON, "-m", "lab.cleanup", *args],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


@pytest.fixture
def live_run() -> Iterator[cleanup.RunRecord]:
    """A run owned by this (live) test process, with one namespace."""
    record = cleanup.RunRecord(cleanup.new_prefix())
    name = f"{record.prefix}-live"
    record.add_netns(name)
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield record
    finally:
        cleanup.clean_run(record.prefix)


def test_cleanup_removes_what_a_killed_run_left_and_spares_live_runs(
        live_run: cleanup.RunRecord, tmp_path: Path) -> None:
    prefix = cleanup.new_prefix()
    errors = open(tmp_path / "child.err", "w")
    child = subprocess.Popen([PYTHON, "-c", CRASHING_RUN, prefix], stdout=subprocess.PIPE,
                             stderr=errors, text=True, cwd=REPO)
    agent_pid = None
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"the fabric child failed:\n{(tmp_path / 'child.err').read_text()}"
        made = json.loads(line)
        agent_pid = made["agent"]
        left = {n for n in list_netns() if n.startswith(prefix + "-")}
        assert {f"{prefix}-vpc", f"{prefix}-out", made["node"]} <= left
        assert json.loads((cleanup.STATE_DIR / f"{prefix}.json").read_text())["netns"]

        child.send_signal(signal.SIGKILL)  # no finally, no atexit: a crash
        child.wait(timeout=10)
        assert cleanup.read_start_time(agent_pid) is not None  # the agent outlived it
        assert {n for n in list_netns() if n.startswith(prefix + "-")} == left

        report = run_cleanup()  # stale runs only
        assert f"{prefix}: killed 1 processes, removed {len(left)} namespaces" in report
        assert not [n for n in list_netns() if n.startswith(prefix + "-")]
        assert cleanup.read_start_time(agent_pid) is None
        assert not (cleanup.STATE_DIR / f"{prefix}.json").exists()
        # the live run was not touched
        assert f"{live_run.prefix}-live" in list_netns()
        assert live_run.path.exists()
        assert live_run.prefix not in report
        # and a second pass finds nothing more of it
        assert prefix not in run_cleanup()
    finally:
        errors.close()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        cleanup.clean_run(prefix)
        if agent_pid is not None and cleanup.read_start_time(agent_pid) is not None:
            os.kill(agent_pid, signal.SIGKILL)


def test_cleanup_by_prefix_cleans_a_live_run_and_rejects_bad_prefixes(
        live_run: cleanup.RunRecord) -> None:
    assert f"{live_run.prefix}: killed 0 processes, removed 1 namespaces" in run_cleanup(
        "--prefix", live_run.prefix)
    assert f"{live_run.prefix}-live" not in list_netns()
    bad = subprocess.run([PYTHON, "-m", "lab.cleanup", "--prefix", "../etc"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "must be 3-12 ASCII letters or digits" in bad.stderr


def test_run_record_refuses_names_without_its_prefix(live_run: cleanup.RunRecord) -> None:
    with pytest.raises(ValueError, match="does not carry the run prefix"):
        live_run.add_netns("someone-elses-namespace")
    assert json.loads(live_run.path.read_text())["netns"] == [f"{live_run.prefix}-live"]
