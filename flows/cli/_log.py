"""`cqrsflow log stats|verify|tail`: what is in a data directory's log, and is it intact."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from flows._app import App
from flows._load import app_for, recorded_app
from flows.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    Subparsers,
    Terminal,
    require_log,
)
from store import LogReader, segment_stats, verify_log


def log_stats(data: Path, console: Console, *, as_json: bool) -> int:
    segments = segment_stats(data)
    reader = LogReader.open(data)
    by_type: Counter[str] = Counter()
    for batch in reader.read_all():
        counts = batch.column("event_type").value_counts()
        for item in counts.to_pylist():
            by_type[item["values"]] += item["counts"]
    partitions: dict[int, dict[str, int]] = {}
    for s in segments:
        p = partitions.setdefault(
            s.partition, {"segments": 0, "events": 0, "batches": 0, "bytes": 0}
        )
        p["segments"] += 1
        p["events"] += s.events
        p["batches"] += s.batches
        p["bytes"] += s.bytes
    events = sum(p["events"] for p in partitions.values())
    disk = sum(p["bytes"] for p in partitions.values())
    if as_json:
        doc = {
            "events": events,
            "bytes": disk,
            "partitions": partitions,
            "event_types": dict(by_type),
            "segments": [dataclasses.asdict(s) for s in segments],
        }
        print(json.dumps(doc, indent=2, default=str))
        return EXIT_OK
    table = Table(title=f"event log in {data}", title_justify="left")
    for col in ("partition", "segments", "batches", "events", "bytes on disk"):
        table.add_column(col, justify="right")
    for number, p in sorted(partitions.items()):
        table.add_row(
            str(number),
            str(p["segments"]),
            f"{p['batches']:,}",
            f"{p['events']:,}",
            _size(p["bytes"]),
        )
    console.print(table)
    types = Table(title="events by type", title_justify="left")
    types.add_column("event type")
    types.add_column("events", justify="right")
    for name, count in by_type.most_common():
        types.add_row(name, f"{count:,}")
    console.print(types)
    if events:
        console.print(f"{events:,} events, {disk / events:.1f} bytes per event on disk")
    return EXIT_OK


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.1f} {unit}" if unit != "B" else f"{n:,} B"
        size /= 1024
    return f"{n} B"


def log_verify(data: Path, console: Console) -> int:
    problems = 0
    checked = segment_stats(data)
    for problem in verify_log(data):
        problems += 1
        console.print(f"[red]corrupt[/] {problem}", highlight=False)
    events = sum(s.events for s in checked)
    if problems:
        console.print(f"{problems} problem(s) in {len(checked)} segment(s)")
        return EXIT_FAILURE
    console.print(f"ok: {len(checked)} segment(s), {events:,} events, every checksum matches")
    return EXIT_OK


def _print_rows(batch: pa.RecordBatch) -> None:
    for row in batch.to_pylist():
        row["event_id"] = row["event_id"].hex()
        row["timestamp"] = row["timestamp"].isoformat()
        payload = {k: v for k, v in row.items() if v is not None}
        print(json.dumps(payload, default=_jsonable), flush=True)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def log_tail(data: Path, app: App | None, *, last: int, follow: bool) -> int:
    """The latest events, read as `app`'s classes read them (renamed types, added
    fields' defaults, upcasters), or as stored without an application."""
    reader = LogReader.open(data, None if app is None else app.layout())
    marks = reader.watermarks()
    start = {p: max(0, end - last) for p, end in marks.items()}
    for batch in reader.read_all(start):
        _print_rows(batch)
    if not follow:
        return EXIT_OK
    seen = marks
    while True:
        time.sleep(0.2)
        reader.refresh()
        for batch in reader.read_all(seen):
            _print_rows(batch)
        seen = reader.watermarks()


def add_parser(sub: Subparsers) -> None:
    log = sub.add_parser("log", help="inspect the event log", description="Inspect the event log.")
    log_sub = log.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    stats = log_sub.add_parser("stats", help="segments, events and bytes per partition")
    verify = log_sub.add_parser(
        "verify",
        help="check every batch against its checksum",
        description="Check every segment's batches against their checksums and structure. "
        "Exits 1 and names the file and byte offset of each problem found.",
    )
    tail = log_sub.add_parser(
        "tail", help="print the latest events as JSON lines (--follow to keep printing)"
    )
    for p in (stats, verify, tail):
        p.add_argument("--data", type=Path, required=True, help="the data directory")
    tail.add_argument(
        "--app",
        metavar="APP",
        help="read the events as this application's classes read them (default: the one "
        "recorded in the data directory, if any; else as stored)",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    tail.add_argument("-n", type=int, default=10, help="how many of the latest events (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    log.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    require_log(args.data)
    if args.log_command == "stats":
        return log_stats(args.data, term.out, as_json=args.json)
    if args.log_command == "verify":
        return log_verify(args.data, term.out)
    app = None
    if args.app is not None or recorded_app(args.data) is not None:
        app = app_for(args.data, args.app)
    return log_tail(args.data, app, last=args.n, follow=args.follow)
