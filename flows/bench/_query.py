"""`cqrsflow bench query`: the query layer against raw DuckDB on the same views and log.

The log is the one `bench read` measures (1M events at small, 10M otherwise, about a
tenth as many accounts); the bank's views are built from it once.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from flows import bank
from flows._progress import Report
from flows.bench._harness import PERCENTILES, Figure, interleaved, percentile, rate, timed
from flows.bench._store import Scale, build_log, fresh_dir
from queries import Plan, Projections, QueryLayer
from store import LogReader

LOOKUP = (
    "SELECT aggregate_id, sum(CASE event_type WHEN 'Deposited' THEN amount "
    "WHEN 'Withdrawn' THEN -amount ELSE 0 END) AS balance FROM events "
    "WHERE aggregate_id = '{}' GROUP BY aggregate_id"
)
# The view's own grouping (an exact match), then a coarser one (a roll-up of the view).
# DuckDB here spends ~0.3 ms on any statement and ~0.6 ms on any GROUP BY, however few
# rows: the roll-up's ratio is bounded by that, not by the rows it reads.
EXACT = (
    "SELECT date_trunc('day', timestamp) AS day, event_type, count(*) AS events, "
    "sum(amount) AS total FROM events GROUP BY ALL"
)
AGGREGATE = (
    "SELECT event_type, count(*) AS events, sum(amount) AS total FROM events GROUP BY event_type"
)


def _per_call(n: int, call: Callable[[int], object]) -> float:
    """Seconds per call, over `n` calls."""
    start = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - start) / n


def _each_call(n: int, call: Callable[[int], object]) -> list[float]:
    """Seconds of each of `n` calls (for percentiles; the clock costs ~0.1 µs a call)."""
    clock = time.perf_counter
    out = []
    for i in range(n):
        start = clock()
        call(i)
        out.append(clock() - start)
    return out


def latency_figures(
    what: str,
    samples: list[list[float]],
    baseline_name: str | None = None,
    baseline_samples: list[list[float]] | None = None,
) -> list[Figure]:
    """P50/P95/P99/P99.9 of each run's per-call seconds, in µs, medians over the runs,
    each beside the same percentile of the baseline's runs when there is one."""

    def per_run(runs: list[list[float]], q: float) -> tuple[float, ...]:
        return tuple(percentile(run, q) * 1e6 for run in runs)

    return [
        Figure(
            f"query latency, {what}, {name}",
            "µs",
            per_run(samples, q),
            "lower",
            baseline_name=baseline_name,
            baseline_runs=per_run(baseline_samples, q) if baseline_samples else (),
        )
        for name, q in PERCENTILES
    ]


def _view_vs_scan(
    layer: QueryLayer,
    sql: str,
    scale: Scale,
    ratio_target: float | None,
    latencies: list[list[float]] | None = None,
) -> Figure:
    """`sql` run uncached by the view the planner chose, and by its base-scan plan."""
    plan, params = layer.planner.plan(sql)
    assert plan.chosen.target != "log", plan.chosen
    base = next(c for c in plan.candidates if c.target == "log")
    base_plan = dataclasses.replace(plan, chosen=base, views=(), reads_log=True)

    def run_plan(p: Plan) -> float:
        return rate(1, timed(lambda: layer.execute(p, params)))

    def from_view_run() -> float:
        seconds = _each_call(_VIEW_REPEATS, lambda _: layer.execute(plan, params))
        if latencies is not None:
            latencies.append(seconds)
        return 1 / statistics.median(seconds)

    run_plan(plan), run_plan(base_plan)  # the first runs learn the schema, register the log
    from_view, from_log = interleaved(scale.runs, from_view_run, lambda: run_plan(base_plan))
    return Figure(
        f"aggregate from a view ({plan.chosen.target}, {plan.chosen.rule})",
        "queries/s",
        tuple(from_view),
        "higher",
        baseline_name=f"the planner's base-scan plan, {scale.log_events:,} events",
        baseline_runs=tuple(from_log),
        ratio_target=ratio_target,
    )


# Runs of an aggregate from a view per measured run: its median is the run's figure,
# and all of them are latency samples.
_VIEW_REPEATS = 25


def bench_query(
    scale: Scale, workdir: Path, progress: Report, log: Path | None = None
) -> list[Figure]:
    """`log`: a data directory `build_log` wrote at this scale (see `bench_read`)."""
    directory = log if log is not None else fresh_dir(workdir)
    if log is None:
        build_log(directory, scale, progress)
    progress("building the bank's views from the log")
    reader = LogReader.open(directory)
    projections = Projections.open(directory, bank.VIEWS, bank.layout(), reader=reader)
    projections.catch_up(reader)
    layer = QueryLayer.open(projections, reader)
    accounts = [f"acct-{i:07d}" for i in range(scale.log_events // 10)]
    assert layer.planner.plan(LOOKUP.format(accounts[0]))[0].chosen.target == "balances"
    figures: list[Figure] = []
    try:
        progress("planner overhead on a plan-cache hit")
        n = 2_000
        overhead, _ = interleaved(
            scale.runs,
            lambda: _per_call(n, lambda i: layer.planner.plan(LOOKUP.format(accounts[i]))) * 1e6,
        )
        figures.append(Figure("planner, plan-cache hit", "µs", tuple(overhead), "lower", 50))

        progress("cached results")
        layer.run(AGGREGATE)
        n = 50_000
        cached, _ = interleaved(
            scale.runs, lambda: rate(n, _per_call(n, lambda i: layer.run(AGGREGATE)) * n)
        )
        figures.append(
            Figure("cached query results", "queries/s", tuple(cached), "higher", 200_000)
        )
        cached_latency = [
            _each_call(2_000, lambda i: layer.run(AGGREGATE)) for _ in range(scale.runs)
        ]

        progress("uncached point lookups vs raw prepared DuckDB lookups")
        raw = projections.con.cursor()
        table = projections.table("balances")
        prepared = f"SELECT account, balance FROM {table} WHERE account = $1"
        n = 500
        offset = 0
        lookups: list[list[float]] = []
        raw_lookups: list[list[float]] = []

        def ours() -> float:
            nonlocal offset
            offset += n  # new keys: every query misses the result cache
            keys = [accounts[(offset + i) % len(accounts)] for i in range(n)]
            lookups.append(_each_call(n, lambda i: layer.run(LOOKUP.format(keys[i]))))
            return rate(n, sum(lookups[-1]))

        def baseline() -> float:
            keys = [accounts[(offset + n + i) % len(accounts)] for i in range(n)]
            raw_lookups.append(_each_call(n, lambda i: raw.execute(prepared, [keys[i]]).fetchall()))
            return rate(n, sum(raw_lookups[-1]))

        mine, theirs = interleaved(scale.runs, ours, baseline)
        figures.append(
            Figure(
                "uncached point lookup on a view",
                "lookups/s",
                tuple(mine),
                "higher",
                baseline_name="raw prepared DuckDB lookup (fetchall)",
                baseline_runs=tuple(theirs),
                ratio_target=0.8,
            )
        )

        exact_latency: list[list[float]] = []
        for sql, ratio_target, samples in ((EXACT, 100.0, exact_latency), (AGGREGATE, None, None)):
            progress(f"an aggregate from a view vs the base scan of {scale.log_events:,} events")
            figures.append(_view_vs_scan(layer, sql, scale, ratio_target, samples))
    finally:
        layer.close()
        projections.close()
    return [
        *figures,
        *latency_figures(
            "uncached point lookup on a view",
            lookups,
            "raw prepared DuckDB lookup (fetchall)",
            raw_lookups,
        ),
        *latency_figures("cached result", cached_latency),
        *latency_figures("aggregate from a view (exact match)", exact_latency),
    ]
