"""`cqrsflow run`: run a domain's command flow over a file, a directory or stdin."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console

from connectors import JsonLinesSink, JsonLinesSource, MsgpackSource, StdinSource
from flows._dataflow import FlowConfig, command_flow, init_recovery, run_flow, tune_gc
from flows._domain import Aggregate
from flows._results import Result
from flows._shard import ShardConfig
from store import Fsync, LogReader, log_partitions


@dataclass(frozen=True, slots=True)
class RunOptions:
    commands: str  # a path, or "-" for stdin
    data_dir: Path
    format: str | None  # "jsonl" | "msgpack"; None: from the file name
    workers: int
    processes: int
    partitions: int
    fsync: Fsync
    process_id: int | None = None
    addresses: list[str] | None = None
    max_view_lag: int = 2_000_000
    shard: ShardConfig = field(default_factory=ShardConfig)
    resuming: bool = False  # this input was run before here (its checkpoints exist)


def _source(options: RunOptions) -> Any:
    fmt = options.format
    if options.commands == "-":
        return StdinSource("msgpack" if fmt == "msgpack" else "json")
    path = Path(options.commands)
    if fmt is None:
        fmt = "msgpack" if path.suffix in (".msgpack", ".mpk") else "jsonl"
    return MsgpackSource(path) if fmt == "msgpack" else JsonLinesSource(path)


def run_process(aggregate: Aggregate[Any], options: RunOptions) -> None:
    """Run this process's part of the flow (all of it, with one process)."""
    tune_gc()
    run_flow(
        _flow(aggregate, options),
        recovery_dir(options.data_dir, options.commands),
        workers=options.workers,
        process_id=options.process_id,
        addresses=options.addresses,
    )


def _flow(aggregate: Aggregate[Any], options: RunOptions) -> Any:
    config = FlowConfig(
        options.data_dir,
        partitions=options.partitions,
        fsync=options.fsync,
        max_view_lag=options.max_view_lag,
        shard=options.shard,
        resuming=options.resuming,
    )
    return command_flow(
        aggregate,
        _source(options),
        JsonLinesSink(options.data_dir / "results", "results"),
        JsonLinesSink(options.data_dir / "dead-letter", "dead-letter"),
        config,
    )


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_cluster(argv: list[str], processes: int, env: dict[str, str] | None = None) -> int:
    """Start one child per process, on loopback, and wait for all of them."""
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(processes))
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli",
                *argv,
                "--process-id",
                str(i),
                "--addresses",
                addresses,
            ],
            env={**os.environ, **(env or {})},
        )
        for i in range(processes)
    ]
    codes = [c.wait() for c in children]
    return next((c for c in codes if c != 0), 0)


def _result_lines(data_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in (data_dir / "results").glob("*.jsonl")}


def new_results(data_dir: Path, before: dict[Path, int]) -> list[Result]:
    """The results written since `before` (what `prepare` returned)."""
    return list(_results_since(data_dir, before, msgspec.json.Decoder(Result)))


class _Status(msgspec.Struct):
    status: str


def _results_since(data_dir: Path, before: dict[Path, int], decoder: Any) -> Iterator[Any]:
    for path in sorted((data_dir / "results").glob("*.jsonl")):
        with open(path, "rb") as f:
            f.seek(before.get(path, 0))
            for line in f:
                try:
                    yield decoder.decode(line)
                except msgspec.DecodeError:
                    # A line cut short when a crash or a full disk stopped an earlier
                    # run (the sink ends it before appending): that result was resent.
                    continue


def summarize(data_dir: Path, before: dict[Path, int], seconds: float, console: Console) -> None:
    """What this run did (in `seconds`), read back from the results it wrote: only
    their statuses, one line at a time (10M results as objects are gigabytes)."""
    decoder = msgspec.json.Decoder(_Status)
    counts = Counter(r.status for r in _results_since(data_dir, before, decoder))
    total = sum(counts.values())
    events = sum(LogReader.open(data_dir).watermarks().values())
    if not total:
        console.print(
            f"no new commands: this input was processed before (the run resumed where it "
            f"stopped, as recorded in {data_dir / 'recovery'}); the log holds {events:,} events",
            highlight=False,
        )
        return
    console.print(
        f"{total:,} commands in {seconds:.1f} s ({total / seconds:,.0f}/s): "
        f"{counts['accepted']:,} accepted, {counts['rejected']:,} rejected, "
        f"{counts['invalid']:,} invalid; the log holds {events:,} events",
        highlight=False,
    )
    console.print(
        f"results in {data_dir / 'results'}, invalid records in {data_dir / 'dead-letter'}",
        highlight=False,
    )


def recovery_dir(data_dir: Path, commands: str) -> Path:
    """Where bytewax keeps its progress through one input. Each input has its own: its
    checkpoints name the input's files, so another input cannot resume from them."""
    if commands == "-":
        return data_dir / "recovery" / "stdin"
    source = Path(commands).resolve()
    digest = hashlib.blake2b(str(source).encode(), digest_size=6).hexdigest()
    return data_dir / "recovery" / f"{source.name}-{digest}"


def prepare(data_dir: Path, commands: str) -> dict[Path, int]:
    """Create the data directory's parts that every process shares; note the results so far."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.makedirs(data_dir / "results", exist_ok=True)
    init_recovery(recovery_dir(data_dir, commands))
    return _result_lines(data_dir)


def flow_from_environment(aggregate: Aggregate[Any]) -> Any:
    """The flow `cqrsflow run` would build, configured by CQRSFLOW_* variables."""
    try:
        commands = os.environ["CQRSFLOW_COMMANDS"]
        data_dir = Path(os.environ["CQRSFLOW_DATA"])
    except KeyError as err:
        raise SystemExit(
            f"set {err.args[0]}: CQRSFLOW_COMMANDS (a file, a directory or -) and "
            "CQRSFLOW_DATA (the data directory) say what to run and where"
        ) from None
    partitions = log_partitions(data_dir) or int(os.environ.get("CQRSFLOW_PARTITIONS", "4"))
    options = RunOptions(
        commands=commands,
        data_dir=data_dir,
        format=os.environ.get("CQRSFLOW_FORMAT"),
        workers=1,
        processes=1,
        partitions=partitions,
        fsync=Fsync(os.environ.get("CQRSFLOW_FSYNC", "always")),
    )
    prepare(data_dir, commands)
    return _flow(aggregate, options)
