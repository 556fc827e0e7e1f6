"""`cqrsflow bench query` at a tiny scale: every figure is measured, the lookup and
aggregate figures carry the baselines they are compared with, and the latency
percentiles come per run, ordered, the lookup's beside the raw lookup's."""

from __future__ import annotations

from pathlib import Path

from flows.bench import Scale, bench_query


def test_the_query_bench_measures_each_figure_against_its_baseline(tmp_path: Path) -> None:
    tiny = Scale(write_events=0, runs=1, log_events=40_000, hot_events=100, rss_commands=0)
    figures = bench_query(tiny, tmp_path, lambda *_: None)
    rates = [f for f in figures if not f.name.startswith("query latency")]
    assert [f.unit for f in rates] == ["µs", "queries/s", "lookups/s", "queries/s", "queries/s"]
    assert all(min(f.runs) > 0 for f in figures)
    compared = [f for f in rates if f.baseline_name is not None]
    assert len(compared) == 3 and all(f.ratio is not None and f.ratio > 0 for f in compared)
    assert "exact match" in compared[1].name and "roll-up" in compared[2].name

    latencies = [f for f in figures if f.name.startswith("query latency")]
    assert len(latencies) == 12 and {f.unit for f in latencies} == {"µs"}
    assert all(len(f.runs) == tiny.runs for f in latencies)
    for kind in ("uncached point lookup", "cached result", "aggregate from a view"):
        mine = [f for f in latencies if kind in f.name]
        assert [f.name.rsplit(", ", 1)[1] for f in mine] == ["p50", "p95", "p99", "p99.9"]
        assert [f.value for f in mine] == sorted(f.value for f in mine)
    lookups = [f for f in latencies if "uncached point lookup" in f.name]
    assert all(f.baseline is not None and f.ratio is not None for f in lookups)
