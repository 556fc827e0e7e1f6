"""`cqrsflow demo`: the README's main job, on an embedded bank workload.

It generates commands, runs them through the command flow into the event log, and
shows what happened: outcomes, throughput, a few results, the log on disk, one
account's history read through the index, and totals straight from the Arrow log.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows._workload import bank_commands, encoder
from flows.bank import ACCOUNT, APP
from flows.cli._common import (
    Subparsers,
    Terminal,
    UsageError,
)
from queries import Projections, QueryLayer
from store import DataDir, LogReader, segment_stats, to_polars, verify_log

DEMO_QUERIES = (
    "SELECT event_type, count(*) AS events, sum(amount) AS total FROM events "
    "GROUP BY event_type ORDER BY events DESC",
    "SELECT aggregate_id, sum(CASE event_type WHEN 'Deposited' THEN amount "
    "WHEN 'Withdrawn' THEN -amount ELSE 0 END) AS balance FROM events "
    "WHERE aggregate_id = 'acct-0000001' GROUP BY aggregate_id",
    "SELECT avg(amount) AS average_withdrawal FROM Withdrawn",
)


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return round(value, 2) if isinstance(value, float) else value


def _views_and_queries(data: Path, console: Console) -> None:
    reader = LogReader.open(data)
    projections = Projections.open(data, APP.views, APP.layout(), reader=reader)
    try:
        started = time.perf_counter()
        projections.catch_up(reader)
        seconds = time.perf_counter() - started
        events = sum(reader.watermarks().values())
        console.print(
            f"6. {events:,} events applied to the views ({', '.join(v.name for v in APP.views)}) "
            f"in DuckDB in {seconds:.2f} s, in one transaction with their checkpoints",
            highlight=False,
        )
        layer = QueryLayer.open(projections, reader)
        console.print("7. SQL over the event tables, planned onto the views:")
        for sql in DEMO_QUERIES:
            plan, _ = layer.planner.plan(sql)
            started = time.perf_counter()
            result = layer.run(sql)
            took = (time.perf_counter() - started) * 1000
            first = {k: _plain(v) for k, v in (result.to_pylist() or [{}])[0].items()}
            console.print(f"   [bold]{sql}[/]", highlight=False)
            console.print(
                f"   -> {plan.chosen.target} ({plan.chosen.rule}) in {took:.2f} ms: {first}",
                highlight=False,
            )
        layer.close()
    finally:
        projections.close()


def run_demo(data: Path, commands: int, console: Console, *, keep: bool) -> int:
    # The flow (bytewax) and polars are loaded when the demo runs, not with every CLI start.
    import polars as pl

    from flows._flow import FlowConfig, RunOptions, new_results, prepare, run_process
    from flows._load import claim

    console.rule("cqrsflow demo: a bank")
    accounts = max(commands // 20, 1)
    data.mkdir(parents=True, exist_ok=True)
    workload = data / "commands.jsonl"
    encode = encoder("jsonl")
    with open(workload, "wb") as f:
        f.writelines(map(encode, bank_commands(commands, accounts, invalid_rate=0.01)))
    console.print(
        f"1. generated {commands:,} commands for {accounts:,} accounts ({workload}); "
        "1% are malformed on purpose",
        highlight=False,
    )

    claim(data, APP, "bank")  # later commands on this directory need no --app
    before = prepare(data, str(workload))
    started = time.perf_counter()
    options = RunOptions(str(workload), "jsonl", FlowConfig(data))
    run_process(APP, options)
    seconds = time.perf_counter() - started
    results = new_results(data, before)
    counts = Counter(r.status for r in results)
    console.print(
        f"2. ran them through the flow (parse, decide, append with fsync per batch, "
        f"result) in {seconds:.2f} s: {len(results) / seconds:,.0f} commands/s",
        highlight=False,
    )
    table = Table("outcome", "commands", "example", title="results", title_justify="left")
    for status in ("accepted", "rejected", "invalid"):
        example = next((r for r in results if r.status == status), None)
        shown = ""
        if example is not None:
            shown = (
                f"{example.aggregate_id} v{example.version} at {example.position}: {example.events}"
                if status == "accepted"
                else f"{example.command_id or '(no readable id)'}: {example.reason}"
            )
        table.add_row(status, f"{counts[status]:,}", shown)
    console.print(table)

    segments = segment_stats(data)
    events = sum(s.events for s in segments)
    disk = sum(s.bytes for s in segments)
    problems = list(verify_log(data))
    console.print(
        f"3. the log: {events:,} events in {len(segments)} segments over "
        f"{len({s.partition for s in segments})} partitions, {disk / max(events, 1):.0f} bytes "
        f"per event; verify: {'every checksum matches' if not problems else problems[0]}",
        highlight=False,
    )

    reader = LogReader.open(data, APP.layout())
    busiest = Counter(r.aggregate_id for r in results if r.status == "accepted").most_common(1)
    if busiest and busiest[0][0] is not None:
        account = busiest[0][0]
        started = time.perf_counter()
        history = reader.decode(reader.read_stream(account))
        took = (time.perf_counter() - started) * 1000
        state = ACCOUNT.fold(e.payload for e in history)
        console.print(
            f"4. {account}: {len(history)} events read through the index in {took:.2f} ms; "
            f"balance {state.balance:,}, {state.status}",
            highlight=False,
        )

    totals = (
        to_polars(reader)
        .group_by("event_type")
        .agg(pl.len().alias("events"), pl.col("amount").sum().alias("amount"))
        .sort("events", descending=True)
        .collect()
    )
    summary = Table(
        "event type", "events", "sum(amount)", title="5. the whole log through polars, zero-copy"
    )
    for row in totals.iter_rows():
        summary.add_row(str(row[0]), f"{row[1]:,}", f"{row[2] or 0:,}")
    console.print(summary)
    _views_and_queries(data, console)
    if keep:
        console.print(
            f"explore it: cqrsflow log stats --data {data}; cqrsflow projections list --data "
            f'{data}; cqrsflow query --data {data} --explain "SELECT ..."',
            highlight=False,
        )
    else:
        console.print("(pass --data DIR to keep the data directory and explore it)")
    return 0


def add_parser(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the bank example end to end and show what happened",
        description="Generate a bank workload, run it through the command flow into the "
        "event log, and show what happened: outcomes, throughput, the log on disk, one "
        "account's history and totals by event type.",
    )
    demo.add_argument("--data", type=Path, help="data directory (default: a new temporary one)")
    demo.add_argument(
        "--commands", type=int, default=100_000, help="commands to run (default 100,000)"
    )
    demo.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    if args.commands < 1:
        raise UsageError(f"--commands {args.commands}: expected a positive number")
    if args.data is None:
        with tempfile.TemporaryDirectory(prefix="cqrsflow-demo-") as tmp:
            return run_demo(Path(tmp), args.commands, term.out, keep=False)
    if DataDir(args.data).log.exists():
        raise UsageError(f"--data {args.data}: already holds a log; the demo needs a new directory")
    return run_demo(args.data, args.commands, term.out, keep=True)
