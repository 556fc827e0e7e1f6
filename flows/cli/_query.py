"""`cqrsflow query`: SQL over the views, here or from a running `cqrsflow serve`.

`query --data DIR` opens the projections database itself (so no other process may hold
it), brings the views up to the log, and answers; `query --connect URL` asks a server.
`local_layer` (the query layer over a data directory) is what `serve` answers from too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from flows._app import App
from flows._load import app_for
from flows._progress import progress_bar
from flows.cli._common import (
    EXIT_OK,
    Subparsers,
    Terminal,
    UsageError,
    app_flag,
    require_log,
)
from queries import (
    CacheConfig,
    FlightQueryClient,
    Policy,
    Projections,
    QueryLayer,
    ServingConfig,
)
from store import DataDir, LogReader, latest_positions

WARM_SECONDS = 5.0
QUERY_TIMEOUT = 30.0  # seconds, as ServingConfig's own default


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
    app: App,
    console: Console | None = None,
    caching: Caching | None = None,
    query_timeout: float = QUERY_TIMEOUT,
) -> Iterator[QueryLayer]:
    """A query layer over DIR, its views brought up to the log first; with `caching`
    (a server), configured by it and keeping DIR/query-shapes.json. A query running
    longer than `query_timeout` seconds is interrupted."""
    reader = LogReader.open(data, app.layout())  # old events read as today's classes
    projections = Projections.open(data, app.views, app.layout(), reader=reader)
    try:
        behind = max((lag.events for lag in projections.lag(reader).values()), default=0)
        with progress_bar(console or Console(stderr=True), "events") as bar:
            # Replaying the log into views that are behind can take a while.
            task = bar.add_task("bringing the views up to the log", total=behind)
            projections.catch_up(reader, progress=lambda n: bar.advance(task, n))
        if caching is None:
            config = ServingConfig(query_timeout=query_timeout)
            layer = QueryLayer.open(projections, reader, config=config)
        else:
            config = ServingConfig(
                query_timeout=query_timeout,
                caches=CacheConfig(hot_policy=caching.policy, result_policy=caching.policy),
                shapes=DataDir(data).query_shapes,
                warm=caching.warm,
                warm_seconds=WARM_SECONDS,
            )
            layer = QueryLayer.open(projections, reader, config=config, shared=caching.redis)
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
    app: str | None,
    explain: bool,
    after: Mapping[int, int] | None,
    timeout: float | None,
) -> pa.Table:
    if connect is not None:
        with FlightQueryClient(connect, token=token) as client:
            return client.query(sql, after=after, explain=explain, timeout=timeout)
    assert data is not None
    with local_layer(data, app_for(data, app)) as layer:
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


def add_parser(sub: Subparsers) -> None:
    query = sub.add_parser(
        "query",
        help="answer SQL from the views (or the log), here or from a running server",
        description="Answer a SQL query over the event tables (events, and one table per "
        "event type) and the views. The planner rewrites it onto the cheapest view that "
        "answers it, or scans the log; --explain shows the choice, the alternatives and "
        "their costs, and why the other views could not answer.",
    )
    query.add_argument(
        "sql", help='the query, e.g. "SELECT event_type, count(*) FROM events GROUP BY 1"'
    )
    where = query.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="the data directory (no server may hold it)")
    where.add_argument(
        "--connect", metavar="URL", help="a running `cqrsflow serve`, grpc://HOST:PORT"
    )
    query.add_argument("--explain", action="store_true", help="show the plan instead of the rows")
    query.add_argument(
        "--after",
        action="append",
        metavar="PARTITION:POSITION",
        help="wait until the views have applied this log position (a result's `position`)",
    )
    query.add_argument("--timeout", type=float, help="seconds to wait for --after (default 10)")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    query.add_argument("--token", help="the server's token (default: $CQRSFLOW_TOKEN)")
    app_flag(query)
    query.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    if args.data is not None:
        require_log(args.data)
    try:
        after = latest_positions(args.after) if args.after else None
    except ValueError as err:
        raise UsageError(str(err)) from None
    table = run_query(
        args.sql,
        data=args.data,
        connect=args.connect,
        token=args.token or os.environ.get("CQRSFLOW_TOKEN"),
        app=args.app,
        explain=args.explain,
        after=after,
        timeout=args.timeout,
    )
    if args.explain and args.format == "table":
        print_explain(table, term.out)
    else:
        print_table(table, args.format, term.out)
    return EXIT_OK
