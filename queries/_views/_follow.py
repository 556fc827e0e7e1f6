"""Following the log: keep the views current while a flow appends, in one process.

DuckDB allows one writer per database file, so exactly one follower maintains a data
directory's views however many bytewax workers or processes write the log. After each
round it publishes the positions every view has applied to DIR/projections.watermark
(a small JSON file, replaced atomically), which other processes read without opening
the database: the flow, to slow its intake when the views fall behind. Other processes ask it for a
rebuild through a file in DIR/projections.requests/ (`request_rebuild`); it builds the
new version beside the live one and swaps it in when caught up.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from queries._errors import QueryError
from queries._views._metrics import MAINTENANCE_SECONDS, VIEW_EVENTS, ViewsCollector
from queries._views._projections import Projections
from store import DataDir, LogReader


def request_rebuild(data_dir: Path, name: str) -> Path:
    """Ask the process that follows the log to rebuild view `name` beside the live one
    (the projections database has one writer, so another process cannot)."""
    requests = DataDir(data_dir).rebuild_requests
    requests.mkdir(exist_ok=True)
    path = requests / f"rebuild.{name}"
    path.write_text(name)
    return path


def _take_requests(projections: Projections, data_dir: Path) -> None:
    for path in sorted(DataDir(data_dir).rebuild_requests.glob("rebuild.*")):
        name = path.read_text()
        try:
            projections.rebuild(name)
        except QueryError as err:  # an unknown view: nothing to build
            path.with_suffix(".refused").write_text(str(err))
        path.unlink()


def publish_watermark(data_dir: Path, projections: Projections) -> None:
    """What the views have applied (all of them, each, and versions being built), and
    this process's view metrics, for the processes that cannot open the database."""
    samples = [
        [s.name, s.labels, s.value]
        for metric in (VIEW_EVENTS, MAINTENANCE_SECONDS)
        for family in metric.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]
    published = {
        "positions": projections.watermark(),
        "views": projections.live_positions(),
        "building": projections.building_positions(),
        "samples": samples,
        "at": time.time(),
    }
    path = DataDir(data_dir).published
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(published))
    os.replace(tmp, path)


def read_published(data_dir: Path) -> dict[str, Any] | None:
    """Everything the follower last published (see `publish_watermark`), if anything."""
    try:
        published: dict[str, Any] = json.loads(DataDir(data_dir).published.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return published


def read_watermark(data_dir: Path) -> dict[int, int] | None:
    """The positions the views had applied when the follower last published, if any."""
    stored = read_published(data_dir)
    if stored is None:
        return None
    return published_positions(stored)


def _positions(stored: dict[str, int]) -> dict[int, int]:
    return {int(p): int(v) for p, v in stored.items()}


def published_positions(published: Mapping[str, Any]) -> dict[int, int]:
    """The positions every view had applied, from what `read_published` returned."""
    return _positions(published["positions"])


def published_views(
    published: Mapping[str, Any], which: str = "views"
) -> dict[str, dict[int, int]]:
    """Each live view's positions (``which="building"``: each version being built)."""
    return {v: _positions(p) for v, p in published.get(which, {}).items()}


class PublishedCollector(Collector):
    """The view metrics of the follower of another process, from what it published,
    with each view's lag computed against the log as it is when scraped."""

    def __init__(self, data_dir: Path, reader: LogReader) -> None:
        self._data_dir = Path(data_dir)
        self._views = ViewsCollector(reader, self._live, self._building)
        self._published: dict[str, Any] = {}

    def _live(self) -> dict[str, dict[int, int]]:
        return published_views(self._published)

    def _building(self) -> dict[str, dict[int, int]]:
        return published_views(self._published, "building")

    def describe(self) -> list[Metric]:
        return []  # registering must not scrape: the data may not be there yet

    def collect(self) -> Iterator[Metric]:
        self._published = read_published(self._data_dir) or {}
        applied = CounterMetricFamily(
            "cqrsflow_view_events_applied", "Events applied to the view", labels=["view"]
        )
        buckets: list[tuple[str, float]] = []
        total = 0.0
        for name, labels, value in self._published.get("samples", []):
            if name == "cqrsflow_view_events_applied_total":
                applied.add_metric([labels["view"]], value)
            elif name == "cqrsflow_view_maintenance_seconds_bucket":
                buckets.append((labels["le"], value))
            elif name == "cqrsflow_view_maintenance_seconds_sum":
                total = value
        yield applied
        if buckets:
            maintenance = HistogramMetricFamily(
                "cqrsflow_view_maintenance_seconds",
                "One micro-batch applied to every view (one transaction)",
            )
            maintenance.add_metric([], buckets, total)
            yield maintenance
        yield from self._views.collect()


def follow(
    projections: Projections,
    reader: LogReader,
    data_dir: Path,
    stop: threading.Event,
    *,
    poll: float = 0.05,
    max_events: int = 1_000_000,
    on_round: Callable[[int], None] | None = None,
) -> int:
    """Apply the log to the views as it grows until `stop` is set, then apply what was
    committed by then and return the rows applied in all."""
    total = 0
    first = True
    while True:
        stopping = stop.is_set()
        _take_requests(projections, data_dir)
        applied = projections.catch_up(reader, max_events=max_events)
        total += applied
        if applied or stopping or first:
            publish_watermark(data_dir, projections)
            first = False
        if on_round is not None:
            on_round(applied)
        if stopping:
            return total
        if not applied:
            stop.wait(poll)
