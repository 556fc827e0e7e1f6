"""The event log's Prometheus metrics (names and meanings: docs/metrics.md).

Updated once per append, never per event: an append of a thousand events costs a few
microseconds of bookkeeping here. Segments and bytes on disk are read from the data
directory when scraped (`LogDiskCollector`), so any process can report them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from store._datadir import DataDir

_SIZES = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000)
_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

EVENTS_APPENDED = Counter("cqrsflow_events_appended", "Events appended", ["type"])
APPEND_BATCH_SIZE = Histogram("cqrsflow_append_batch_size", "Events per append", buckets=_SIZES)
APPEND_SECONDS = Histogram(
    "cqrsflow_append_seconds", "One append, fsync included", buckets=_LATENCY
)
FSYNC_SECONDS = Histogram("cqrsflow_fsync_seconds", "One fsync", buckets=_LATENCY)
ROTATIONS = Counter("cqrsflow_segment_rotations", "Segments sealed")
TORN_BATCHES = Counter(
    "cqrsflow_recovered_torn_batches", "Torn tail batches truncated when the log was opened"
)


# `labels()` costs microseconds a call and runs for every append: keep the children.
_APPENDED_BY: dict[str, Any] = {}


def count_appended(type_names: tuple[str, ...], codes: np.ndarray) -> None:
    """Count one written batch: events by type (from its type codes) and its size."""
    for code, n in enumerate(np.bincount(codes).tolist()):
        if n:
            name = type_names[code]
            child = _APPENDED_BY.get(name)
            if child is None:
                child = _APPENDED_BY[name] = EVENTS_APPENDED.labels(type=name)
            child.inc(n)
    APPEND_BATCH_SIZE.observe(len(codes))


class LogDiskCollector(Collector):
    """Segments and bytes per partition of the log in `data_dir`, read when scraped."""

    def __init__(self, data_dir: Path) -> None:
        self._log = DataDir(data_dir).log

    def describe(self) -> list[Metric]:
        return []  # registering must not scrape: the data may not be there yet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        segments = GaugeMetricFamily(
            "cqrsflow_log_segments", "Segments on disk", labels=["partition"]
        )
        size = GaugeMetricFamily(
            "cqrsflow_log_bytes", "Bytes on disk", labels=["partition"], unit="bytes"
        )
        for partition in sorted(p for p in self._log.glob("*") if p.name.isdigit()):
            files = list(partition.iterdir())
            total = 0
            for f in files:
                try:
                    total += f.stat().st_size
                except FileNotFoundError:  # a rotation renamed it meanwhile
                    continue
            segments.add_metric([partition.name], sum(f.suffix == ".arrows" for f in files))
            size.add_metric([partition.name], total)
        yield segments
        yield size
