"""What `cqrsflow run` and `cqrsflow serve` expose: their registries and readiness.

`run` (one process): the flow's and the log's metrics in this process, the views'
from what the follower process publishes. With `--processes N` the flow runs in child
processes, which write their metrics to a directory (prometheus-client's multiprocess
mode) that this process serves from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from queries import (
    MAINTENANCE_SECONDS,
    VIEW_EVENTS,
    Lag,
    PoolCollector,
    PoolStats,
    Projections,
    PublishedCollector,
    ViewsCollector,
    published_views,
    read_published,
    view_lags,
)
from store import DataDir, LogDiskCollector, LogReader

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run_registry(data: Path, processes: int) -> tuple[CollectorRegistry, dict[str, str]]:
    """The registry a run serves, and the environment its child processes need."""
    if processes > 1:
        directory = DataDir(data).metrics
        shutil.rmtree(directory, ignore_errors=True)  # counters start at zero each run
        directory.mkdir(parents=True)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        env = {MULTIPROCESS_ENV: str(directory)}
    else:
        registry, env = REGISTRY, {}
        # This process applies no views: the follower's figures are served instead,
        # and two families of one name would make the exposition invalid.
        for local in (VIEW_EVENTS, MAINTENANCE_SECONDS):
            with contextlib.suppress(KeyError):
                REGISTRY.unregister(local)
    registry.register(LogDiskCollector(data))
    registry.register(_Lazy(lambda: PublishedCollector(data, LogReader.open(data)), data))
    return registry, env


def run_readiness(data: Path, lag_seconds: float) -> Callable[[], str | None]:
    """Ready when the log exists and every view is within `lag_seconds` of it."""

    def ready() -> str | None:
        if not DataDir(data).has_log():
            return "the log is not open yet"
        published = read_published(data)
        if published is None:
            return "the views' follower has not reported yet"
        lags = view_lags(LogReader.open(data), published_views(published))
        return _too_far(lags, lag_seconds)

    return ready


def serve_registry(
    data: Path, projections: Projections, reader: LogReader, pool: Callable[[], PoolStats]
) -> CollectorRegistry:
    REGISTRY.register(LogDiskCollector(data))
    REGISTRY.register(
        ViewsCollector(reader, projections.live_positions, projections.building_positions)
    )
    REGISTRY.register(PoolCollector(pool))
    return REGISTRY


def serve_readiness(
    data: Path, projections: Projections, lag_seconds: float
) -> Callable[[], str | None]:
    def ready() -> str | None:
        # A reader of its own: the scrape runs on the endpoint's thread.
        return _too_far(view_lags(LogReader.open(data), projections.live_positions()), lag_seconds)

    return ready


def _too_far(lags: dict[str, Lag], bound: float) -> str | None:
    behind = {v: lag.seconds for v, lag in lags.items() if lag.seconds > bound}
    if not behind:
        return None
    views = ", ".join(
        f"view {v} is {lag:.1f} s behind the log" for v, lag in sorted(behind.items())
    )
    return f"{views} (allowed: {bound} s)"


class _Lazy(Collector):
    """A collector made on first scrape: the log a run writes may not exist yet."""

    def __init__(self, make: Callable[[], PublishedCollector], data: Path) -> None:
        self._make = make
        self._data = data
        self._made: PublishedCollector | None = None

    def describe(self) -> list[Metric]:
        return []  # names are not known before the first scrape

    def collect(self) -> Iterable[Metric]:
        if self._made is None:
            if not DataDir(self._data).has_log():
                return []
            self._made = self._make()
        return self._made.collect()


class BytewaxCollector(Collector):
    """bytewax's own metrics (per-step batch durations and the like), from its web
    server: its Rust side exports them nowhere else. That server binds every interface,
    which is why `--bytewax-metrics` is opt-in."""

    def __init__(self, port: int) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._fetching = threading.Event()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        # bytewax's page renders this process's registry, this collector included:
        # the nested call (on bytewax's thread, while we wait) must not fetch again.
        if self._fetching.is_set():
            return []
        self._fetching.set()
        try:
            with urllib.request.urlopen(self._url, timeout=2) as response:
                text = response.read().decode()
        except OSError:  # not started yet, or gone: nothing to add
            return []
        finally:
            self._fetching.clear()
        # Its page repeats this process's own registry; keep what is bytewax's.
        return [f for f in text_string_to_metric_families(text) if f.name.startswith("bytewax_")]


def enable_bytewax_metrics(registry: CollectorRegistry, data: Path) -> None:
    """Turn on bytewax's web server for the flow this process runs, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "1"
    os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(port)
    # It also writes the dataflow's shape, as dataflow.json in this directory (default:
    # the working directory).
    os.environ["BYTEWAX_DATAFLOW_API_CACHE_PATH"] = str(data)
    registry.register(BytewaxCollector(port))
