"""The query layer's execution: a plan run on the pooled DuckDB connections, timed.

`Execution.compute` runs a plan (past every cache), counts it, and feeds its run time
back to the planner's cost model. A plan reading the log registers the event tables on
its connection as of the log now, once per connection and log position. Small answers
(a key lookup, a small view) skip DuckDB's Arrow path: see `_SMALL`.
"""

from __future__ import annotations

import time

import duckdb
import pyarrow as pa

from queries._errors import QueryError
from queries._planner import Plan, Planner
from queries._serving._metrics import EXECUTION_SECONDS, QUERIES, RESULT_CACHE_MISSES, chose
from queries._serving._pool import ConnectionPool
from queries._tables import register_log
from store import LogReader

# Results of up to this many rows (an index lookup, a small view) are fetched as Python
# rows and made Arrow with the schema their first run gave: DuckDB's Arrow path costs
# a few hundred microseconds to set up, as much as the lookup itself.
_SMALL = 1_000


def _small_result(cursor: duckdb.DuckDBPyConnection, schema: pa.Schema) -> pa.Table:
    rows = cursor.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


class Execution:
    """Runs plans on `pool`, over `reader`'s log, teaching `planner` what they cost."""

    def __init__(self, pool: ConnectionPool, reader: LogReader, planner: Planner) -> None:
        self.pool = pool
        self.reader = reader
        self.planner = planner
        self.computed = 0  # answers computed (cache misses of every tier)
        self._schemas: dict[str, pa.Schema] = {}  # of small answers, by statement
        self._registered: dict[int, tuple[tuple[int, int], ...]] = {}  # id(con) -> log at

    def compute(self, sql: str, plan: Plan, params: list[object]) -> pa.Table:
        """The answer to `sql`, planned as `plan`, computed; its run time observed."""
        self.computed += 1
        RESULT_CACHE_MISSES.inc()
        started = time.perf_counter()
        table = self.execute(plan, params)
        took = time.perf_counter() - started
        self.planner.observe(sql, plan, took)
        EXECUTION_SECONDS.observe(took)
        QUERIES.labels(plan="log" if plan.chosen.target == "log" else "view").inc()
        chose(plan.chosen.target, plan.chosen.rule)
        return table

    def execute(self, plan: Plan, params: list[object]) -> pa.Table:
        """Run a plan on a pooled connection, past every cache (not counted)."""
        return self.pool.run(lambda con: self._execute(con, plan, params))

    def _execute(
        self, con: duckdb.DuckDBPyConnection, plan: Plan, params: list[object]
    ) -> pa.Table:
        if plan.reads_log:
            self._register_log(con)
        sql = plan.chosen.sql
        small = plan.chosen.kind == "view lookup" or (
            plan.chosen.kind == "view scan" and plan.chosen.work <= _SMALL
        )
        try:
            schema = self._schemas.get(sql) if small else None
            if schema is not None:
                return _small_result(con.execute(sql, params), schema)
            table = con.sql(sql, params=params or None).to_arrow_table()
            if small:
                self._schemas[sql] = table.schema
            return table
        except duckdb.Error as err:
            if isinstance(err, duckdb.InterruptException):
                raise  # the pool's watchdog: it makes the QueryTimeout
            raise QueryError(f"{type(err).__name__}: {str(err).splitlines()[0]}") from None

    def _register_log(self, con: duckdb.DuckDBPyConnection) -> None:
        """The event tables on this connection, as of the log now (zero-copy)."""
        self.reader.refresh()
        now = tuple(sorted(self.reader.watermarks().items()))
        if self._registered.get(id(con)) != now:
            register_log(con, self.reader)
            self._registered[id(con)] = now

    def close(self) -> None:
        """Close the pool's connections."""
        self.pool.close()
