"""`cqrsflow query` and `cqrsflow serve`: SQL over the views, here or over Arrow Flight.

`query --data DIR` opens the projections database itself (so no other process may hold
it), brings the views up to the log, and answers. `serve` keeps the views current from
the log in a thread and answers Flight clients (`query --connect`) meanwhile; its caches
follow `Caching` (`--cache-policy`, `--redis`, `--warm-queries`), and it keeps the query
shapes it was asked in DIR/query-shapes.json for the next start to warm with.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import FrameType

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from flows._http import start_endpoints
from flows._observe import serve_readiness, serve_registry
from flows._progress import progress_bar
from flows._projcmd import domain_views
from queries import CacheConfig, Projections
from queries._cache_base import Policy
from queries._flight import FlightQueryClient, FlightQueryServer
from queries._follow import follow
from queries._service import QueryLayer
from store import LogReader, Position


def parse_after(values: list[str] | None) -> dict[int, int] | None:
    """``--after 2:1234`` (a result's `position`), repeatable or comma-separated: the
    latest position asked for in each partition."""
    if not values:
        return None
    after: dict[int, int] = {}
    for value in (v.strip() for given in values for v in given.split(",")):
        position = Position.parse(value)
        after[position.partition] = max(after.get(position.partition, 0), position.offset)
    return after


SHAPES_FILE = "query-shapes.json"
WARM_SECONDS = 5.0
QUERY_TIMEOUT = 30.0  # seconds, as QueryLayer's own default


@dataclass(frozen=True)
class Caching:
    """How `serve` caches: an L3 Redis (URL) to share results through, the result and
    hot-row caches' policy, how many frequent query shapes to re-run on start."""

    redis: str | None = None
    policy: Policy = "arc"
    warm: int = 0


@contextmanager
def local_layer(
    data: Path,
    domain: str,
    console: Console | None = None,
    caching: Caching | None = None,
    query_timeout: float = QUERY_TIMEOUT,
) -> Iterator[QueryLayer]:
    """A query layer over DIR, its views brought up to the log first; with `caching`
    (a server), configured by it and keeping DIR/query-shapes.json. A query running
    longer than `query_timeout` seconds is interrupted."""
    views, layout = domain_views(domain)
    reader = LogReader.open(data)
    projections = Projections.open(data, views, layout, reader=reader)
    try:
        behind = max((lag.events for lag in projections.lag(reader).values()), default=0)
        with progress_bar(console or Console(stderr=True), "events") as bar:
            # Replaying the log into views that are behind can take a while.
            task = bar.add_task("bringing the views up to the log", total=behind)
            projections.catch_up(reader, progress=lambda n: bar.advance(task, n))
        if caching is None:
            layer = QueryLayer(projections, reader, query_timeout=query_timeout)
        else:
            layer = QueryLayer(
                projections,
                reader,
                query_timeout=query_timeout,
                caches=CacheConfig(hot_policy=caching.policy, result_policy=caching.policy),
                shared=caching.redis,
                shapes=data / SHAPES_FILE,
                warm=caching.warm,
                warm_seconds=WARM_SECONDS,
            )
        try:
            yield layer
        finally:
            layer.close()
    finally:
        projections.close()


def run_query(
    sql: str,
    *,
    data: Path | None,
    connect: str | None,
    token: str | None,
    domain: str,
    explain: bool,
    after: Mapping[int, int] | None,
    timeout: float | None,
) -> pa.Table:
    if connect is not None:
        with FlightQueryClient(connect, token=token) as client:
            return client.query(sql, after=after, explain=explain, timeout=timeout)
    assert data is not None
    with local_layer(data, domain) as layer:
        return layer.run(sql, after=after, explain=explain, timeout=timeout)


def print_explain(plan: pa.Table, console: Console) -> None:
    """The plan as text: the choice and its SQL, the alternatives, the views refused."""
    rows = plan.to_pylist()
    for row in rows:
        if row["chosen"]:
            console.print(
                f"chosen: {row['target']} ({row['rule']}), estimated {row['estimated_ms']} ms",
                highlight=False,
            )
            console.print(f"  {row['detail']}", highlight=False)
    usable = [r for r in rows if not r["chosen"] and r["estimated_ms"] is not None]
    if usable:
        console.print("alternatives:")
    for row in usable:
        console.print(
            f"  {row['target']} ({row['rule']}), estimated {row['estimated_ms']} ms: "
            f"{row['detail']}",
            highlight=False,
        )
    refused = [r for r in rows if r["estimated_ms"] is None]
    if refused:
        console.print("views that cannot answer it:")
    for row in refused:
        console.print(f"  {row['target']}: {row['detail']}", highlight=False)


def _json_value(value: object) -> object:
    """DuckDB's HUGEINT sums arrive as Decimal: integral ones are JSON integers."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def print_table(table: pa.Table, fmt: str, console: Console) -> None:
    rows = table.to_pylist()
    if fmt == "json":
        for row in rows:
            print(json.dumps(row, default=_json_value))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(table.column_names)
        writer.writerows([row[c] for c in table.column_names] for row in rows)
    else:
        shown = Table(*table.column_names)
        for row in rows:
            shown.add_row(*("" if v is None else str(v) for v in row.values()))
        console.print(shown)
        console.print(f"{len(rows):,} row(s)", style="dim", highlight=False)


def serve(
    data: Path,
    domain: str,
    host: str,
    port: int,
    token: str | None,
    console: Console,
    endpoint: tuple[str, int, float],
    caching: Caching | None = None,
    *,
    query_timeout: float = QUERY_TIMEOUT,
) -> int:
    """Maintain the views and answer Flight clients until SIGINT or SIGTERM; serve
    metrics and health on `endpoint` (host, port, views' allowed lag; port -1: none);
    interrupt a query after `query_timeout` seconds."""
    caching = caching or Caching()
    with local_layer(data, domain, caching=caching, query_timeout=query_timeout) as layer:
        endpoints = None
        metrics_host, metrics_port, ready_lag = endpoint
        if metrics_port >= 0:
            registry = serve_registry(data, layer.projections, layer.reader, layer.pool.stats)
            ready = serve_readiness(data, layer.projections, ready_lag)
            endpoints = start_endpoints(
                ready,
                metrics_host,
                metrics_port,
                registry,
                lambda m: console.print(m, style="dim", highlight=False),
            )
        stop = threading.Event()

        def maintain() -> None:
            def on_round(applied: int) -> None:
                if applied:
                    layer.applied()

            follow(layer.projections, layer.reader, data, stop, on_round=on_round)

        follower = threading.Thread(target=maintain, name="cqrsflow-views", daemon=True)
        follower.start()
        server = FlightQueryServer(layer, host=host, port=port, token=token)

        def shutdown(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, shutdown)
        signal.signal(signal.SIGINT, shutdown)
        shared = "; results shared through Redis" if caching.redis else ""
        warmed = f"; warmed {layer.warmed} query shape(s)" if caching.warm else ""
        console.print(
            f"serving SQL over Arrow Flight at {server.location} "
            f"({'token required' if token else 'no token'}); views follow the log in {data}"
            f"{shared}{warmed}",
            highlight=False,
        )
        sys.stdout.flush()
        # The server answers on gRPC's threads from its construction on; this thread
        # only waits for a signal. Not `server.serve()`: a signal that lands just
        # before it blocks would ask for a shutdown that serve() then never sees.
        while not stop.wait(0.5):
            pass
        server.shutdown()
        follower.join()
        if endpoints is not None:
            endpoints.close()
    return 0
