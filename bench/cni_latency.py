"""CNI ADD and DEL latency in the ``make bench`` table: ``bench_cni_latency``'s interleaved
rounds (libcni client, underlay in veth mode beside ptp + host-local on the same node) as
an in-process benchmark that reports median, p99 and the ratios as table rows.

    .venv/bin/python -m bench.run --only cni_latency     (UNDERLAY_BENCH_CNI_ROUNDS=N)

Rounds per plugin: 100 by default (20 with --quick); ``UNDERLAY_BENCH_CNI_ROUNDS`` sets it.
Targets: ADD median within 1.25x of the reference, p99 within 2x; DEL median within 1.25x.
"""
from __future__ import annotations

import logging
import os
import statistics

from bench.bench_agent_resources import write_reference_conflist
from bench.bench_cni_latency import percentile, run_rounds
from lab.harness import Cluster

logger = logging.getLogger(__name__)

ROUNDS = 100
QUICK_ROUNDS = 20
WARMUP = 3
TARGETS = {"ADD median": 1.25, "ADD p99": 2.0, "DEL median": 1.25}


def read_rounds(quick: bool) -> int:
    raw = os.environ.get("UNDERLAY_BENCH_CNI_ROUNDS")
    if raw is None:
        return QUICK_ROUNDS if quick else ROUNDS
    try:
        rounds = int(raw)
    except ValueError:
        raise ValueError(f"UNDERLAY_BENCH_CNI_ROUNDS must be an integer, got {raw!r}") from None
    if rounds < 1:
        raise ValueError(f"UNDERLAY_BENCH_CNI_ROUNDS must be >= 1, got {rounds}")
    return rounds


def measure(rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """ADD and DEL wall times (ms) per plugin, rounds interleaved plugin by plugin."""
    with Cluster(nodes=1, subnet_cidrs=("10.0.0.0/24",)) as cluster:
        assert cluster.record is not None
        node = cluster.nodes[0]
        cluster.run_agent(node, {"warm_ips": 8, "cooldown_seconds": 0.1, "snat": False})
        plugins = {"underlay": cluster.conflist_for(node),
                   "ptp+host-local": write_reference_conflist(node.workdir / "ptp.conflist",
                                                              node.workdir / "host-local")}
        results: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in plugins}
        for name, conflist in plugins.items():  # warm-up; the first ADD is checked to wire
            run_rounds(cluster, node, conflist, node.workdir / "cw", WARMUP,
                       name[0] + "w")
        for i in range(rounds):
            for name, conflist in plugins.items():
                adds, dels = run_rounds(cluster, node, conflist, node.workdir / "c", 1,
                                        f"{name[0]}{i:04d}")
                results[name][0].extend(adds)
                results[name][1].extend(dels)
    return results


def run(out: dict, *, quick: bool = False) -> None:
    rounds = read_rounds(quick)
    results = measure(rounds)
    figures: dict[str, dict[str, float]] = {}
    for name, (adds, dels) in results.items():
        figures[name] = {"ADD median": statistics.median(adds),
                         "ADD p99": percentile(adds, 0.99),
                         "DEL median": statistics.median(dels),
                         "DEL p99": percentile(dels, 0.99)}
    ours, ref = figures["underlay"], figures["ptp+host-local"]
    out.update({"rounds": rounds, "ms": {k: {m: round(v, 2) for m, v in f.items()}
                                         for k, f in figures.items()},
                "load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
                "reference_name": "ptp+host-local"})
    out["rows"] = []
    for metric in ("ADD median", "ADD p99", "DEL median", "DEL p99"):
        target = TARGETS.get(metric)
        out["rows"].append({
            "metric": f"{metric} (ms, n={rounds})", "underlay": round(ours[metric], 1),
            "reference": round(ref[metric], 1), "ratio": round(ours[metric] / ref[metric], 2),
            "also": f"target <= {target}x" if target else ""})
    logger.info("cni latency: %s", out["rows"])
