"""`cqrsflow projections list|rebuild|follow`, and the follower `cqrsflow run` starts.

The follower is a child process: it has the DuckDB file to itself (one writer), a core
of its own beside the flow's worker, and it stops when its stdin closes, which happens
when the run ends, however it ends, so it never outlives the run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows._app import App
from flows._load import app_for
from flows._progress import progress_bar
from flows.cli._common import (
    Subparsers,
    Terminal,
    app_flag,
    require_log,
)
from queries import (
    Projections,
    ProjectionsBusy,
    PythonProjection,
    View,
    follow,
    read_watermark,
    request_rebuild,
)
from store import DataDir, LogReader


def _open(data: Path, app: App) -> tuple[Projections, LogReader]:
    # Read as the application's classes read the log: old events renamed, defaulted
    # and upcast, as the views' SQL expects them.
    reader = LogReader.open(data, app.layout())
    return Projections.open(data, app.views, app.layout(), reader=reader), reader


def projections_list(data: Path, app: App, console: Console) -> int:
    try:
        projections, reader = _open(data, app)
    except ProjectionsBusy as busy:
        return _list_from_watermark(data, busy, console)
    try:
        lags = projections.lag(reader)
        table = Table(title=f"views in {DataDir(data).projections}")
        for column in ("view", "kind", "rows", "lag events", "lag s", "about"):
            table.add_column(column, justify="left" if column in ("view", "about") else "right")
        for view in projections.views:
            kind = "python" if isinstance(view, PythonProjection) else "sql"
            if isinstance(view, View):
                definition = projections.definition(view.name)
                kind = definition.kind if definition is not None else kind
                (count,) = projections.con.execute(
                    f"SELECT count(*) FROM {projections.table(view.name)}"
                ).fetchone() or (0,)
                rows = f"{count:,}"
            else:
                rows = "-"
            lag = lags[view.name]
            table.add_row(
                view.name, kind, rows, f"{lag.events:,}", f"{lag.seconds:.1f}", view.description
            )
        console.print(table)
        for key in projections.building():
            console.print(f"being built beside the live version: {key}", highlight=False)
    finally:
        projections.close()
    return 0


def _list_from_watermark(data: Path, busy: ProjectionsBusy, console: Console) -> int:
    """While another process maintains the views, their lag from what it published."""
    applied = read_watermark(data)
    if applied is None:
        raise busy
    reader = LogReader.open(data)
    end = reader.watermarks()
    behind = sum(max(0, end[p] - applied.get(p, 0)) for p in end)
    console.print(
        f"the views are maintained by another process ({busy}); as of its last round they "
        f"have applied {sum(applied.values()):,} of the log's {sum(end.values()):,} events "
        f"({behind:,} behind)",
        highlight=False,
    )
    return 0


def projections_rebuild(data: Path, app: App, name: str | None, console: Console) -> int:
    try:
        projections, reader = _open(data, app)
    except ProjectionsBusy:
        # A running flow or server maintains the views: it builds them beside the live
        # versions and swaps them in when caught up.
        names = [name] if name else [v.name for v in app.views]
        for n in names:
            request_rebuild(data, n)
        console.print(
            f"asked the process that maintains the views to rebuild {', '.join(names)}; it "
            "builds beside the live version and swaps it in once caught up (see "
            f"`cqrsflow projections list --data {data}`)",
            highlight=False,
        )
        return 0
    try:
        names = [name] if name else [v.name for v in projections.views]
        for n in names:
            projections.rebuild(n)
        events = sum(reader.watermarks().values())
        with progress_bar(console, "events") as progress:
            task = progress.add_task(f"rebuilding {', '.join(names)}", total=events)
            projections.catch_up(reader, progress=lambda n: progress.advance(task, n))
        console.print(
            f"rebuilt {', '.join(names)} from {events:,} events and swapped in", highlight=False
        )
    finally:
        projections.close()
    return 0


def projections_follow(data: Path, spec: str | None, console: Console, max_events: int) -> int:
    """Follow the log until stdin closes (the parent run ended), then catch up and stop."""
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    # A new run creates the log once its workers start.
    while not DataDir(data).has_log():
        if stop.wait(0.05):
            return 0
    try:
        projections, reader = _open(data, app_for(data, spec))
    except ProjectionsBusy as err:
        console.print(f"views not maintained by this run: {err}", highlight=False)
        # Leave once the run closes the pipe: exiting with the reader thread still in
        # its read of stdin kills the interpreter at shutdown.
        stop.wait()
        return 0
    try:
        follow(projections, reader, data, stop, max_events=max_events)
    finally:
        projections.close()
    return 0


def start_follower(data: Path, spec: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "projections", "follow"),
            *("--data", str(data), "--app", spec),
        ],
        stdin=subprocess.PIPE,
    )


def stop_follower(follower: subprocess.Popen[bytes]) -> int:
    """Tell the follower the run is over; it applies the rest and exits."""
    assert follower.stdin is not None
    follower.stdin.close()
    return follower.wait()


def add_parser(sub: Subparsers) -> None:
    proj = sub.add_parser(
        "projections",
        help="list, rebuild or follow the materialized views",
        description="The application's materialized views in DIR/projections.duckdb: list them "
        "with their size and lag, rebuild one (or all) from the log beside the live version "
        "and swap it in, or follow the log to keep them current (what `run` starts).",
    )
    proj_sub = proj.add_subparsers(dest="projections_command", required=True, metavar="ACTION")
    proj_list = proj_sub.add_parser("list", help="views, rows, and how far behind the log")
    rebuild = proj_sub.add_parser("rebuild", help="rebuild views from the log, with progress")
    rebuild.add_argument("name", nargs="?", help="the view to rebuild (default: all)")
    proj_follow = proj_sub.add_parser(
        "follow", help="apply the log to the views as it grows, until stdin closes"
    )
    for p in (proj_list, rebuild, proj_follow):
        p.add_argument("--data", type=Path, required=True, help="the data directory")
        app_flag(p)
    proj_follow.add_argument(
        "--max-events",
        type=int,
        default=1_000_000,
        help="most events applied in one transaction (default 1,000,000)",
    )
    proj.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    if args.projections_command != "follow":
        require_log(args.data)
    if args.projections_command == "follow":
        return projections_follow(args.data, args.app, term.out, args.max_events)
    app = app_for(args.data, args.app)
    if args.projections_command == "list":
        return projections_list(args.data, app, term.out)
    return projections_rebuild(args.data, app, args.name, term.out)
