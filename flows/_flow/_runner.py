"""Running a command flow over a file, a directory or stdin: in this process, or as a
cluster of processes on this machine; and reading back the results it wrote."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from connectors import Format, JsonLinesSink, JsonLinesSource, MsgpackSource, StdinSource
from flows._app import App, as_app
from flows._domain import Aggregate
from flows._flow._config import FLOW_LOG, FlowConfig
from flows._flow._dataflow import command_flow, init_recovery, run_flow, tune_gc
from flows._load import claim
from flows._results import Result
from store import DataDir, Fsync, log_partitions


@dataclass(frozen=True, slots=True)
class RunOptions:
    """One run: its input, how many workers and processes, and the flow's own config."""

    commands: str  # a path, or "-" for stdin
    format: Format | None  # None: from the file name
    flow: FlowConfig
    workers: int = 1
    processes: int = 1
    process_id: int | None = None  # this process's place in a cluster
    addresses: list[str] | None = None


def _source(options: RunOptions) -> Any:
    fmt = options.format
    if options.commands == "-":
        return StdinSource(fmt or "jsonl")
    path = Path(options.commands)
    if fmt is None:
        fmt = "msgpack" if path.suffix in (".msgpack", ".mpk") else "jsonl"
    return MsgpackSource(path) if fmt == "msgpack" else JsonLinesSource(path)


def run_process(app: App | Aggregate[Any], options: RunOptions) -> None:
    """Run this process's part of the flow (all of it, with one process)."""
    tune_gc()
    run_flow(
        _flow(app, options),
        recovery_dir(options.flow.data_dir, options.commands),
        workers=options.workers,
        process_id=options.process_id,
        addresses=options.addresses,
    )


def _flow(app: App | Aggregate[Any], options: RunOptions) -> Any:
    data = DataDir(options.flow.data_dir)
    return command_flow(
        app,
        _source(options),
        JsonLinesSink(data.results, "results"),
        JsonLinesSink(data.dead_letter, "dead-letter"),
        options.flow,
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


def results_written(data_dir: Path) -> dict[Path, int]:
    """How far each results file has been written: what `new_results` reads on from."""
    return {p: p.stat().st_size for p in DataDir(data_dir).results.glob("*.jsonl")}


def new_results(data_dir: Path, before: dict[Path, int]) -> list[Result]:
    """The results written since `before` (what `prepare` or `results_written` returned)."""
    return list(_results_since(data_dir, before, msgspec.json.Decoder(Result)))


class _Status(msgspec.Struct):
    status: str


def _results_since(data_dir: Path, before: dict[Path, int], decoder: Any) -> Iterator[Any]:
    for path in sorted(DataDir(data_dir).results.glob("*.jsonl")):
        with open(path, "rb") as f:
            f.seek(before.get(path, 0))
            for line in f:
                try:
                    yield decoder.decode(line)
                except msgspec.DecodeError:
                    # A line cut short when a crash or a full disk stopped an earlier
                    # run (the sink ends it before appending): that result was resent.
                    continue


def count_statuses(data_dir: Path, before: dict[Path, int]) -> Counter[str]:
    """How many results of each status were written since `before`: only their
    statuses, read one line at a time (10M results as objects are gigabytes)."""
    decoder = msgspec.json.Decoder(_Status)
    return Counter(r.status for r in _results_since(data_dir, before, decoder))


def recovery_dir(data_dir: Path, commands: str) -> Path:
    """Where bytewax keeps its progress through one input. Each input has its own: its
    checkpoints name the input's files, so another input cannot resume from them."""
    recovery = DataDir(data_dir).recovery
    if commands == "-":
        return recovery / "stdin"
    source = Path(commands).resolve()
    digest = hashlib.blake2b(str(source).encode(), digest_size=6).hexdigest()
    return recovery / f"{source.name}-{digest}"


def prepare(data_dir: Path, commands: str) -> dict[Path, int]:
    """Create the data directory's parts that every process shares; note the results so far."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.makedirs(DataDir(data_dir).results, exist_ok=True)
    init_recovery(recovery_dir(data_dir, commands))
    return results_written(data_dir)


def flow_from_environment(app: App | Aggregate[Any], spec: str) -> Any:
    """The flow `cqrsflow run SPEC` would build for `app` (which `spec` names, as the
    data directory records it), configured by CQRSFLOW_* variables."""
    try:
        commands = os.environ["CQRSFLOW_COMMANDS"]
        data_dir = Path(os.environ["CQRSFLOW_DATA"])
    except KeyError as err:
        raise SystemExit(
            f"set {err.args[0]}: CQRSFLOW_COMMANDS (a file, a directory or -) and "
            "CQRSFLOW_DATA (the data directory) say what to run and where"
        ) from None
    partitions = log_partitions(data_dir) or int(os.environ.get("CQRSFLOW_PARTITIONS", "4"))
    fmt = os.environ.get("CQRSFLOW_FORMAT")
    if fmt not in (None, "jsonl", "msgpack"):
        raise SystemExit(f"CQRSFLOW_FORMAT={fmt}: expected jsonl or msgpack")
    log = dataclasses.replace(
        FLOW_LOG, partitions=partitions, fsync=Fsync(os.environ.get("CQRSFLOW_FSYNC", "always"))
    )
    options = RunOptions(commands, fmt, FlowConfig(data_dir, log=log))  # type: ignore[arg-type]
    claim(data_dir, as_app(app), spec)
    prepare(data_dir, commands)
    return _flow(app, options)
