"""The query layer's planning: the catalog the planner reads, plans, read-your-writes.

`Planning` builds the planner's catalog from the live views (rows per view, the
positions each applied) and the log, rebuilt when the log moved; plans a query, past any
view staler than the caller allows; and waits for the views a plan reads to reach the
caller's log positions. It is also where the layer hears that the views applied a batch
(`applied`): that wakes the waiting readers, and is what the caches' freshness checks
compare against (`generation`, `watermark`, `log_positions`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import duckdb

from queries._cache import Policy
from queries._errors import QueryTimeout
from queries._planner import Catalog, CatalogView, Plan, Planner
from queries._serving._metrics import PLANNING_SECONDS
from queries._views import Projections, View
from store import LogReader

Watermark = tuple[tuple[int, int], ...]  # (partition, next position), sorted


class Planning:
    """Plans queries over `projections`' SQL views and `reader`'s log, on connections lent
    by `connection` (to count the views' rows); thread-safe."""

    def __init__(
        self,
        projections: Projections,
        reader: LogReader,
        connection: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
        *,
        plan_entries: int = 1024,
        plan_policy: Policy = "lru",
        wait_timeout: float = 10.0,
    ) -> None:
        self.projections = projections
        self.reader = reader
        self._connection = connection
        self.planner = Planner(self._make_catalog, cache_size=plan_entries, policy=plan_policy)
        self._wait_timeout = wait_timeout
        # Notified when the views applied a batch; also guards the swap of `_tables`.
        self._applied = threading.Condition()
        self._generation = 0
        self._catalog: Catalog | None = None
        self._tables = self._view_tables()

    @property
    def generation(self) -> int:
        """How many times the views applied a batch (`applied`) since the layer opened."""
        return self._generation

    # -- what the planner knows ----------------------------------------------------

    def _sql_views(self) -> list[View]:
        return [v for v in self.projections.views if isinstance(v, View)]

    def _view_tables(self) -> tuple[str, ...]:
        return tuple(self.projections.table(v.name) for v in self._sql_views())

    def _make_catalog(self) -> Catalog:
        catalog = self._catalog
        if catalog is None or catalog.log_positions != self.reader.watermarks():
            catalog = self._catalog = self._build_catalog()
        return catalog

    def _build_catalog(self) -> Catalog:
        views = []
        with self._connection() as con:
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

    def applied(self, swapped: Callable[[], None]) -> None:
        """The views applied a batch: forget the catalog, wake readers waiting for
        positions, and when a rebuilt view was swapped in (its table changed) forget
        the plans and call `swapped` (to drop the answers read from the old table)
        before any waiting reader goes on."""
        tables = self._view_tables()
        with self._applied:
            self._catalog = None
            self._generation += 1
            if tables != self._tables:
                self._tables = tables
                self.planner.forget()
                swapped()
            self._applied.notify_all()

    # -- what the views and the log are at ------------------------------------------

    def watermark(self, views: tuple[str, ...]) -> Watermark:
        """The log positions every one of `views` has applied (the least, per partition)."""
        marks = [self.projections.positions(v) for v in views]
        partitions = sorted(set().union(*marks))
        return tuple((p, min(m.get(p, 0) for m in marks)) for p in partitions)

    def log_positions(self) -> Watermark:
        """The log's positions now (re-read from disk)."""
        self.reader.refresh()
        return tuple(sorted(self.reader.watermarks().items()))

    # -- planning --------------------------------------------------------------------

    def plan(self, sql: str, max_staleness: float | None = None) -> tuple[Plan, list[object]]:
        """The plan for `sql` and its parameter values; with `max_staleness`, no view
        lagging the log by more than that many seconds is used."""
        refuse = self._stale_refusal(max_staleness) if max_staleness is not None else None
        started = time.perf_counter()
        found = self.planner.plan(sql, refuse=refuse)
        PLANNING_SECONDS.observe(time.perf_counter() - started)
        return found

    def _stale_refusal(self, bound: float) -> Callable[[str], str | None]:
        lags = self.projections.lag(self.reader)

        def refuse(view: str) -> str | None:
            lag = lags.get(view)
            if lag is not None and lag.seconds > bound:
                return f"{lag.seconds:.1f} s behind the log; the query allows {bound} s"
            return None

        return refuse

    def wait_for(self, plan: Plan, after: Mapping[int, int], timeout: float | None) -> None:
        """Wait until every view `plan` reads has applied the log positions `after`
        (partition -> position), for up to `timeout` seconds (None: the layer's own
        wait timeout); `QueryTimeout` past that."""
        timeout = timeout if timeout is not None else self._wait_timeout
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
                    # Polled as well as notified: a follower that does not call
                    # `applied` still lets the wait end.
                    self._applied.wait(min(left, 0.05))

    def close(self) -> None:
        """Publish the plan cache's last counts and stop exporting them."""
        self.planner.close()
