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
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lab.harness import Cluster, LabNode, Pod

logger = logging.getLogger(__name__)

PODS = 60
CONCURRENCY = 10
ATTACH_LATENCY = 1.0
INSTANCE_TYPE = "c5.4xlarge"
READY_TIMEOUT = 60.0
TARGET = 1.3  # fresh burst / lower bound, with no failed ADD


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


def addresses_per_eni(summary: dict) -> int:
    """Pod addresses one ENI can hold (secondary addresses, or 16 per prefix slot)."""
    return int(summary["capacity"]) // int(summary["max_enis"])


def new_enis_needed(pods: int, per_eni: int, enis: int) -> int:
    """ENIs a burst of ``pods`` must attach beyond the ``enis`` it starts with, when each
    holds ``per_eni`` pod addresses: the attaches no pool policy can avoid."""
    return max(math.ceil(pods / per_eni) - enis, 0)


@dataclass(frozen=True)
class BurstPlan:
    """A burst on a fresh node beside the same burst on a pre-warmed one."""

    pods: int = PODS
    concurrency: int = CONCURRENCY
    instance_type: str = INSTANCE_TYPE
    attach_latency: float = ATTACH_LATENCY
    agent: Mapping[str, Any] = field(default_factory=dict)  # both agents' configuration


def measure(plan: BurstPlan) -> dict:
    """Run the burst on a fresh node and on a pre-warmed reference node in one cluster;
    the figures, the lower bound (new ENIs x attach latency + reference) and the ratio."""
    with Cluster(nodes=2, instance_type=plan.instance_type) as cluster:
        assert cluster.cloud is not None
        control = cluster.cloud.control
        control.set_attach_latency(plan.attach_latency)
        fresh, warm = cluster.nodes
        # reference: a pool that already holds the whole burst (min_ips), so ADDs never wait
        cluster.run_agent(warm, {"snat": False, **plan.agent, "min_ips": plan.pods,
                                 "warm_ips": plan.pods})
        wait_available(cluster, warm, plan.pods, READY_TIMEOUT)
        ref_seconds, ref_pods, ref_failures = add_pods_concurrently(
            cluster, warm, [f"r{i}" for i in range(plan.pods)], plan.concurrency)

        cluster.run_agent(fresh, {"snat": False, **plan.agent})
        before = cluster.agent_get(fresh, "/v1/pool")[1]
        control.reset_counts()
        seconds, pods, failures = add_pods_concurrently(
            cluster, fresh, [f"b{i}" for i in range(plan.pods)], plan.concurrency)
        after = cluster.agent_get(fresh, "/v1/pool")[1]
        calls = control.call_counts()
        delete_pods_concurrently(cluster, pods + ref_pods, plan.concurrency)

    per_eni = addresses_per_eni(after)
    new_enis = new_enis_needed(plan.pods, per_eni, int(before["enis"]))
    lower_bound = new_enis * plan.attach_latency + ref_seconds
    logger.info("burst: %.2fs for %d pods, lower bound %.2fs", seconds, plan.pods,
                lower_bound)
    return {
        "pods": plan.pods, "concurrency": plan.concurrency,
        "attach_latency": plan.attach_latency, "instance_type": plan.instance_type,
        "agent": dict(plan.agent), "seconds": round(seconds, 3),
        "failed_adds": len(failures), "failures": failures[:5],
        "reference_seconds": round(ref_seconds, 3), "reference_failed_adds": len(ref_failures),
        "per_eni": per_eni, "new_enis_needed": new_enis, "enis_after": after["enis"],
        "pool_after": after, "lower_bound_seconds": round(lower_bound, 3),
        "ratio": round(seconds / lower_bound, 2), "cloud_calls": calls,
        "reference_name": "lower bound (new ENIs x attach latency + pre-warmed burst)",
    }


def burst_rows(figures: dict, target: float) -> list[dict]:
    f = figures
    return [
        {"metric": f"{f['pods']} pods, {f['concurrency']} at a time, attach"
                   f" {f['attach_latency']:g}s: seconds until all wired",
         "underlay": round(f["seconds"], 2), "reference": round(f["lower_bound_seconds"], 2),
         "ratio": f["ratio"],
         "also": f"{f['new_enis_needed']} ENIs x {f['attach_latency']:g}s + pre-warmed burst "
                 f"{f['reference_seconds']:.2f}s; target <= {target:g}x"},
        {"metric": "failed ADDs in the burst", "underlay": f["failed_adds"],
         "reference": f["reference_failed_adds"], "also": "target 0"},
    ]


def run(out: dict, *, quick: bool = False) -> None:
    out.update(measure(BurstPlan()))
    out["rows"] = burst_rows(out, TARGET)
