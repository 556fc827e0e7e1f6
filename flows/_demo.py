"""`cqrsflow demo`: the README's main job, on an embedded bank workload."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from flows import bank
from flows._bench_store import BATCH, HOT, bank_batches
from store import ArrowLog, LogConfig, LogReader, to_polars, verify_log
from store._verify import segment_stats


def run_demo(data: Path, events: int, console: Console) -> int:
    console.rule("cqrsflow demo: the bank")
    console.print(f"data directory: {data}")
    layout = bank.layout()
    started = time.perf_counter()
    with (
        ArrowLog.open(data, layout, LogConfig(segment_bytes=8 * 1024 * 1024)) as log,
        Progress(console=console, transient=True, disable=not console.is_terminal) as progress,
    ):
        task = progress.add_task("appending events", total=events)
        batches = bank_batches(
            events, accounts=max(events // 50, 1), hot_every=max(events // 500, 1)
        )
        for batch in batches:
            log.append(batch)
            progress.advance(task, len(batch))
    seconds = time.perf_counter() - started
    console.print(
        f"wrote {events:,} events in batches of {BATCH:,} with fsync per batch: "
        f"{events / seconds:,.0f} events/s (including generating them)"
    )

    segments = segment_stats(data)
    disk = sum(s.bytes for s in segments)
    console.print(
        f"{len(segments)} segment(s), {disk / 1024 / 1024:.1f} MiB, {disk / events:.0f} bytes per event"
    )
    problems = list(verify_log(data))
    console.print(
        "log verify: "
        + ("[green]every checksum matches[/]" if not problems else f"[red]{problems[0]}[/]")
    )

    reader = LogReader.open(data, layout)
    started = time.perf_counter()
    stream = reader.read_stream(HOT)
    took = (time.perf_counter() - started) * 1000
    history = reader.decode(stream)
    console.print(
        f"\naccount {HOT!r}: {len(history)} events, read through the index in {took:.2f} ms"
    )
    table = Table("version", "position", "event", "amount", title=f"the last five events of {HOT}")
    for e in history[-5:]:
        amount = getattr(e.payload, "amount", "")
        table.add_row(str(e.version), str(e.position), e.event_type, str(amount))
    console.print(table)

    totals = (
        to_polars(reader)
        .group_by("event_type")
        .agg(pl.len().alias("events"), pl.col("amount").sum().alias("amount"))
        .sort("events", descending=True)
        .collect()
    )
    summary = Table(
        "event type", "events", "sum(amount)", title="the whole log, through polars (zero-copy)"
    )
    for row in totals.iter_rows():
        summary.add_row(str(row[0]), f"{row[1]:,}", f"{row[2] or 0:,}")
    console.print(summary)
    return 0
