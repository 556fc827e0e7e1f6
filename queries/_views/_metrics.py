"""The views' Prometheus metrics (names and meanings: docs/metrics.md).

Events applied and maintenance time are counted once per micro-batch; lag and rebuild
progress are computed when scraped (`ViewsCollector`), from whatever the scraping
process can see: its own `Projections`, or the positions the follower of another
process published.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queries._views._lag import view_lags
from store import LogReader

VIEW_EVENTS = Counter("cqrsflow_view_events_applied", "Events applied to the view", ["view"])
MAINTENANCE_SECONDS = Histogram(
    "cqrsflow_view_maintenance_seconds",
    "One micro-batch applied to every view (one transaction)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class ViewsCollector(Collector):
    """Each view's lag behind the log, and rebuild progress, computed when scraped.

    `positions()` gives each live view's next positions; `building()` each version
    being built beside a live one, as (view, its positions).
    """

    def __init__(
        self,
        reader: LogReader,
        positions: Callable[[], Mapping[str, Mapping[int, int]]],
        building: Callable[[], Mapping[str, Mapping[int, int]]] = dict,
    ) -> None:
        self._reader = reader
        self._positions = positions
        self._building = building

    def describe(self) -> list[Metric]:
        return []  # registering must not scrape: the data may not be there yet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        events = GaugeMetricFamily(
            "cqrsflow_view_lag_events", "Log events the view has not applied", labels=["view"]
        )
        seconds = GaugeMetricFamily(
            "cqrsflow_view_lag_seconds", "Age of the oldest of them", labels=["view"]
        )
        progress = GaugeMetricFamily(
            "cqrsflow_view_rebuild_progress_ratio",
            "0 to 1 while a new version is built beside the live one",
            labels=["view"],
        )
        for view, lag in view_lags(self._reader, self._positions()).items():
            events.add_metric([view], lag.events)
            seconds.add_metric([view], lag.seconds)
        end = self._reader.watermarks()  # as `view_lags` refreshed it
        total = sum(end.values())
        for view, applied in self._building().items():
            done = sum(min(applied.get(p, 0), end[p]) for p in end)
            progress.add_metric([view], done / total if total else 1.0)
        yield events
        yield seconds
        yield progress
