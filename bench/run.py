"""``make bench``: run each benchmark in turn, write bench/results/<timestamp>.json and print
one markdown table.

    .venv/bin/python -m bench.run [--only NAME] [--quick] [--list]

A benchmark is either a module with ``run(out: dict, *, quick: bool) -> None`` that fills
``out`` (its figures, and ``rows``: dicts with metric, underlay, reference, ratio, also),
or a script (``python -m bench.X``) whose last JSON line on stdout is kept; a script's
figures go into the table as metric/value rows. A benchmark that fails is recorded with
its error and the others still run; the exit code is then 1. Add new ones to BENCHMARKS.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SCRIPT_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    script_args: tuple[str, ...] | None = None  # None: in-process ``run``
    quick_args: tuple[str, ...] = ()


BENCHMARKS = (
    Benchmark("pool_efficiency", "bench.pool_efficiency"),
    Benchmark("prefix_efficiency", "bench.prefix_efficiency"),
    Benchmark("cni_latency", "bench.cni_latency"),
    Benchmark("add_breakdown", "bench.bench_add_breakdown"),
    Benchmark("burst", "bench.bench_burst"),
    Benchmark("burst_prefix", "bench.bench_burst_prefix"),
    Benchmark("agent_resources", "bench.bench_agent_resources"),
    Benchmark("scale", "bench.bench_scale"),
    Benchmark("borrow", "bench.bench_borrow", ("-n", "300"), ("-n", "200")),
    Benchmark("cni_startup", "bench.bench_cni_startup"),
)


def run_module(bench: Benchmark, quick: bool) -> dict:
    out: dict = {}
    importlib.import_module(bench.module).run(out, quick=quick)
    return out


def run_script(bench: Benchmark, quick: bool) -> dict:
    args = bench.quick_args if quick else bench.script_args
    proc = subprocess.run([sys.executable, "-m", bench.module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{bench.module} exited {proc.returncode}: {proc.stderr[-2000:]}")
    figures = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                figures = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    out: dict = {"stdout": proc.stdout}
    if isinstance(figures, dict):
        out["figures"] = figures
        out["rows"] = [{"metric": key, "underlay": value} for key, value in figures.items()
                       if isinstance(value, (int, float, str))]
    else:
        out["rows"] = [{"metric": line.strip()} for line in proc.stdout.splitlines()
                       if line.strip()]
    return out


def run_benchmarks(selected: list[Benchmark], quick: bool) -> dict:
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "quick": quick, "benchmarks": {}}
    for bench in selected:
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            out = run_script(bench, quick) if bench.script_args is not None else \
                run_module(bench, quick)
            out["ok"] = True
        except Exception as exc:  # one broken benchmark must not hide the others
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()}
        out["seconds"] = round(time.monotonic() - started, 2)
        report["benchmarks"][bench.name] = out
    return report


def render_table(report: dict) -> str:
    lines = ["| benchmark | metric | underlay | reference | ratio | also |",
             "|---|---|---|---|---|---|"]
    for name, out in report["benchmarks"].items():
        if not out.get("ok"):
            lines.append(f"| {name} | FAILED: {_cell(out.get('error', ''))[:200]} | | | | |")
            continue
        label = name + (f" (vs {out['reference_name']})" if out.get("reference_name") else "")
        for row in out.get("rows", []):
            ratio = row.get("ratio")
            lines.append("| " + " | ".join(_cell(v) for v in (
                label, row.get("metric", ""), row.get("underlay", ""),
                row.get("reference", ""), "" if ratio is None else f"{ratio}x",
                row.get("also", ""))) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_report(report: dict, directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = directory / f"{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="underlay benchmarks (make bench)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter traces")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    names = [b.name for b in BENCHMARKS]
    if args.list:
        print("\n".join(names))
        return 0
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(names)}")
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    report = run_benchmarks(selected, args.quick)
    path = write_report(report)
    print(render_table(report))
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if all(out.get("ok") for out in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
