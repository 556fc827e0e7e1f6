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

`QueryLayer` is the path through three parts: `Planning` (the planner, its catalog,
read-your-writes waits: `_planning`), `CacheTiers` (L1, L2, L3: `_tiers`) and
`Execution` (the pool, the run, the cost feedback: `_execution`). `QueryLayer.open`
builds them from a `ServingConfig`, which is where the I/O is: Redis pinged, the
shapes file read, the caches warmed.

It runs in the process that maintains the views (DuckDB has one writer per file), on
cursors of the same database: `cqrsflow serve`, `cqrsflow query --data`, a notebook.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping

import duckdb
import pyarrow as pa

from queries._cache import Cache
from queries._errors import QueryError
from queries._guard import harden
from queries._planner import Plan, Planner
from queries._serving._config import CacheConfig, ServingConfig
from queries._serving._execution import Execution
from queries._serving._planning import Planning
from queries._serving._pool import ConnectionPool
from queries._serving._results import ResultStore
from queries._serving._shared import RedisResultCache, SharedResultCache
from queries._serving._tiers import CacheTiers, HotRow, ResultKey, TextKey, hot_view
from queries._serving._warm import ShapeCounts
from queries._views import Projections
from store import LogReader

_monotonic = time.monotonic  # a global, not an attribute lookup, on the hot path


class QueryLayer:
    """Answers SQL over the event tables and the views of one data directory.

    Open one with `QueryLayer.open`; the constructor only puts the parts together.
    """

    def __init__(
        self,
        config: ServingConfig,
        planning: Planning,
        tiers: CacheTiers,
        execution: Execution,
        shapes: ShapeCounts,
    ) -> None:
        self.config = config
        self.planning = planning
        self.tiers = tiers
        self.execution = execution
        self.shapes = shapes  # query texts counted, for warming: see `_warm`
        self.warmed = 0  # query shapes warming re-ran (`open`)
        # Bound once: `run`'s text-keyed lookups are its hot path, one load less each.
        self._texts = shapes.texts
        self._hot_get = tiers.hot_rows.get
        self._by_text_get = tiers.by_text.get
        self._results_get = tiers.results.cache.get

    @classmethod
    def open(
        cls,
        projections: Projections,
        reader: LogReader,
        *,
        config: ServingConfig | None = None,
        shared: SharedResultCache | str | None = None,
    ) -> QueryLayer:
        """A query layer over `projections` (the views, kept by this process) and
        `reader` (their log), serving as `config` says.

        `shared`: an L3 cache shared with other processes (a `SharedResultCache`, or a
        Redis URL, ``redis://HOST:PORT/DB``: one database per log, opened and pinged
        here, closed with the layer). Loads the query shapes from `config.shapes` and
        warms the caches with the `config.warm` most frequent of them.
        """
        config = config or ServingConfig()
        caches = config.caches
        owns_shared = isinstance(shared, str)
        if isinstance(shared, str):
            shared = RedisResultCache(shared)
            try:
                # A URL nobody answers is refused now, with the reason; once running,
                # an unreachable Redis only costs misses.
                shared.ping()
            except QueryError:
                shared.close()
                raise
        harden(projections.con)
        db_lock = threading.Lock()

        def connect() -> duckdb.DuckDBPyConnection:
            with db_lock:  # cursors of one connection are made one at a time
                return projections.con.cursor()

        pool = ConnectionPool(connect, size=config.pool_size, query_timeout=config.query_timeout)
        planning = Planning(
            projections,
            reader,
            pool.connection,
            plan_entries=caches.plan_entries,
            plan_policy=caches.plan_policy,
            wait_timeout=config.wait_timeout,
        )
        tiers = CacheTiers(caches, planning, shared, owns_shared=owns_shared)
        execution = Execution(pool, reader, planning.planner)
        shapes = ShapeCounts()
        if config.shapes is not None:
            shapes.load(config.shapes)
        layer = cls(config, planning, tiers, execution, shapes)
        projections.listen(tiers)
        if config.warm > 0:
            layer.warmed = layer.warm(config.warm, config.warm_seconds)
        return layer

    # -- the parts, as callers and tests know them -------------------------------------

    @property
    def projections(self) -> Projections:
        return self.planning.projections

    @property
    def reader(self) -> LogReader:
        return self.planning.reader

    @property
    def planner(self) -> Planner:
        return self.planning.planner

    @property
    def pool(self) -> ConnectionPool:
        return self.execution.pool

    @property
    def caches(self) -> CacheConfig:
        """The policies and bounds of its caches."""
        return self.config.caches

    @property
    def hot_rows(self) -> Cache[TextKey, HotRow]:
        """L1: answers of key lookups, by query text."""
        return self.tiers.hot_rows

    @property
    def results(self) -> ResultStore:
        """L2: every other answer."""
        return self.tiers.results

    @property
    def shared(self) -> SharedResultCache | None:
        """L3, if any."""
        return self.tiers.shared

    @property
    def computed(self) -> int:
        """Answers computed (cache misses of every tier)."""
        return self.execution.computed

    @property
    def result_hits(self) -> int:
        """Answers served from a cache (any tier)."""
        return self.tiers.hits

    @property
    def result_misses(self) -> int:
        """Answers computed."""
        return self.execution.computed

    def applied(self) -> None:
        """Call after the views applied a batch: wakes readers waiting for positions,
        and forgets plans and answers when a rebuilt view was swapped in (its table
        changed)."""
        self.planning.applied(self.tiers.clear)

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
            self._texts[sql] += 1  # what warming will re-run: counted here, cheaply
            # L1: a key lookup's answer, by the text alone
            hot = self._hot_get(text_key)
            if hot is not None:
                if _monotonic() < hot[1]:
                    return hot[0]
                self.tiers.hot_rows.count_stale()
                self.tiers.hot_rows.pop(text_key)
            # L2: an answer seen for this text before, if still fresh enough
            found = self._by_text_get(text_key)
            if found is not None:
                cached = self._results_get(found)
                if cached is not None:
                    if self.tiers.fresh(cached, max_staleness):
                        table = cached.table  # None when stored compressed
                        return table if table is not None else cached.blob.unpack()
                    self.tiers.results.cache.count_stale()
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
        tiers = self.tiers
        plan, params = self.planning.plan(sql, max_staleness)
        if explain:
            return plan.explain()
        if after:
            self.planning.wait_for(plan, after, timeout)
        key: ResultKey = (plan.chosen.sql, tuple(params))
        # A key lookup's rows stay cached until a batch changes that key (hot rows); if
        # one did while this ran, the answer may predate it and is cached as any other.
        hot = hot_view(plan, params)
        if hot is None and key != found:  # (`found` was just looked up, by text)
            cached = tiers.by_key(text_key, key, max_staleness)
            if cached is not None:
                return cached
        if hot is not None:
            tiers.watch(hot)  # from now on, batches say which keys
        touches = tiers.touches
        read_from = tiers.read_from(plan)
        shared = tiers.from_shared(key, read_from, after, max_staleness)
        if shared is None:
            table = self.execution.compute(sql, plan, params)
            tiers.share(key, table, read_from)
        else:
            table, as_fresh = shared
            if not as_fresh:
                return table  # older than our views (the caller allowed it): not kept
        tiers.store(text_key, key, hot, table, read_from, touches)
        self.shapes.fold_if_full()
        return table

    def execute(self, plan: Plan, params: list[object]) -> pa.Table:
        """Run a plan on a pooled connection, past every cache."""
        return self.execution.execute(plan, params)

    # -- warming -----------------------------------------------------------------------

    def warm(self, n: int, seconds: float) -> int:
        """Re-run the examples of the `n` most frequent query shapes (counted by this
        layer and loaded from `config.shapes`), starting none after `seconds`; how many
        ran. A query that fails is skipped: warming never fails the start."""
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

    def close(self) -> None:
        """Stop listening to the views, save the query shapes, release the caches'
        metrics and the pool."""
        self.projections.unlisten(self.tiers)
        if self.config.shapes is not None:
            # warming is an optimisation: a read-only directory is no failure
            with contextlib.suppress(OSError):
                self.shapes.save(self.config.shapes)
        self.tiers.close()
        self.planning.close()
        self.execution.close()
