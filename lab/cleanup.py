"""Run records for the emulated fabric and harness, and the command that removes what a
crashed run left behind: ``python -m lab.cleanup``.

Every fabric or harness run picks a run-unique prefix (``new_prefix()``) and writes a
record ``/run/underlay-harness/<prefix>.json`` *before* it creates anything: the owner
process (pid + start time, so a recycled pid is not mistaken for it), every network
namespace it is about to create, and every process it starts. All names it creates begin
with ``<prefix>-``; its files (sockets, state, logs) live under
``/run/underlay-harness/<prefix>/``.

Cleaning a run kills the recorded processes, every process still inside one of the run's
namespaces and every process in the run's cgroups (``/<prefix>-pods``, where a lab
container runtime puts its sandboxes), then deletes the namespaces (which takes their
links, routes, rules and iptables chains with them: nothing of a run ever lives in the root
namespace), unmounts whatever is mounted under the run's directory (a runtime's sandbox
namespaces and root filesystems) and removes those cgroups and the directory. Without
arguments the command cleans only *stale* runs, whose owner is gone, so it is safe to run
while other runs are alive; ``--prefix P`` cleans that one run whatever its owner's state.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STATE_DIR = Path("/run/underlay-harness")
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# where containerd 1.6 puts shim sockets whatever its config: left empty by a killed lab
# runtime's shims, removed only when empty (a containerd of the machine's keeps it busy)
SHIM_SOCKET_DIRS = (Path("/run/containerd/s"), Path("/run/containerd"))
PREFIX_HEAD = "ul"
_COMMAND_TIMEOUT = 10.0
_TERM_GRACE = 2.0


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time (clock ticks since boot), which tells a process from
    a later one that reuses its pid."""

    pid: int
    start_time: int

    def is_alive(self) -> bool:
        return read_start_time(self.pid) == self.start_time


def read_start_time(pid: int) -> int | None:
    """The process's start time, or None if it is gone or a zombie (already dead, waiting
    for a parent that may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def identify(pid: int) -> ProcessId:
    start = read_start_time(pid)
    if start is None:
        raise ProcessLookupError(f"process {pid} does not exist")
    return ProcessId(pid, start)


def new_prefix() -> str:
    """A short run-unique prefix such as ``ul3f9a2c`` (namespace names stay readable)."""
    return f"{PREFIX_HEAD}{secrets.token_hex(3)}"


def validate_prefix(prefix: str) -> str:
    if not (3 <= len(prefix) <= 12 and prefix.isascii() and prefix.isalnum()):
        raise ValueError(f"run prefix {prefix!r} must be 3-12 ASCII letters or digits")
    return prefix


class RunRecord:
    """The on-disk record of one run. Thread-safe; rewritten atomically on every change."""

    def __init__(self, prefix: str, state_dir: Path = STATE_DIR) -> None:
        self.prefix = validate_prefix(prefix)
        self.path = state_dir / f"{prefix}.json"
        self._lock = threading.Lock()
        self._netns: list[str] = []
        self._processes: list[ProcessId] = []
        self._owner = identify(os.getpid())
        state_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            raise FileExistsError(f"run record {self.path} already exists")
        self._write()

    def add_netns(self, name: str) -> None:
        if not name.startswith(self.prefix + "-"):
            raise ValueError(f"namespace {name!r} does not carry the run prefix {self.prefix!r}")
        with self._lock:
            if name not in self._netns:
                self._netns.append(name)
                self._write()

    def add_process(self, pid: int) -> None:
        with self._lock:
            self._processes.append(identify(pid))
            self._write()

    def remove(self) -> None:
        """Forget the run (after it cleaned up after itself)."""
        with self._lock:
            self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        body = {
            "prefix": self.prefix,
            "owner": {"pid": self._owner.pid, "start_time": self._owner.start_time},
            "netns": list(self._netns),
            "processes": [{"pid": p.pid, "start_time": p.start_time} for p in self._processes],
        }
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class CleanupReport:
    prefix: str
    killed: tuple[int, ...]
    removed_netns: tuple[str, ...]


def load_record(path: Path) -> dict:
    body = json.loads(path.read_text())
    validate_prefix(body["prefix"])
    return body


def is_stale(record: dict) -> bool:
    owner = record["owner"]
    return not ProcessId(int(owner["pid"]), int(owner["start_time"])).is_alive()


def list_run_netns(prefix: str) -> list[str]:
    """Namespaces named ``<prefix>-*`` under /run/netns, recorded or not."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix + "-"))


def list_netns_pids(name: str) -> list[int]:
    result = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def stop_processes(processes: list[ProcessId]) -> list[int]:
    """SIGTERM, a short grace, then SIGKILL. Never the calling process."""
    targets = [p for p in processes if p.pid != os.getpid() and p.is_alive()]
    for proc in targets:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + _TERM_GRACE
    while any(p.is_alive() for p in targets) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in targets:
        if proc.is_alive():
            _signal(proc, signal.SIGKILL)
    return [p.pid for p in targets]


def _signal(proc: ProcessId, signum: int) -> None:
    try:
        os.kill(proc.pid, signum)
    except ProcessLookupError:
        pass


def delete_netns(name: str) -> bool:
    result = subprocess.run(
        ["ip", "netns", "delete", name], capture_output=True, text=True,
        timeout=_COMMAND_TIMEOUT, check=False,
    )
    if result.returncode != 0 and (NETNS_DIR / name).exists():
        logger.warning("could not delete namespace %s: %s", name, result.stderr.strip())
        return False
    return result.returncode == 0


def run_cgroups(prefix: str) -> list[Path]:
    """The run's cgroup directories, in every hierarchy (v1) or the unified one (v2)."""
    found = []
    for base in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if CGROUP_ROOT.is_dir() else []:
        candidate = base / f"{prefix}-pods"
        if candidate.is_dir():
            found.append(candidate)
    return found


def kill_cgroup_processes(prefix: str) -> list[int]:
    """SIGKILL every process in the run's cgroups (sandboxes whose runtime is gone)."""
    pids: set[int] = set()
    for top in run_cgroups(prefix):
        for procs in top.rglob("cgroup.procs"):
            try:
                pids |= {int(word) for word in procs.read_text().split()}
            except OSError:
                continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(pids)


def unmount_under(directory: Path) -> list[str]:
    """Unmount (lazily, deepest first) every mount point below ``directory``."""
    root = str(directory.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = sorted({line.split()[4].replace("\\040", " ") for line in lines
                     if line.split()[4].startswith(root)}, key=len, reverse=True)
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=_COMMAND_TIMEOUT,
                       check=False)
    return points


def remove_cgroups(prefix: str) -> None:
    """rmdir the run's cgroup trees, leaves first (a cgroup's files cannot be deleted)."""
    for top in run_cgroups(prefix):
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                           reverse=True) + [top]:
            for _ in range(20):  # a killed process leaves its cgroup a moment later
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def clean_run(prefix: str, record: dict | None = None) -> CleanupReport:
    """Remove every process and namespace of run ``prefix``; idempotent."""
    validate_prefix(prefix)
    names = sorted(set((record or {}).get("netns", [])) | set(list_run_netns(prefix)))
    names = [n for n in names if n.startswith(prefix + "-")]
    processes = [
        ProcessId(int(p["pid"]), int(p["start_time"])) for p in (record or {}).get("processes", [])
    ]
    for name in names:
        for pid in list_netns_pids(name):
            start = read_start_time(pid)
            if start is not None:
                processes.append(ProcessId(pid, start))
    killed = stop_processes(list(dict.fromkeys(processes)))
    killed += kill_cgroup_processes(prefix)
    removed = [name for name in names if delete_netns(name)]
    unmount_under(STATE_DIR / prefix)
    remove_cgroups(prefix)
    shutil.rmtree(STATE_DIR / prefix, ignore_errors=True)  # the run's work directory
    for directory in SHIM_SOCKET_DIRS:
        try:
            directory.rmdir()
        except OSError:
            pass  # not there, or in use
    (STATE_DIR / f"{prefix}.json").unlink(missing_ok=True)
    if killed or removed:
        logger.info("run %s: killed %s, removed namespaces %s", prefix, killed, removed)
    return CleanupReport(prefix, tuple(killed), tuple(removed))


def clean_stale_runs() -> list[CleanupReport]:
    reports = []
    if not STATE_DIR.is_dir():
        return reports
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            record = load_record(path)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("skipping unreadable run record %s: %s", path, exc)
            continue
        if is_stale(record):
            reports.append(clean_run(record["prefix"], record))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.cleanup",
        description="Remove the namespaces and processes of crashed emulated-fabric runs.",
    )
    parser.add_argument("--prefix", help="clean this run even if its owner is alive")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.prefix:
        try:
            validate_prefix(args.prefix)
        except ValueError as exc:
            parser.error(str(exc))
        path = STATE_DIR / f"{args.prefix}.json"
        record = load_record(path) if path.exists() else None
        reports = [clean_run(args.prefix, record)]
    else:
        reports = clean_stale_runs()
    for report in reports:
        print(f"{report.prefix}: killed {len(report.killed)} processes, "
              f"removed {len(report.removed_netns)} namespaces")
    if not reports:
        print("nothing to clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
