"""Agent memory and CPU: RSS idle and under churn, CPU per 100 pod churns (ADD + DEL), beside
the CPU that ptp + host-local spend on the same churn in the same run.

    .venv/bin/python -m bench.run --only agent_resources

One node of the emulated cloud runs the agent (veth datapath). Memory comes from
``/proc/<agent pid>/status`` (VmRSS sampled every 50 ms, VmHWM the kernel's peak); the
agent's CPU from utime + stime in ``/proc/<pid>/stat``. Churn runs the real libcni client
(``bench_cni_latency.run_rounds``), alternating blocks of underlay and the reference
conflist; the CPU of everything exec'd for a churn (``ip netns exec``, libcni, the plugin
executables) is this process's RUSAGE_CHILDREN delta, so:

    underlay CPU per 100 churns  = children delta + agent delta   (executable + agent)
    reference CPU per 100 churns = children delta                 (ptp + host-local)

A second phase adds 25 pods 10 at a time and deletes them, to see the peak under a burst.
The memory target (RSS <= 100 MiB) is the reference column of the memory rows.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import threading
import time
from pathlib import Path

from bench.bench_burst import add_pods_concurrently, delete_pods_concurrently
from bench.bench_cni_latency import make_sandbox, run_rounds
from lab.harness import Cluster

logger = logging.getLogger(__name__)

TARGET_RSS_MIB = 100.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BLOCK = 10  # churns per block; blocks alternate underlay / reference
IDLE_SECONDS = 3.0


def read_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def read_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/<pid>/stat (fields 14 and 15)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    rest = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """Samples VmRSS of ``pid`` every ``interval`` seconds until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, read_memory_kib(self.pid).get("VmRSS", 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def write_reference_conflist(path: Path, data_dir: Path) -> str:
    path.write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "bench-ptp", "plugins": [{
            "type": "ptp", "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": str(data_dir),
                     "ranges": [[{"subnet": "10.254.0.0/24"}]]}}]}))
    return str(path)


def run(out: dict, *, quick: bool = False) -> None:
    churns = 40 if quick else 200
    with Cluster(nodes=1, subnet_cidrs=("10.0.0.0/24",)) as cluster:
        assert cluster.record is not None
        node = cluster.nodes[0]
        agent = cluster.run_agent(node, {"warm_ips": 8, "cooldown_seconds": 0.1,
                                         "snat": False})
        pid = agent.process.pid
        if b"ipam_daemon.main" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            raise RuntimeError(f"pid {pid} is not the agent")
        time.sleep(IDLE_SECONDS)  # let start-up settle (pool filled, first reconcile)
        idle = read_memory_kib(pid)

        reference = write_reference_conflist(node.workdir / "ptp.conflist",
                                             node.workdir / "host-local")
        conflists = {"underlay": cluster.conflist_for(node), "reference": reference}
        cpu = {"underlay": 0.0, "reference": 0.0, "agent": 0.0}
        with RssSampler(pid) as churn_sampler:
            for block in range(churns // BLOCK):
                for name, conflist in conflists.items():
                    tag = f"{name[0]}{block:03d}"
                    # sandboxes made and removed outside the measurement: a runtime's cost
                    sandboxes = [make_sandbox(cluster, f"{cluster.prefix}-s{tag}x{i:04d}")
                                 for i in range(BLOCK)]
                    agent_before, children_before = read_cpu_seconds(pid), children_cpu_seconds()
                    run_rounds(cluster, node, conflist, node.workdir / "cache", BLOCK, tag,
                               sandboxes)
                    children = children_cpu_seconds() - children_before
                    agent_cpu = read_cpu_seconds(pid) - agent_before
                    for sandbox in sandboxes:
                        subprocess.run(["ip", "netns", "delete", sandbox], check=True,
                                       timeout=30)
                    if name == "underlay":
                        cpu["agent"] += agent_cpu
                        children += agent_cpu
                    cpu[name] += children
        churn_peak = churn_sampler.peak_kib

        with RssSampler(pid) as burst_sampler:
            _, pods, failures = add_pods_concurrently(cluster, node,
                                                      [f"m{i}" for i in range(25)], 10)
            delete_pods_concurrently(cluster, pods, 10)
        end = read_memory_kib(pid)

    per100 = {k: round(v * 100 / churns, 3) for k, v in cpu.items()}
    out.update({
        "churns": churns, "idle_kib": idle, "churn_peak_rss_kib": churn_peak,
        "burst_peak_rss_kib": burst_sampler.peak_kib, "end_kib": end,
        "burst_failed_adds": len(failures),
        "cpu_seconds_per_100_churns": per100,
        "reference_name": "target 100 MiB (memory); ptp+host-local (CPU)",
    })
    peak = max(churn_peak, burst_sampler.peak_kib, end.get("VmHWM", 0))
    out["rows"] = [
        {"metric": "agent RSS idle (MiB)", "underlay": mib(idle["VmRSS"]),
         "reference": TARGET_RSS_MIB, "ratio": round(mib(idle["VmRSS"]) / TARGET_RSS_MIB, 2),
         "also": "target: at most 100 MiB"},
        {"metric": "agent RSS peak under churn and a 25-pod burst (MiB, VmHWM)",
         "underlay": mib(peak), "reference": TARGET_RSS_MIB,
         "ratio": round(mib(peak) / TARGET_RSS_MIB, 2),
         "also": f"after: VmRSS {mib(end['VmRSS'])}"},
        {"metric": "CPU seconds per 100 churns (ADD+DEL, all processes)",
         "underlay": per100["underlay"], "reference": per100["reference"],
         "ratio": round(per100["underlay"] / per100["reference"], 2),
         "also": f"agent alone {per100['agent']}; n={churns} each"},
    ]
    logger.info("agent resources: %s", out["rows"])
