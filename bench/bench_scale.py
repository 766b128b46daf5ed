"""Scale: many emulated nodes booting their agents at once against EC2's request token
buckets (on, with EC2's documented capacities and refill rates), against one node booting
alone in the same run.

    .venv/bin/python -m bench.run --only scale      (UNDERLAY_BENCH_NODES=N to change N)

The cluster has N + 1 nodes. Node 0's agent boots alone first: its time from start to a
warm pool (``available >= warm_ips``) is the reference. Then the agents of the other N nodes
start together; the figure is the time until every one of them is warm. Throttled calls are
the emulator's RequestLimitExceeded refusals during the boot (the agents retry them with
backoff). Then every node gets ``PODS_PER_NODE`` pods through libcni (10 ADDs at a time
across the cluster) and failed ADDs are counted. Each agent is a Python process; their RSS
is summed to show what N nodes cost this machine.
"""
from __future__ import annotations

import logging
import os
import time

from bench.bench_agent_resources import mib, read_memory_kib
from bench.bench_burst import add_pods_concurrently
from lab.harness import Cluster, FAST_AGENT_CONFIG, LabNode

logger = logging.getLogger(__name__)

NODES = 40
QUICK_NODES = 20
PODS_PER_NODE = 2
WARM_TIMEOUT = 300.0


def wait_all_warm(cluster: Cluster, nodes: list[LabNode], warm: int, timeout: float) -> float:
    """Seconds until every node's agent reports ``available >= warm``; raises past timeout."""
    started = time.monotonic()
    pending = {node.name: node for node in nodes}
    while pending:
        for name, node in list(pending.items()):
            agent = cluster.agents[name]
            if agent.process.poll() is not None:
                raise RuntimeError(f"agent on {name} exited: {agent.log_tail()}")
            try:
                status, summary = cluster.agent_get(node, "/v1/pool")
            except OSError:
                continue  # not serving yet
            if status == 200 and summary.get("ready") and summary.get("available", 0) >= warm:
                del pending[name]
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{len(pending)} of {len(nodes)} nodes not warm after "
                               f"{timeout}s: {sorted(pending)[:5]}")
        time.sleep(0.1)
    return time.monotonic() - started


def boot(cluster: Cluster, nodes: list[LabNode], warm: int) -> float:
    started = time.monotonic()
    for node in nodes:
        cluster.run_agent(node, {"snat": False}, wait_ready=False)
    wait_all_warm(cluster, nodes, warm, WARM_TIMEOUT)
    return time.monotonic() - started


def throttled(refused: dict[tuple[str, str], int]) -> int:
    return sum(n for (_, code), n in refused.items() if code == "RequestLimitExceeded")


def run(out: dict, *, quick: bool = False) -> None:
    count = int(os.environ.get("UNDERLAY_BENCH_NODES", QUICK_NODES if quick else NODES))
    if count < 1:
        raise ValueError(f"UNDERLAY_BENCH_NODES must be >= 1, got {count}")
    warm = int(FAST_AGENT_CONFIG["warm_ips"])
    with Cluster(nodes=count + 1, subnet_cidrs=("10.0.0.0/22", "10.0.4.0/22")) as cluster:
        assert cluster.cloud is not None
        control = cluster.cloud.control
        alone, rest = cluster.nodes[0], cluster.nodes[1:]
        reference = boot(cluster, [alone], warm)
        control.reset_counts()
        seconds = boot(cluster, rest, warm)
        refused = control.refused_counts()
        calls = control.call_counts()
        rss = [read_memory_kib(cluster.agents[n.name].process.pid)["VmRSS"] for n in rest]
        names = [(node, f"s{node.index}x{i}") for node in rest for i in range(PODS_PER_NODE)]
        failures: list[str] = []
        add_seconds = 0.0
        for node in rest:  # the helper adds to one node; nodes run one after another
            took, _, failed = add_pods_concurrently(
                cluster, node, [name for n, name in names if n is node], PODS_PER_NODE)
            add_seconds += took
            failures.extend(failed)
        refused_after = control.refused_counts()

    ratio = round(seconds / reference, 2)
    out.update({
        "nodes": count, "reference_seconds": round(reference, 3), "seconds": round(seconds, 3),
        "ratio": ratio, "throttled_calls_boot": throttled(refused),
        "throttled_calls_total": throttled(refused_after), "refused": {
            f"{a} {c}": n for (a, c), n in refused_after.items()},
        "calls_boot": calls, "pods": len(names), "failed_adds": len(failures),
        "failures": failures[:5], "agent_rss_mib_total": mib(sum(rss)),
        "agent_rss_mib_mean": mib(sum(rss) // max(len(rss), 1)),
        "reference_name": "one node booting alone",
        "load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
    })
    out["rows"] = [
        {"metric": f"{count} nodes booting at once: seconds until all warm",
         "underlay": round(seconds, 2), "reference": round(reference, 2), "ratio": ratio,
         "also": f"EC2 token buckets on; {os.cpu_count()} CPUs"},
        {"metric": "throttled EC2 calls (RequestLimitExceeded) during the boot",
         "underlay": throttled(refused), "also": f"{sum(calls.values())} calls in all"},
        {"metric": f"failed ADDs ({PODS_PER_NODE} pods per node, {len(names)} in all)",
         "underlay": len(failures), "also": "target 0"},
        {"metric": f"agents' RSS, {count} nodes (MiB)", "underlay": mib(sum(rss)),
         "also": f"mean {mib(sum(rss) // max(len(rss), 1))} MiB per agent"},
    ]
    logger.info("scale: %s", out["rows"])
