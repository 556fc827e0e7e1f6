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
from flows._bench import Figure, interleaved, rate, timed
from flows._bench_store import Scale, _fresh_dir, build_log
from flows._progress import Report
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


def _view_vs_scan(layer: QueryLayer, sql: str, scale: Scale, ratio_target: float | None) -> Figure:
    """`sql` run uncached by the view the planner chose, and by its base-scan plan."""
    plan, params = layer.planner.plan(sql)
    assert plan.chosen.target != "log", plan.chosen
    base = next(c for c in plan.candidates if c.target == "log")
    base_plan = dataclasses.replace(plan, chosen=base, views=(), reads_log=True)

    def run_plan(p: Plan) -> float:
        return rate(1, timed(lambda: layer.execute(p, params)))

    run_plan(plan), run_plan(base_plan)  # the first runs learn the schema, register the log
    from_view, from_log = interleaved(
        scale.runs,
        lambda: statistics.median(run_plan(plan) for _ in range(5)),
        lambda: run_plan(base_plan),
    )
    return Figure(
        f"aggregate from a view ({plan.chosen.target}, {plan.chosen.rule})",
        "queries/s",
        tuple(from_view),
        "higher",
        baseline_name=f"the planner's base-scan plan, {scale.log_events:,} events",
        baseline_runs=tuple(from_log),
        ratio_target=ratio_target,
    )


def bench_query(scale: Scale, workdir: Path, progress: Report) -> list[Figure]:
    directory = _fresh_dir(workdir)
    build_log(directory, scale, progress)
    progress("building the bank's views from the log")
    reader = LogReader.open(directory)
    projections = Projections.open(directory, bank.VIEWS, bank.layout(), reader=reader)
    projections.catch_up(reader)
    layer = QueryLayer(projections, reader)
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

        progress("uncached point lookups vs raw prepared DuckDB lookups")
        raw = projections.con.cursor()
        table = projections.table("balances")
        prepared = f"SELECT account, balance FROM {table} WHERE account = $1"
        n = 500
        offset = 0

        def ours() -> float:
            nonlocal offset
            offset += n  # new keys: every query misses the result cache
            keys = [accounts[(offset + i) % len(accounts)] for i in range(n)]
            return rate(1, _per_call(n, lambda i: layer.run(LOOKUP.format(keys[i]))))

        def baseline() -> float:
            keys = [accounts[(offset + n + i) % len(accounts)] for i in range(n)]
            return rate(1, _per_call(n, lambda i: raw.execute(prepared, [keys[i]]).fetchall()))

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

        for sql, ratio_target in ((EXACT, 100.0), (AGGREGATE, None)):
            progress(f"an aggregate from a view vs the base scan of {scale.log_events:,} events")
            figures.append(_view_vs_scan(layer, sql, scale, ratio_target))
    finally:
        layer.close()
        projections.close()
    return figures
