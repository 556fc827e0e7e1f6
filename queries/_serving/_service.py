"""The query layer: SQL in, the cheapest fresh-enough answer out.

`QueryLayer.run` checks that the statement only reads, plans it (from the plan cache
when its shape was seen), waits for the views it reads to reach the caller's log
positions (read-your-writes), serves the answer from a cache when one is fresh enough,
and otherwise runs it on a pooled DuckDB connection and feeds the run time back to the
planner.

Caches, in the order a query meets them (policies and bounds: `CacheConfig`):

- L1, hot rows: answers of key lookups on one view (``WHERE account = 'x'``), found by
  the query's text with no planning, kept until a batch changes that key (the
  projections tell their listeners which keys each batch touched) or the TTL passes.
- L2, results: every other answer, by the rewritten statement and its parameters
  (found from the query's text without planning once seen), served while what it read
  satisfies the caller's freshness bound: the views' watermark (their applied log
  positions) unchanged since, or the log's positions for an answer read from the log,
  or, with `max_staleness`, an answer at most that old. Large answers are compressed,
  equal ones shared (`ResultStore`).
- L3, shared (optional): answers other processes computed, with the watermark they
  were read at, served if at least as fresh as this layer's own views
  (`SharedResultCache`, on Redis).
- the plan cache (L1) in the planner.

It runs in the process that maintains the views (DuckDB has one writer per file), on
cursors of the same database: `cqrsflow serve`, `cqrsflow query --data`, a notebook.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from queries._cache import ENTRY_OVERHEAD, Cache, make_cache, untrack
from queries._errors import QueryError, QueryTimeout
from queries._guard import harden
from queries._planner import Catalog, CatalogView, Plan, Planner
from queries._serving._config import CacheConfig
from queries._serving._metrics import (
    EXECUTION_SECONDS,
    PLANNING_SECONDS,
    QUERIES,
    RESULT_CACHE_MISSES,
    chose,
)
from queries._serving._pool import ConnectionPool
from queries._serving._results import CachedResult, ResultStore, pack, unpack
from queries._serving._shared import RedisResultCache, SharedResultCache, shared_key
from queries._serving._warm import ShapeCounts
from queries._tables import register_log
from queries._views import Projections, View
from store import LogReader

# A query as asked: its text alone (the common case, hashed once per string), or with
# the positions it must read after and its staleness bound.
TextKey = str | tuple[str, tuple[tuple[int, int], ...] | None, float | None]
# An answer as computed: the rewritten statement and its parameter values.
ResultKey = tuple[str, tuple[object, ...]]
Watermark = tuple[tuple[int, int], ...]  # (partition, next position), sorted
# What an answer was read from: the views' generation when it ran, the views, their
# watermark then, and the log's positions if it read the log.
ReadFrom = tuple[int, tuple[str, ...], Watermark | None, Watermark | None]
HotRow = tuple[pa.Table, float]  # an answer and when it expires (time.monotonic)

_monotonic = time.monotonic  # a global, not an attribute lookup, on the hot path

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


def _weigh_hot(row: HotRow) -> int:
    return int(row[0].nbytes) + ENTRY_OVERHEAD


class QueryLayer:
    """Answers SQL over the event tables and the views of one data directory.

    `caches`: the policies and bounds of its caches. `shared`: an L3 cache shared with
    other processes (a `SharedResultCache`, or a Redis URL, ``redis://HOST:PORT/DB``:
    one database per log). `shapes`: a JSON file where the most frequent query shapes
    are kept across restarts (saved on `close`); `warm`: on start, re-run the examples
    of that many of them, for at most `warm_seconds`.
    """

    def __init__(
        self,
        projections: Projections,
        reader: LogReader,
        *,
        pool_size: int = 4,
        query_timeout: float = 30.0,
        wait_timeout: float = 10.0,
        caches: CacheConfig | None = None,
        shared: SharedResultCache | str | None = None,
        shapes: Path | None = None,
        warm: int = 0,
        warm_seconds: float = 2.0,
    ) -> None:
        self.projections = projections
        self.reader = reader
        self.caches = config = caches or CacheConfig()
        self._db_lock = threading.Lock()
        harden(projections.con)
        self.pool = ConnectionPool(self._connect, size=pool_size, query_timeout=query_timeout)
        self.planner = Planner(
            self._make_catalog, cache_size=config.plan_entries, policy=config.plan_policy
        )
        self.hot_rows: Cache[TextKey, HotRow] = make_cache(
            config.hot_policy,
            config.hot_entries,
            config.hot_bytes,
            weigh=_weigh_hot,
            name="hot_rows",
            tier="L1",
            on_evict=self._unlink_hot,
            threadsafe=True,
        )
        self._hot_get = self.hot_rows.get  # bound once: one attribute load less per query
        self.results = ResultStore(
            config.result_policy,
            config.result_entries,
            config.result_bytes,
            compression=config.compression,
            compress_from=config.compress_from,
        )
        self._results_get = self.results.cache.get
        # The query texts whose answer is in `results`, to find it without planning.
        self._by_text: dict[TextKey, ResultKey] = {}
        self._owns_shared = isinstance(shared, str)
        self.shared = RedisResultCache(shared) if isinstance(shared, str) else shared
        if self._owns_shared:
            assert isinstance(self.shared, RedisResultCache)
            try:
                self.shared.ping()
            except QueryError:
                self.shared.close()
                raise
        self._ttl = config.ttl
        self._generation = 0
        self._schemas: dict[str, pa.Schema] = {}
        self._wait_timeout = wait_timeout
        self._applied = threading.Condition()
        self._registered: dict[int, tuple[tuple[int, int], ...]] = {}
        self._catalog: Catalog | None = None
        self._tables = tuple(self.projections.table(v.name) for v in self._sql_views())
        self._store_lock = threading.Lock()
        # Hot rows by key: view -> a looked-up key value -> the query texts that used it,
        # and each cached text's (view, key values), to unlink it when evicted.
        self._hot_index: dict[str, dict[object, set[TextKey]]] = {}
        self._hot_links: dict[TextKey, tuple[str, tuple[object, ...]]] = {}
        self._touches = 0
        self._hot_views: set[str] = set()
        self.computed = 0  # answers computed (cache misses of every tier)
        self.shapes = ShapeCounts()
        self._shapes_file = shapes
        if shapes is not None:
            self.shapes.load(shapes)
        projections.listen(self)
        self.warmed = self.warm(warm, warm_seconds) if warm > 0 else 0

    @property
    def result_hits(self) -> int:
        """Answers served from a cache (any tier)."""
        shared = self.shared.hits if self.shared is not None else 0
        return self.hot_rows.hits + self.results.cache.hits + shared

    @property
    def result_misses(self) -> int:
        """Answers computed."""
        return self.computed

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
        and forgets plans and answers when a rebuilt view was swapped in (its table
        changed)."""
        tables = tuple(self.projections.table(v.name) for v in self._sql_views())
        with self._applied:
            self._catalog = None
            self._generation += 1
            if tables != self._tables:
                self._tables = tables
                self.planner.forget()
                with self._store_lock:
                    self.results.clear()
                    self._by_text.clear()
                    self.hot_rows.clear()
                    self._hot_index.clear()
                    self._hot_links.clear()
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
        text_key: TextKey = (
            sql
            if not after and max_staleness is None
            else (sql, tuple(sorted(after.items())) if after else None, max_staleness)
        )
        found: ResultKey | None = None
        if not explain:
            texts = self.shapes.texts  # what warming will re-run: counted here, cheaply
            texts[sql] += 1
            # L1: a key lookup's answer, by the text alone
            hot = self._hot_get(text_key)
            if hot is not None:
                if _monotonic() < hot[1]:
                    return hot[0]
                self.hot_rows.count_stale()
                self.hot_rows.pop(text_key)
            # L2: an answer seen for this text before, if still fresh enough
            found = self._by_text.get(text_key)
            if found is not None:
                cached = self._results_get(found)
                if cached is not None:
                    if self._fresh(cached, max_staleness):
                        table = cached.table  # None when stored compressed
                        return table if table is not None else cached.blob.unpack()
                    self.results.cache.count_stale()
        return self._plan_and_answer(sql, text_key, found, after, explain, timeout, max_staleness)

    def _plan_and_answer(
        self,
        sql: str,
        text_key: TextKey,
        found: ResultKey | None,
        after: Mapping[int, int] | None,
        explain: bool,
        timeout: float | None,
        max_staleness: float | None,
    ) -> pa.Table:
        """`run` past the text-keyed caches: plan, then the caches by rewritten
        statement, then compute."""
        refuse = self._stale_refusal(max_staleness) if max_staleness is not None else None
        started = time.perf_counter()
        plan, params = self.planner.plan(sql, refuse=refuse)
        PLANNING_SECONDS.observe(time.perf_counter() - started)
        if explain:
            return plan.explain()
        if after:
            self._wait_for(plan, after, timeout if timeout is not None else self._wait_timeout)
        key: ResultKey = (plan.chosen.sql, tuple(params))
        # A key lookup's rows stay cached until a batch changes that key (hot rows); if
        # one did while this ran, the answer may predate it and is cached as any other.
        hot = plan.chosen.kind == "view lookup" and len(plan.views) == 1 and bool(params)
        if not hot and key != found:
            cached = self._results_get(key)
            if cached is not None:
                if self._fresh(cached, max_staleness):
                    self._by_text[text_key] = key
                    return cached.answer()
                self.results.cache.count_stale()
        if hot:
            self._hot_views.add(plan.views[0])  # from now on, batches say which keys
        touches = self._touches
        read_from = self._read_from(plan)
        shared = self._from_shared(key, read_from, after, max_staleness)
        if shared is None:
            table = self._compute(sql, plan, params)
            self._share(key, table, read_from)
        else:
            table, as_fresh = shared
            if not as_fresh:
                return table  # older than our views (the caller allowed it): not kept
        self._store(text_key, key, plan.views[0] if hot else None, table, read_from, touches)
        self.shapes.fold_if_full()
        return table

    def _compute(self, sql: str, plan: Plan, params: list[object]) -> pa.Table:
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

    def _store(
        self,
        text_key: TextKey,
        key: ResultKey,
        hot_view: str | None,
        table: pa.Table,
        read_from: ReadFrom,
        touches: int,
    ) -> None:
        """Keep an answer: a hot row in L1 if no batch touched keys meanwhile, else in
        L2 (Flight calls `run` from several threads)."""
        with self._store_lock:
            if hot_view is not None and touches == self._touches:
                if self.hot_rows.put(text_key, (table, _monotonic() + self._ttl)):
                    values = key[1]
                    self._hot_links[text_key] = (hot_view, values)
                    index = self._hot_index.setdefault(hot_view, {})
                    for value in values:
                        index.setdefault(value, set()).add(text_key)
                    if len(self._hot_links) > 2 * self.caches.hot_entries:
                        self._prune_hot()
                return
            self.results.put(key, table, read_from, time.monotonic())
            self._by_text[text_key] = key
            if len(self._by_text) > 4 * self.caches.result_entries:
                self._by_text.clear()  # texts of answers long evicted; found again by plan

    def _unlink_hot(self, text_key: TextKey, row: HotRow | None = None) -> None:
        """An evicted hot row: forget which key values pointed at it (called by the
        cache from `put`, under the store lock)."""
        link = self._hot_links.pop(text_key, None)
        if link is None:
            return
        view, values = link
        index = self._hot_index.get(view, {})
        for value in values:
            texts = index.get(value)
            if texts is not None:
                texts.discard(text_key)
                if not texts:
                    del index[value]

    def _prune_hot(self) -> None:
        """Forget the links of hot rows that left the cache without an eviction (the
        TTL); under the store lock."""
        for text_key in [k for k in self._hot_links if k not in self.hot_rows]:
            self._unlink_hot(text_key)

    def wants(self, view: str) -> bool:
        """Whether batches applied to `view` should say which keys they changed."""
        return view in self._hot_views

    def touched(self, touched: dict[str, pa.Array | None]) -> None:
        """The follower committed a batch: drop the hot rows of the keys it changed."""
        with self._store_lock:
            self._touches += 1
            for view, keys in touched.items():
                cached = self._hot_index.get(view)
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
                    for text_key in cached.pop(value, ()):
                        self.hot_rows.pop(text_key)
                        self._unlink_hot(text_key)

    def _fresh(self, cached: CachedResult, max_staleness: float | None) -> bool:
        """Whether an L2 answer satisfies the caller's freshness bound."""
        age = time.monotonic() - cached.stored
        if age >= self._ttl:
            return False
        if max_staleness is not None and age <= max_staleness:
            return True  # the caller accepts an answer this old, whatever moved since
        generation, views, watermark, log = cached.read_from
        if views and generation != self._generation:
            # The views applied batches since: still fresh if none moved these views'
            # watermark (read the generation first: a batch applied between the two
            # reads then only makes the next check compare again).
            now = self._generation
            if watermark != self._watermark(views):
                return False
            cached.read_from = (now, views, watermark, log)
        return log is None or log == self._log_positions()

    # -- L3 --------------------------------------------------------------------------

    def _shared_mark(self, read_from: ReadFrom) -> Watermark | None:
        """What a shared answer is stamped with: the views' watermark, or the log's
        positions; None for a plan reading both (not shared)."""
        _, views, watermark, log = read_from
        if views and log is not None:
            return None
        return log if log is not None else (watermark or ())

    def _from_shared(
        self,
        key: ResultKey,
        read_from: ReadFrom,
        after: Mapping[int, int] | None,
        max_staleness: float | None,
    ) -> tuple[pa.Table, bool] | None:
        """An answer another process shared, fresh enough for this caller, and whether
        it is at least as fresh as this layer's own views (then it is kept locally)."""
        shared = self.shared
        mark = self._shared_mark(read_from) if shared is not None else None
        if shared is None or mark is None:
            return None
        bound = dict(mark)
        entry = shared.get(
            shared_key(shared.namespace, *key), bound, max_age=max_staleness, after=after
        )
        if entry is None:
            return None
        try:
            table = unpack(entry.payload)
        except (pa.ArrowInvalid, OSError):
            return None
        return table, entry.covers(bound)

    def _share(self, key: ResultKey, table: pa.Table, read_from: ReadFrom) -> None:
        shared = self.shared
        mark = self._shared_mark(read_from) if shared is not None else None
        if shared is None or mark is None:
            return
        compression = self.caches.compression if table.nbytes >= self.caches.compress_from else None
        payload = pack(table, compression).to_pybytes()
        shared.put(shared_key(shared.namespace, *key), payload, dict(mark), self._ttl)

    # -- warming -----------------------------------------------------------------------

    def warm(self, n: int, seconds: float) -> int:
        """Re-run the examples of the `n` most frequent query shapes (counted by this
        layer and loaded from `shapes`), starting none after `seconds`; how many ran.
        A query that fails is skipped: warming never fails the start."""
        deadline = time.monotonic() + seconds
        warmed = 0
        for shape in self.shapes.top(n):
            if time.monotonic() >= deadline:
                break
            try:
                self.run(shape.example)
            except QueryError:
                continue
            finally:  # a warming run is not a client's query
                self.shapes.texts[shape.example] -= 1
            warmed += 1
        return warmed

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

    def _read_from(self, plan: Plan) -> ReadFrom:
        """What an answer depends on, read before it runs (so that a batch applied
        meanwhile makes it look older, never newer, than it is)."""
        generation = self._generation
        views = plan.views
        return (
            generation,
            views,
            self._watermark(views) if views else None,
            self._log_positions() if plan.reads_log else None,
        )

    def _watermark(self, views: tuple[str, ...]) -> Watermark:
        """The log positions every one of `views` has applied (the least, per partition)."""
        marks = [self.projections.positions(v) for v in views]
        partitions = sorted(set().union(*marks))
        return tuple((p, min(m.get(p, 0) for m in marks)) for p in partitions)

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
        """Stop listening to the views, save the query shapes, release the caches'
        metrics and the pool."""
        self.projections.unlisten(self)
        if self._shapes_file is not None:
            # warming is an optimisation: a read-only directory is no failure
            with contextlib.suppress(OSError):
                self.shapes.save(self._shapes_file)
        for cache in (self.hot_rows, self.results.cache):
            untrack(cache)
        self.planner.close()
        if self.shared is not None and self._owns_shared:
            self.shared.close()
        self.pool.close()
