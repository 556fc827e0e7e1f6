"""Every tracked cache's counts, as Prometheus metrics labelled by cache name and tier.

A cache counts hits, misses and evictions in plain ints (a `Counter.inc` costs ~0.3 µs,
as much as the lookup it would count). `publish()` turns what changed since its last
call into increments of real prometheus-client metrics, which therefore work in every
mode those do, prometheus' multiprocess mode included:

- in a single process, `CacheCollector` (registered in the default registry) publishes
  at each scrape and then yields the metrics;
- in a process writing to ``PROMETHEUS_MULTIPROC_DIR`` (a child of ``cqrsflow run
  --processes N``), nobody scrapes it: a daemon thread publishes every second, and once
  more at exit, into the directory the parent serves from.

Metrics (labels ``cache``, ``tier``): ``cqrsflow_cache_hits_total``,
``cqrsflow_cache_misses_total``, ``cqrsflow_cache_evictions_total`` (counters),
``cqrsflow_cache_entries``, ``cqrsflow_cache_bytes`` (gauges, summed over the caches of
one name) and ``cqrsflow_cache_hit_ratio`` (hits over lookups since start).
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class Tracked(Protocol):
    """What a tracked cache exposes: a policy `Cache`, or the shared (L3) cache."""

    @property
    def name(self) -> str: ...

    @property
    def tier(self) -> str: ...

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...

    @property
    def evictions(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    def __len__(self) -> int: ...


# Called at each publish with what each cache (name, tier) counted since the last one:
# (hits, misses). The query layer derives its older plan- and result-cache counters so.
Hook = Callable[[Mapping[tuple[str, str], tuple[int, int]]], None]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LABELS = ("cache", "tier")

# Not in any registry by themselves: `CacheCollector` yields them after publishing, and
# in multiprocess mode their values live in the directory's files anyway.
HITS = Counter("cqrsflow_cache_hits", "Lookups answered by the cache", _LABELS, registry=None)
MISSES = Counter(
    "cqrsflow_cache_misses", "Lookups the cache could not answer", _LABELS, registry=None
)
EVICTIONS = Counter(
    "cqrsflow_cache_evictions", "Entries evicted to respect a bound", _LABELS, registry=None
)
ENTRIES = Gauge(
    "cqrsflow_cache_entries", "Entries held", _LABELS, registry=None, multiprocess_mode="livesum"
)
BYTES = Gauge(
    "cqrsflow_cache_bytes",
    "Bytes held, as weighed when put",
    _LABELS,
    registry=None,
    multiprocess_mode="livesum",
)
HIT_RATIO = Gauge(
    "cqrsflow_cache_hit_ratio",
    "Hits over lookups since the process started",
    _LABELS,
    registry=None,
    multiprocess_mode="liveall",
)
FAMILIES: tuple[Counter | Gauge, ...] = (HITS, MISSES, EVICTIONS, ENTRIES, BYTES, HIT_RATIO)

_lock = threading.Lock()
# cache -> its hits, misses, evictions at the last publish
_published: weakref.WeakKeyDictionary[Tracked, tuple[int, int, int]] = weakref.WeakKeyDictionary()
_hooks: list[Hook] = []
_exported: list[Counter | Gauge] = list(FAMILIES)
_totals: dict[tuple[str, str], list[int]] = {}  # labels -> hits, misses since start
_shown: set[tuple[str, str]] = set()  # labels whose gauges were set
_thread: threading.Thread | None = None


def track(cache: Tracked) -> None:
    """Export `cache`'s counts from now on (until it is garbage collected)."""
    with _lock:
        _published[cache] = (cache.hits, cache.misses, cache.evictions)
    if os.environ.get(MULTIPROCESS_ENV):
        _start_publishing()


def untrack(cache: Tracked) -> None:
    """Publish `cache`'s last counts and stop exporting it (its gauges drop to zero)."""
    publish()
    with _lock:
        _published.pop(cache, None)
    publish()


def on_publish(hook: Hook, *families: Counter | Gauge) -> None:
    """Call `hook` at each publish, and export `families` (kept out of any registry)
    after it, so that what it derives is in the same scrape."""
    with _lock:
        _hooks.append(hook)
        _exported.extend(families)


def publish() -> None:
    """Bring the metrics up to the caches' counts."""
    with _lock:
        entries: dict[tuple[str, str], int] = {}
        held: dict[tuple[str, str], int] = {}
        deltas: dict[tuple[str, str], tuple[int, int]] = {}
        for cache, (hits, misses, evictions) in list(_published.items()):
            labels: tuple[str, str] = (cache.name, cache.tier)
            now = (cache.hits, cache.misses, cache.evictions)
            _published[cache] = now
            for family, before, after in zip(
                (HITS, MISSES, EVICTIONS), (hits, misses, evictions), now, strict=True
            ):
                if after > before:
                    family.labels(*labels).inc(after - before)
            new_hits, new_misses = max(now[0] - hits, 0), max(now[1] - misses, 0)
            total = _totals.setdefault(labels, [0, 0])
            total[0] += new_hits
            total[1] += new_misses
            counted = deltas.get(labels, (0, 0))
            deltas[labels] = (counted[0] + new_hits, counted[1] + new_misses)
            entries[labels] = entries.get(labels, 0) + len(cache)
            held[labels] = held.get(labels, 0) + cache.bytes
        for labels in _shown | entries.keys():
            ENTRIES.labels(*labels).set(entries.get(labels, 0))
            BYTES.labels(*labels).set(held.get(labels, 0))
            hits, misses = _totals.get(labels, (0, 0))
            if hits + misses:
                HIT_RATIO.labels(*labels).set(hits / (hits + misses))
            # counters exist (at 0) from the first publish on, so a dashboard sees the cache
            for family in (HITS, MISSES, EVICTIONS):
                family.labels(*labels)
        _shown.update(entries.keys())
        for hook in _hooks:
            hook(deltas)


class CacheCollector(Collector):
    """Publishes the tracked caches' counts when scraped, then yields the metrics."""

    def describe(self) -> list[Metric]:
        return []  # registering must not scrape

    def collect(self) -> Iterator[Metric]:
        publish()
        for family in list(_exported):
            yield from family.collect()


COLLECTOR = CacheCollector()
if not os.environ.get(MULTIPROCESS_ENV):
    # In multiprocess mode the parent serves the directory: registering here would
    # show this process's values twice.
    REGISTRY.register(COLLECTOR)


def _start_publishing() -> None:
    global _thread
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(
            target=_publish_every_second, name="cqrsflow-cache-metrics", daemon=True
        )
        _thread.start()
    atexit.register(publish)


def _publish_every_second() -> None:
    stop = threading.Event()
    while not stop.wait(1.0):
        publish()
