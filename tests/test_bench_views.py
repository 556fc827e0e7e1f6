"""`cqrsflow bench projections` at a tiny scale: every figure is measured, and the
balances figure carries the raw DuckDB baseline it is compared with."""

from __future__ import annotations

from pathlib import Path

from flows.bench import ViewScale, bench_projections


def test_the_projections_bench_measures_each_figure_and_the_ratio_to_raw_duckdb(
    tmp_path: Path,
) -> None:
    tiny = ViewScale(events=20_000, runs=2, batch=5_000, rebuild_batch=12_000)
    figures = bench_projections(tiny, tmp_path, lambda *_: None)
    assert len(figures) == 4
    assert all(len(f.runs) == tiny.runs and min(f.runs) > 0 for f in figures)
    compared, _ = [f for f in figures if f.baseline_name is not None]
    assert len(compared.baseline_runs) == tiny.runs and min(compared.baseline_runs) > 0
    assert compared.ratio is not None and compared.ratio > 0
    assert compared.met is not None
