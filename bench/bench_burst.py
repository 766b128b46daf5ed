"""Burst: 60 pods created 10 at a time on a fresh node while the emulated cloud takes 1 s to
attach an ENI, against the lower bound measured in the same run.

    .venv/bin/python -m bench.run --only burst

Two nodes (c5.4xlarge: 8 ENIs x 29 pod addresses, so 60 pods need the primary ENI and two
more) share one emulated cloud with attach latency 1 s:

- the fresh node's agent starts with its defaults (warm_ips 2) and gets the burst as soon
  as it is ready: time until all 60 pods are wired, failed ADDs, ENIs attached;
- the reference node's agent is pre-warmed with ``min_ips`` = the burst, so the same burst
  there costs only the per-ADD work (libcni, executable, agent, datapath) under the same
  concurrency, with no cloud call in the way.

lower bound = new ENIs needed x attach latency + reference burst time; ratio = fresh burst
time / lower bound (target <= 1.3 with zero failed ADDs). Every pod is wired through the
real libcni client; the burst waits for every ADD to return its result.
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

from lab.harness import Cluster, LabNode, Pod

logger = logging.getLogger(__name__)

PODS = 60
CONCURRENCY = 10
ATTACH_LATENCY = 1.0
INSTANCE_TYPE = "c5.4xlarge"
READY_TIMEOUT = 60.0


def add_pods_concurrently(cluster: Cluster, node: LabNode, names: list[str],
                          concurrency: int) -> tuple[float, list[Pod], list[str]]:
    """ADD every pod through libcni, at most ``concurrency`` at once; returns the wall time
    until the last ADD returned, the pods wired and the errors of the failed ADDs."""
    failures: list[str] = []

    def add(name: str) -> Pod | None:
        try:
            return cluster.add_pod(node, name)
        except Exception as exc:  # counted, not fatal: failed ADDs are a figure
            failures.append(f"{name}: {exc}"[:300])
            return None

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        pods = [p for p in pool.map(add, names) if p is not None]
    return time.perf_counter() - started, pods, failures


def delete_pods_concurrently(cluster: Cluster, pods: list[Pod], concurrency: int) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(cluster.del_pod, pods))


def wait_available(cluster: Cluster, node: LabNode, count: int, timeout: float) -> dict:
    """Poll the agent's pool until ``count`` addresses are free; returns the summary."""
    deadline = time.monotonic() + timeout
    while True:
        status, summary = cluster.agent_get(node, "/v1/pool")
        if status == 200 and summary.get("available", 0) >= count:
            return summary
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.name}: {count} free addresses not reached in "
                               f"{timeout}s (pool {summary})")
        time.sleep(0.1)


def secondary_per_eni(summary: dict) -> int:
    return int(summary["capacity"]) // int(summary["max_enis"])


def run(out: dict, *, quick: bool = False) -> None:
    with Cluster(nodes=2, instance_type=INSTANCE_TYPE) as cluster:
        assert cluster.cloud is not None
        control = cluster.cloud.control
        control.set_attach_latency(ATTACH_LATENCY)
        fresh, warm = cluster.nodes
        # reference: a pool that already holds the whole burst (min_ips), so ADDs never wait
        cluster.run_agent(warm, {"snat": False, "min_ips": PODS, "warm_ips": PODS})
        wait_available(cluster, warm, PODS, READY_TIMEOUT)
        ref_seconds, ref_pods, ref_failures = add_pods_concurrently(
            cluster, warm, [f"r{i}" for i in range(PODS)], CONCURRENCY)

        cluster.run_agent(fresh, {"snat": False})
        before = cluster.agent_get(fresh, "/v1/pool")[1]
        control.reset_counts()
        seconds, pods, failures = add_pods_concurrently(
            cluster, fresh, [f"b{i}" for i in range(PODS)], CONCURRENCY)
        after = cluster.agent_get(fresh, "/v1/pool")[1]
        calls = control.call_counts()
        delete_pods_concurrently(cluster, pods + ref_pods, CONCURRENCY)

    per_eni = secondary_per_eni(after)
    new_enis = max(math.ceil(PODS / per_eni) - int(before["enis"]), 0)
    lower_bound = new_enis * ATTACH_LATENCY + ref_seconds
    ratio = round(seconds / lower_bound, 2)
    out.update({
        "pods": PODS, "concurrency": CONCURRENCY, "attach_latency": ATTACH_LATENCY,
        "instance_type": INSTANCE_TYPE, "seconds": round(seconds, 3),
        "failed_adds": len(failures), "failures": failures[:5],
        "reference_seconds": round(ref_seconds, 3), "reference_failed_adds": len(ref_failures),
        "new_enis_needed": new_enis, "enis_after": after["enis"],
        "lower_bound_seconds": round(lower_bound, 3), "ratio": ratio, "cloud_calls": calls,
        "reference_name": "lower bound (new ENIs x attach latency + pre-warmed burst)",
    })
    out["rows"] = [
        {"metric": f"{PODS} pods, {CONCURRENCY} at a time, attach {ATTACH_LATENCY:g}s: "
                   "seconds until all wired", "underlay": round(seconds, 2),
         "reference": round(lower_bound, 2), "ratio": ratio,
         "also": f"{new_enis} ENIs x {ATTACH_LATENCY:g}s + pre-warmed burst "
                 f"{ref_seconds:.2f}s; target <= 1.3x"},
        {"metric": "failed ADDs in the burst", "underlay": len(failures),
         "reference": len(ref_failures), "also": "target 0"},
    ]
    logger.info("burst: %.2fs for %d pods, lower bound %.2fs", seconds, PODS, lower_bound)
