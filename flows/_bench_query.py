"""`cqrsflow bench query`: the query layer against raw DuckDB on the same views and log.

The log is the one `bench read` measures (1M events at small, 10M otherwise, about a
tenth as many accounts); the bank's views are built from it once.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from flows import bank
from flows._bench import Figure, interleaved, rate
from flows._bench_store import Scale, _fresh_dir, build_log
from queries import Projections, QueryLayer, register_log
from store import LogReader

LOOKUP = (
    "SELECT aggregate_id, sum(CASE event_type WHEN 'Deposited' THEN amount "
    "WHEN 'Withdrawn' THEN -amount ELSE 0 END) AS balance FROM events "
    "WHERE aggregate_id = '{}' GROUP BY aggregate_id"
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


def bench_query(scale: Scale, workdir: Path, progress: Callable[[str], None]) -> list[Figure]:
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

        progress(f"an aggregate from a view vs the base scan of {scale.log_events:,} events")
        plan, _ = layer.planner.plan(AGGREGATE)
        base = next(c for c in plan.candidates if c.target == "log")
        assert plan.chosen.target != "log", plan.chosen

        registered: set[int] = set()

        def run_sql(sql: str, log: bool) -> float:
            def once(con: duckdb.DuckDBPyConnection) -> float:
                if log and id(con) not in registered:  # once, as a serving process does
                    register_log(con, reader)
                    registered.add(id(con))
                start = time.perf_counter()
                con.sql(sql).to_arrow_table()
                return time.perf_counter() - start

            return 1 / layer.pool.run(once)

        run_sql(base.sql, log=True)
        from_view, from_log = interleaved(
            scale.runs,
            lambda: statistics.median(run_sql(plan.chosen.sql, log=False) for _ in range(5)),
            lambda: run_sql(base.sql, log=True),
        )
        figures.append(
            Figure(
                f"aggregate from a view ({plan.chosen.target}, {plan.chosen.rule})",
                "queries/s",
                tuple(from_view),
                "higher",
                baseline_name=f"the planner's base-scan plan, {scale.log_events:,} events",
                baseline_runs=tuple(from_log),
                ratio_target=100,
            )
        )
    finally:
        layer.close()
        projections.close()
    return figures
