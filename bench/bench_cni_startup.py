"""Start-up cost of the CNI executable, measured against references in the same run.

    .venv/bin/python -m bench.bench_cni_startup [-n 50]

Prints median and p99 wall and CPU time per exec (fork + exec + interpreter + imports + command) of:
the ``underlay`` launcher answering VERSION, the launcher running ADD up to the agent call
(agent absent: parse, netns check, connect refused, error JSON), a bare
``python -IS -c pass`` of the same interpreter, ``python3 -c pass`` (the system default),
and the Go reference plugin ``ptp`` answering VERSION; then ratios to those references.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from cni.launcher import write_plugin_launcher


def time_exec(argv: list[str], env: dict[str, str], stdin: bytes,
              n: int) -> tuple[list[float], list[float]]:
    """Wall time and CPU time (user + sys of the child, from its rusage) per exec, in ms.
    CPU time is what the process itself costs; wall time also counts waiting for a core."""
    wall, cpu = [], []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, input=stdin, capture_output=True, check=False, timeout=30)
        wall.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return wall, cpu


def summarize(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered), p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    with tempfile.TemporaryDirectory(prefix="h4bench-") as tmp:
        launcher = write_plugin_launcher(os.path.join(tmp, "bin"))
        version_in = json.dumps({"cniVersion": "1.0.0"}).encode()
        add_in = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "underlay",
                             "socket": os.path.join(tmp, "none.sock")}).encode()
        add_env = {**base, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bench0",
                   "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": tmp}
        cases = {
            "underlay VERSION": ([launcher], {**base, "CNI_COMMAND": "VERSION"}, version_in),
            "underlay ADD (agent down)": ([launcher], add_env, add_in),
            "python -IS -c pass": ([sys.executable, "-IS", "-c", "pass"], base, b""),
            "python3 -c pass": (["python3", "-c", "pass"], base, b""),
            "ptp VERSION (Go)": (["/usr/lib/cni/ptp"], {**base, "CNI_COMMAND": "VERSION"},
                                 version_in),
        }
        results = {}
        for _ in range(3):  # warm the page cache
            for argv, env, stdin in cases.values():
                subprocess.run(argv, env=env, input=stdin, capture_output=True, check=False)
        for name, (argv, env, stdin) in cases.items():
            wall, cpu = time_exec(argv, env, stdin, args.n)
            results[name] = summarize(wall) + summarize(cpu)
    print(f"CNI executable start-up, n={args.n} per case, ms per exec "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"  {'':28s} {'wall median':>12s} {'wall p99':>9s} {'cpu median':>11s} {'cpu p99':>8s}")
    for name, (w50, w99, c50, c99) in results.items():
        print(f"  {name:28s} {w50:12.1f} {w99:9.1f} {c50:11.1f} {c99:8.1f}")
    for ref in ("python3 -c pass", "python -IS -c pass", "ptp VERSION (Go)"):
        wall_ratio = results["underlay VERSION"][0] / results[ref][0]
        cpu_ratio = results["underlay VERSION"][2] / max(results[ref][2], 0.001)
        print(f"  underlay VERSION / {ref:20s} wall {wall_ratio:5.2f}x  cpu {cpu_ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
