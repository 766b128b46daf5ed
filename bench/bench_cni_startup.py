"""Start-up cost of the host CNI executable against Go's reference plugins, in one run:

    .venv/bin/python -m bench.run --only cni_startup

Wall and CPU time per exec (fork + exec + the program, median and p99 of n, cases
interleaved so load drifts hit all alike) of: the ``underlay`` executable (the static Go
shim, ``build/underlay``) answering VERSION, the same running ADD with no agent (read the
netconf, connect refused, print the error), and the reference plugins ``ptp`` and
``host-local`` answering VERSION. The table rows are ratios to ptp's VERSION; the target
for underlay's VERSION is at most 1.5x.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import tempfile
import time

from lab.node_io import build_shim

logger = logging.getLogger(__name__)

ROUNDS, QUICK_ROUNDS = 200, 30
TARGET_VERSION_RATIO = 1.5
REFERENCE = "/usr/lib/cni/ptp"


def time_exec(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, float]:
    """(wall ms, CPU ms of the child) for one exec."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, input=stdin, capture_output=True, check=False, timeout=30)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(rounds: int) -> dict[str, dict[str, float]]:
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    shim = build_shim()
    version_in = json.dumps({"cniVersion": "1.0.0"}).encode()
    with tempfile.TemporaryDirectory(prefix="h4bench-") as tmp:
        add_in = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "underlay",
                             "socket": os.path.join(tmp, "none.sock")}).encode()
        add_env = {**base, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bench0",
                   "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": tmp}
        version_env = {**base, "CNI_COMMAND": "VERSION"}
        cases = {
            "underlay VERSION": ([shim], version_env, version_in),
            "underlay ADD (agent down)": ([shim], add_env, add_in),
            "ptp VERSION": ([REFERENCE], version_env, version_in),
            "host-local VERSION": (["/usr/lib/cni/host-local"], version_env, version_in),
        }
        samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
        for i in range(rounds + 5):  # the first 5 warm the page cache
            for name, (argv, env, stdin) in cases.items():
                wall, cpu = time_exec(argv, env, stdin)
                if i >= 5:
                    samples[name][0].append(wall)
                    samples[name][1].append(cpu)
    return {name: {"wall median": statistics.median(w), "wall p99": percentile(w, 0.99),
                   "cpu median": statistics.median(c), "cpu p99": percentile(c, 0.99)}
            for name, (w, c) in samples.items()}


def run(out: dict, *, quick: bool = False) -> None:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    figures = measure(rounds)
    ref = figures["ptp VERSION"]
    out.update({"rounds": rounds, "ms": {k: {m: round(v, 2) for m, v in f.items()}
                                         for k, f in figures.items()},
                "binary_bytes": os.path.getsize(build_shim()),
                "load_average": os.getloadavg()[0], "reference_name": "ptp VERSION (Go)"})
    out["rows"] = []
    for name in ("underlay VERSION", "underlay ADD (agent down)", "host-local VERSION"):
        for metric in ("wall median", "wall p99", "cpu median"):
            value = figures[name][metric]
            target = (f"target <= {TARGET_VERSION_RATIO}x"
                      if name == "underlay VERSION" and metric == "wall median" else "")
            out["rows"].append({
                "metric": f"{name}: {metric} (ms per exec, n={rounds})",
                "underlay": round(value, 2), "reference": round(ref[metric], 2),
                "ratio": round(value / max(ref[metric], 0.001), 2), "also": target})
    out["rows"].append({"metric": "underlay executable size (bytes)",
                        "underlay": out["binary_bytes"],
                        "reference": os.path.getsize(REFERENCE),
                        "ratio": round(out["binary_bytes"] / os.path.getsize(REFERENCE), 2),
                        "also": "static; ptp is dynamically linked"})
    logger.info("cni start-up: %s", out["ms"])
