"""The query layer's Prometheus metrics (names and meanings: docs/metrics.md).

Counters and histograms are updated where the work happens, once per computed query.
A cached answer costs no metric update at all: the caches count in plain ints, and the
counters of answers served from cache (`cqrsflow_queries_total{plan="cache"}`, the plan-
and result-cache hits) are derived from those counts when scraped (`queries._cache`,
which also exports every cache's own `cqrsflow_cache_*` metrics). The pool's state is
computed when scraped (`PoolCollector`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queries._cache import on_publish
from queries._serving._pool import PoolStats

_LATENCY = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)

# Exported by the cache collector after it derived the cached answers (see above).
QUERIES = Counter(
    "cqrsflow_queries", "Queries answered, by what answered them", ["plan"], registry=None
)
ANSWERED_BY_CACHE = QUERIES.labels(plan="cache")
PLANNING_SECONDS = Histogram(
    "cqrsflow_query_planning_seconds", "Planning a query", buckets=_LATENCY
)
EXECUTION_SECONDS = Histogram(
    "cqrsflow_query_execution_seconds", "Running the chosen plan", buckets=_LATENCY
)
PLAN_CACHE_HITS = Counter(
    "cqrsflow_plan_cache_hits", "Plans found by the query's shape", registry=None
)
PLAN_CACHE_MISSES = Counter("cqrsflow_plan_cache_misses", "Queries planned anew", registry=None)
RESULT_CACHE_HITS = Counter(
    "cqrsflow_result_cache_hits", "Answers served from the cache", registry=None
)
RESULT_CACHE_MISSES = Counter("cqrsflow_result_cache_misses", "Answers computed")

# The query layer's caches whose hits are answers served from cache.
RESULT_CACHES: Final = frozenset({"hot_rows", "results", "shared"})


def _derive(deltas: Mapping[tuple[str, str], tuple[int, int]]) -> None:
    """The plan- and result-cache counters from what the caches counted."""
    for (name, _tier), (hits, misses) in deltas.items():
        if name == "plan":
            PLAN_CACHE_HITS.inc(hits)
            PLAN_CACHE_MISSES.inc(misses)
        elif name in RESULT_CACHES and hits:
            RESULT_CACHE_HITS.inc(hits)
            ANSWERED_BY_CACHE.inc(hits)


on_publish(_derive, QUERIES, PLAN_CACHE_HITS, PLAN_CACHE_MISSES, RESULT_CACHE_HITS)
LAST_PLAN = Gauge("cqrsflow_last_plan_info", "1 for the latest query's plan", ["target", "rule"])


def chose(target: str, rule: str) -> None:
    """Record the planner's latest choice (the dashboard shows recent ones)."""
    LAST_PLAN.clear()
    LAST_PLAN.labels(target=target, rule=rule).set(1)


class PoolCollector(Collector):
    """The query pool's state, read when scraped."""

    def __init__(self, stats: Callable[[], PoolStats]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []  # registering must not scrape: the data may not be there yet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        yield GaugeMetricFamily(
            "cqrsflow_pool_connections_in_use", "DuckDB connections lent out", stats.in_use
        )
        yield GaugeMetricFamily(
            "cqrsflow_pool_waiting", "Callers waiting for a connection", stats.waiting
        )
        yield GaugeMetricFamily(
            "cqrsflow_circuit_breaker_open",
            "1 while the pool's breaker is open or half-open",
            0 if stats.breaker == "closed" else 1,
        )
