"""The query layer: SQL in, the cheapest fresh-enough answer out.

`QueryLayer.run` checks that the statement only reads, plans it (from the plan cache
when its shape was seen), waits for the views it reads to reach the caller's log
positions (read-your-writes), serves the result from the result cache when the views
have not moved since it was stored, and otherwise runs it on a pooled DuckDB connection
and feeds the run time back to the planner.

It runs in the process that maintains the views (DuckDB has one writer per file), on
cursors of the same database: `cqrsflow serve`, `cqrsflow query --data`, a notebook.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from queries._errors import QueryError, QueryTimeout
from queries._guard import harden
from queries._metrics import (
    ANSWERED_BY_CACHE,
    EXECUTION_SECONDS,
    PLANNING_SECONDS,
    QUERIES,
    RESULT_CACHE_HITS,
    RESULT_CACHE_MISSES,
    chose,
)
from queries._planner import Catalog, CatalogView, Plan, Planner
from queries._pool import ConnectionPool
from queries._projections import Projections, View
from queries._tables import register_log
from store import LogReader


@dataclass(frozen=True, slots=True)
class _Cached:
    table: pa.Table
    # What the answer was read from: the views' generation (bumped by `applied`) if it
    # read views, and the log's positions if it read the log.
    read_from: tuple[int | None, object]
    stored: float


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


class QueryLayer:
    """Answers SQL over the event tables and the views of one data directory."""

    def __init__(
        self,
        projections: Projections,
        reader: LogReader,
        *,
        pool_size: int = 4,
        query_timeout: float = 30.0,
        result_ttl: float = 60.0,
        result_cache_size: int = 4096,
        wait_timeout: float = 10.0,
    ) -> None:
        self.projections = projections
        self.reader = reader
        self._db_lock = threading.Lock()
        harden(projections.con)
        self.pool = ConnectionPool(self._connect, size=pool_size, query_timeout=query_timeout)
        self.planner = Planner(self._make_catalog)
        # Results by rewritten statement and parameters; `_by_text` finds them from the
        # query's text without planning, the path that repeated queries take.
        self._results: OrderedDict[tuple[str, tuple[object, ...]], _Cached] = OrderedDict()
        self._by_text: dict[tuple[str, object, object], tuple[str, tuple[object, ...]]] = {}
        self._generation = 0
        self._schemas: dict[str, pa.Schema] = {}
        self._result_cache_size = result_cache_size
        self._result_ttl = result_ttl
        self._wait_timeout = wait_timeout
        self._applied = threading.Condition()
        self._registered: dict[int, tuple[tuple[int, int], ...]] = {}
        self._catalog: Catalog | None = None
        self._tables = tuple(self.projections.table(v.name) for v in self._sql_views())
        self._store_lock = threading.Lock()
        # Hot rows: view -> a looked-up key value -> the cached results that used it.
        self._hot: dict[str, dict[object, set[tuple[str, tuple[object, ...]]]]] = {}
        self._touches = 0
        self._hot_views: set[str] = set()
        projections.listen(self)
        self.result_hits = 0
        self.result_misses = 0

    def _connect(self) -> duckdb.DuckDBPyConnection:
        with self._db_lock:
            return self.projections.con.cursor()

    # -- what the planner knows ----------------------------------------------------

    def _make_catalog(self) -> Catalog:
        catalog = self._catalog
        if catalog is None or catalog.log_positions != self.reader.watermarks():
            catalog = self._catalog = self._build_catalog()
        return catalog

    def _build_catalog(self) -> Catalog:
        views = []
        with self.pool.connection() as con:
            for declared in self._sql_views():
                definition = self.projections.definition(declared.name)
                assert definition is not None
                table = self.projections.table(declared.name)
                (rows,) = con.sql(f"SELECT count(*) FROM {table}").fetchall()[0]
                views.append(
                    CatalogView(
                        declared.name,
                        definition,
                        table,
                        declared.keys,
                        rows,
                        self.projections.positions(declared.name),
                    )
                )
        layout = self.projections.layout
        types = {et.name: {f.name: f.column for f in et.fields} for et in layout.event_types}
        positions = self.reader.watermarks()
        return Catalog(tuple(views), sum(positions.values()), positions, types)

    def applied(self) -> None:
        """Call after the views applied a batch: wakes readers waiting for positions,
        and forgets plans when a rebuilt view was swapped in (its table changed)."""
        tables = tuple(self.projections.table(v.name) for v in self._sql_views())
        with self._applied:
            self._catalog = None
            self._generation += 1
            if tables != self._tables:
                self._tables = tables
                self.planner.forget()
                with self._store_lock:
                    self._results.clear()
                    self._by_text.clear()
                    self._hot.clear()
            self._applied.notify_all()

    def _sql_views(self) -> list[View]:
        return [v for v in self.projections.views if isinstance(v, View)]

    # -- answering -----------------------------------------------------------------

    def run(
        self,
        sql: str,
        *,
        after: Mapping[int, int] | None = None,
        explain: bool = False,
        timeout: float | None = None,
        max_staleness: float | None = None,
    ) -> pa.Table:
        """The answer to `sql` (or its plan, with `explain`).

        `after`: log positions (partition -> position, as in a command's result) the
        views must have applied first, waited for up to `timeout` seconds.
        `max_staleness`: seconds an answer may lag the log: staler views are not used,
        and a cached answer younger than that is served even if the views moved since.
        """
        after_key = tuple(sorted(after.items())) if after else None
        text_key = (sql, after_key, max_staleness)
        if not explain:
            found = self._by_text.get(text_key)
            cached = self._results.get(found) if found is not None else None
            if cached is not None and self._fresh(cached, max_staleness):
                self.result_hits += 1
                RESULT_CACHE_HITS.inc()
                ANSWERED_BY_CACHE.inc()
                return cached.table
        refuse = self._stale_refusal(max_staleness) if max_staleness is not None else None
        started = time.perf_counter()
        plan, params = self.planner.plan(sql, refuse=refuse)
        PLANNING_SECONDS.observe(time.perf_counter() - started)
        if explain:
            return plan.explain()
        if after:
            self._wait_for(plan, after, timeout if timeout is not None else self._wait_timeout)
        key = (plan.chosen.sql, tuple(params))
        cached = self._results.get(key)
        if cached is not None and self._fresh(cached, max_staleness):
            self.result_hits += 1
            RESULT_CACHE_HITS.inc()
            ANSWERED_BY_CACHE.inc()
            self._by_text[text_key] = key
            return cached.table
        self.result_misses += 1
        RESULT_CACHE_MISSES.inc()
        read_from = self._read_from(plan)
        # A key lookup's rows stay cached until a batch changes that key (hot rows); if
        # one did while this ran, the answer may predate it and is cached as any other.
        hot = plan.chosen.kind == "view lookup" and len(plan.views) == 1 and bool(params)
        if hot:
            self._hot_views.add(plan.views[0])  # from now on, batches say which keys
        touches = self._touches
        started = time.perf_counter()
        table = self.execute(plan, params)
        took = time.perf_counter() - started
        self.planner.observe(sql, plan, took)
        EXECUTION_SECONDS.observe(took)
        QUERIES.labels(plan="log" if plan.chosen.target == "log" else "view").inc()
        chose(plan.chosen.target, plan.chosen.rule)
        with self._store_lock:  # Flight calls `run` from several threads
            hot = hot and touches == self._touches
            self._results[key] = _Cached(
                table, (None, None) if hot else read_from, time.monotonic()
            )
            if hot:
                for value in params:
                    self._hot.setdefault(plan.views[0], {}).setdefault(value, set()).add(key)
            self._by_text[text_key] = key
            if len(self._results) > self._result_cache_size:
                self._results.popitem(last=False)
                if len(self._by_text) > 2 * self._result_cache_size:
                    self._by_text.clear()
                    self._prune_hot()
        return table

    def _prune_hot(self) -> None:
        """Forget hot-row links to results the cache has evicted."""
        for view, by_value in self._hot.items():
            self._hot[view] = {
                v: alive for v, keys in by_value.items() if (alive := keys & self._results.keys())
            }

    def wants(self, view: str) -> bool:
        """Whether batches applied to `view` should say which keys they changed."""
        return view in self._hot_views

    def touched(self, touched: dict[str, pa.Array | None]) -> None:
        """The follower committed a batch: drop the hot rows of the keys it changed."""
        with self._store_lock:
            self._touches += 1
            for view, keys in touched.items():
                cached = self._hot.get(view)
                if not cached:
                    continue
                values = list(cached)
                if keys is None:
                    gone = values
                else:
                    try:
                        hit = pc.is_in(pa.array(values), value_set=keys).to_pylist()
                        gone = [v for v, h in zip(values, hit, strict=True) if h]
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                        gone = values  # values of another type: drop them all
                for value in gone:
                    for key in cached.pop(value, ()):
                        self._results.pop(key, None)

    def _fresh(self, cached: _Cached, max_staleness: float | None) -> bool:
        age = time.monotonic() - cached.stored
        if age >= self._result_ttl:
            return False
        if max_staleness is not None and age <= max_staleness:
            return True  # the caller accepts an answer this old, whatever moved since
        generation, log = cached.read_from
        if generation is not None and generation != self._generation:
            return False
        return log is None or log == self._log_positions()

    def execute(self, plan: Plan, params: list[object]) -> pa.Table:
        """Run a plan on a pooled connection, past both caches."""
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
                raise
            raise QueryError(f"{type(err).__name__}: {str(err).splitlines()[0]}") from None

    def _register_log(self, con: duckdb.DuckDBPyConnection) -> None:
        """The event tables on this connection, as of the log now (zero-copy)."""
        self.reader.refresh()
        now = tuple(sorted(self.reader.watermarks().items()))
        if self._registered.get(id(con)) != now:
            register_log(con, self.reader)
            self._registered[id(con)] = now

    def _read_from(self, plan: Plan) -> tuple[int | None, object]:
        """What an answer depends on: the views' generation, the log's positions."""
        return (
            self._generation if plan.views else None,
            self._log_positions() if plan.reads_log else None,
        )

    def _log_positions(self) -> tuple[tuple[int, int], ...]:
        self.reader.refresh()
        return tuple(sorted(self.reader.watermarks().items()))

    def _wait_for(self, plan: Plan, after: Mapping[int, int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for view in plan.views:
            with self._applied:
                while True:
                    have = self.projections.positions(view)
                    behind = {p: pos for p, pos in after.items() if have.get(p, 0) <= pos}
                    if not behind:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise QueryTimeout(
                            f"view {view!r} has not reached log position(s) {dict(after)} "
                            f"within {timeout} s (it is at {have}); is the view follower "
                            "running? raise the timeout, or query without --after"
                        )
                    self._applied.wait(min(left, 0.05))

    def _stale_refusal(self, bound: float) -> Callable[[str], str | None]:
        lags = self.projections.lag(self.reader)

        def refuse(view: str) -> str | None:
            lag = lags.get(view)
            if lag is not None and lag.seconds > bound:
                return f"{lag.seconds:.1f} s behind the log; the query allows {bound} s"
            return None

        return refuse

    def close(self) -> None:
        self.projections.unlisten(self)
        self.pool.close()
