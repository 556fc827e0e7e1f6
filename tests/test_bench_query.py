"""`cqrsflow bench query` at a tiny scale: every figure is measured, and the lookup and
aggregate figures carry the baselines they are compared with."""

from __future__ import annotations

from pathlib import Path

from flows._bench_query import bench_query
from flows._bench_store import Scale


def test_the_query_bench_measures_each_figure_against_its_baseline(tmp_path: Path) -> None:
    tiny = Scale(write_events=0, runs=1, log_events=40_000, hot_events=100, rss_commands=0)
    figures = bench_query(tiny, tmp_path, lambda *_: None)
    assert [f.unit for f in figures] == ["µs", "queries/s", "lookups/s", "queries/s", "queries/s"]
    assert all(min(f.runs) > 0 for f in figures)
    compared = [f for f in figures if f.baseline_name is not None]
    assert len(compared) == 3 and all(f.ratio is not None and f.ratio > 0 for f in compared)
    assert "exact match" in compared[1].name and "roll-up" in compared[2].name
