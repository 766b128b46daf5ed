"""The ``make bench`` frame: benchmarks run in turn, a failing one is recorded without
hiding the others, the JSON lands in the results directory, the table has one row per
figure, and bad options are refused by name."""
from __future__ import annotations

import json

import pytest

from bench import run as bench_run


def test_runs_each_benchmark_records_failures_and_writes_json(tmp_path):
    selected = [bench_run.Benchmark("pool_efficiency", "bench.pool_efficiency"),
                bench_run.Benchmark("missing", "bench.no_such_benchmark")]
    report = bench_run.run_benchmarks(selected, quick=True)
    pool, missing = report["benchmarks"]["pool_efficiency"], report["benchmarks"]["missing"]
    assert pool["ok"] and pool["rows"] and pool["policies"]["underlay"]["adds"] > 0
    assert not missing["ok"] and "no_such_benchmark" in missing["error"]
    path = bench_run.write_report(report, tmp_path)
    assert path.parent == tmp_path and json.loads(path.read_text())["quick"] is True
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    table = bench_run.render_table(report).splitlines()
    assert table[0].startswith("| benchmark | metric | underlay | reference | ratio |")
    assert len(table) == 2 + len(pool["rows"]) + 1
    assert table[-1].startswith("| missing | FAILED: ModuleNotFoundError")


def test_script_benchmarks_keep_their_last_json_line(tmp_path):
    script = bench_run.Benchmark("trace", "bench.pool_efficiency", ("--seeds", "1", "--hours",
                                                                    "0.5"), ())
    out = bench_run.run_script(script, quick=False)
    assert "underlay" in out["stdout"] and out["rows"]  # no JSON line: the lines themselves


def test_unknown_benchmark_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_run.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown benchmark nope" in capsys.readouterr().err


def test_list_names_every_benchmark(capsys):
    assert bench_run.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == [b.name for b in bench_run.BENCHMARKS]
