"""The query layer's answer caches: L1 hot rows, L2 results, L3 shared with other processes.

- L1, hot rows: answers of key lookups on one view (`hot_view`), by the query's text,
  kept until a batch changes that key (the projections tell this listener, `touched`,
  which keys each batch changed in the views it `wants`) or the TTL passes.
- L2, results: every other answer, by the rewritten statement and its parameters, and
  found from the query's text too once seen (`by_text`); fresh while what it read
  (`ReadFrom`) has not moved, or while younger than the caller's staleness bound
  (`fresh`).
- L3, shared (optional): answers other processes computed, stamped with what they read.

`QueryLayer.run` reads L1 and L2 by the query's text itself (its hot path: a call less
per query); what is stored, what is fresh and what is dropped is decided here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from queries._cache import ENTRY_OVERHEAD, Cache, make_cache, untrack
from queries._planner import Plan
from queries._serving._config import CacheConfig
from queries._serving._results import CachedResult, ResultStore, pack, unpack
from queries._serving._shared import SharedResultCache, shared_key

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


class ViewState(Protocol):
    """What answers are read from, as the caches check it (the layer's `Planning`)."""

    @property
    def generation(self) -> int:
        """Counts the batches the views applied: unchanged, nothing moved."""
        ...

    def watermark(self, views: tuple[str, ...]) -> Watermark: ...

    def log_positions(self) -> Watermark: ...


def hot_view(plan: Plan, params: list[object]) -> str | None:
    """The view whose key a plan looks up, if its answer is a hot row (L1)."""
    if plan.chosen.kind == "view lookup" and len(plan.views) == 1 and params:
        return plan.views[0]
    return None


def _weigh_hot(row: HotRow) -> int:
    return int(row[0].nbytes) + ENTRY_OVERHEAD


class CacheTiers:
    """L1, L2 and (with `shared`) L3, bounded by `config`, fresh as `state` says; safe
    to use from several threads (Flight calls `run` from several)."""

    def __init__(
        self,
        config: CacheConfig,
        state: ViewState,
        shared: SharedResultCache | None = None,
        *,
        owns_shared: bool = False,
    ) -> None:
        self.config = config
        self._state = state
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
        self.results = ResultStore(
            config.result_policy,
            config.result_entries,
            config.result_bytes,
            compression=config.compression,
            compress_from=config.compress_from,
        )
        # The query texts whose answer is in `results`, to find it without planning.
        self.by_text: dict[TextKey, ResultKey] = {}
        self.shared = shared
        self._owns_shared = owns_shared  # opened from a URL by the layer: closed with it
        self._ttl = config.ttl
        self._store_lock = threading.Lock()
        # Hot rows by key: view -> a looked-up key value -> the query texts that used it,
        # and each cached text's (view, key values), to unlink it when evicted.
        self._hot_index: dict[str, dict[object, set[TextKey]]] = {}
        self._hot_links: dict[TextKey, tuple[str, tuple[object, ...]]] = {}
        self.touches = 0  # batches that said which keys they changed
        self._hot_views: set[str] = set()

    @property
    def hits(self) -> int:
        """Answers served from a cache (any tier)."""
        shared = self.shared.hits if self.shared is not None else 0
        return self.hot_rows.hits + self.results.cache.hits + shared

    # -- L2 ----------------------------------------------------------------------------

    def by_key(
        self, text_key: TextKey, key: ResultKey, max_staleness: float | None
    ) -> pa.Table | None:
        """An L2 answer by its rewritten statement, if fresh enough; found by `text_key`
        from then on."""
        cached = self.results.cache.get(key)
        if cached is None:
            return None
        if not self.fresh(cached, max_staleness):
            self.results.cache.count_stale()
            return None
        self.by_text[text_key] = key
        return cached.answer()

    def fresh(self, cached: CachedResult, max_staleness: float | None) -> bool:
        """Whether an L2 answer satisfies the caller's freshness bound."""
        age = time.monotonic() - cached.stored
        if age >= self._ttl:
            return False
        if max_staleness is not None and age <= max_staleness:
            return True  # the caller accepts an answer this old, whatever moved since
        generation, views, watermark, log = cached.read_from
        state = self._state
        if views and generation != state.generation:
            # The views applied batches since: still fresh if none moved these views'
            # watermark (read the generation first: a batch applied between the two
            # reads then only makes the next check compare again).
            now = state.generation
            if watermark != state.watermark(views):
                return False
            cached.read_from = (now, views, watermark, log)
        return log is None or log == state.log_positions()

    def read_from(self, plan: Plan) -> ReadFrom:
        """What an answer depends on, read before it runs (so that a batch applied
        meanwhile makes it look older, never newer, than it is)."""
        state = self._state
        generation = state.generation
        views = plan.views
        return (
            generation,
            views,
            state.watermark(views) if views else None,
            state.log_positions() if plan.reads_log else None,
        )

    # -- keeping answers -----------------------------------------------------------------

    def store(
        self,
        text_key: TextKey,
        key: ResultKey,
        hot_view: str | None,
        table: pa.Table,
        read_from: ReadFrom,
        touches: int,
    ) -> None:
        """Keep an answer: a hot row in L1 (a lookup on `hot_view`) if no batch touched
        keys since `touches` was read, else in L2."""
        with self._store_lock:
            if hot_view is not None and touches == self.touches:
                if self.hot_rows.put(text_key, (table, _monotonic() + self._ttl)):
                    values = key[1]
                    self._hot_links[text_key] = (hot_view, values)
                    index = self._hot_index.setdefault(hot_view, {})
                    for value in values:
                        index.setdefault(value, set()).add(text_key)
                    if len(self._hot_links) > 2 * self.config.hot_entries:
                        self._prune_hot()
                return
            self.results.put(key, table, read_from, time.monotonic())
            self.by_text[text_key] = key
            if len(self.by_text) > 4 * self.config.result_entries:
                self.by_text.clear()  # texts of answers long evicted; found again by plan

    def clear(self) -> None:
        """Drop every L1 and L2 answer (a rebuilt view was swapped in)."""
        with self._store_lock:
            self.results.clear()
            self.by_text.clear()
            self.hot_rows.clear()
            self._hot_index.clear()
            self._hot_links.clear()

    # -- L1's invalidation by key ------------------------------------------------------

    def watch(self, view: str) -> None:
        """Have batches applied to `view` say which keys they changed, from now on."""
        self._hot_views.add(view)

    def wants(self, view: str) -> bool:
        """Whether batches applied to `view` should say which keys they changed."""
        return view in self._hot_views

    def touched(self, touched: dict[str, pa.Array | None]) -> None:
        """The follower committed a batch: drop the hot rows of the keys it changed."""
        with self._store_lock:
            self.touches += 1
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

    # -- L3 --------------------------------------------------------------------------

    def _shared_mark(self, read_from: ReadFrom) -> Watermark | None:
        """What a shared answer is stamped with: the views' watermark, or the log's
        positions; None for a plan reading both (not shared)."""
        _, views, watermark, log = read_from
        if views and log is not None:
            return None
        return log if log is not None else (watermark or ())

    def from_shared(
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

    def share(self, key: ResultKey, table: pa.Table, read_from: ReadFrom) -> None:
        """Offer an answer this layer computed to the other processes."""
        shared = self.shared
        mark = self._shared_mark(read_from) if shared is not None else None
        if shared is None or mark is None:
            return
        config = self.config
        compression = config.compression if table.nbytes >= config.compress_from else None
        payload = pack(table, compression).to_pybytes()
        shared.put(shared_key(shared.namespace, *key), payload, dict(mark), self._ttl)

    def close(self) -> None:
        """Publish the caches' last counts and stop exporting them; close the shared
        cache if it was opened for this layer."""
        for cache in (self.hot_rows, self.results.cache):
            untrack(cache)
        if self.shared is not None and self._owns_shared:
            self.shared.close()
