"""`cqrsflow run`: an application's command flow over a file, a directory or stdin, with its
endpoints, its progress and the follower process that keeps the views current."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from flows._progress import answered_progress, count_records
from flows.cli._common import (
    APP_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    Subparsers,
    Terminal,
    UsageError,
    endpoint_flags,
    say,
)
from flows.cli._http import start_endpoints
from flows.cli._observe import enable_bytewax_metrics, run_readiness, run_registry
from flows.cli._projections import start_follower, stop_follower
from store import DataDir, Fsync, LogReader, check_writable, log_partitions


def add_parser(sub: Subparsers) -> None:
    run = sub.add_parser(
        "run",
        help="run an application's command flow over a file, a directory or stdin",
        description="Decide every command, append the events to the log in DIR, and write a "
        "result per command to DIR/results (invalid records also to DIR/dead-letter). Run "
        "again on the same input after a crash: it resumes, and duplicates nothing.",
    )
    run.add_argument("app", metavar="APP", help=APP_HELP)
    run.add_argument("--commands", required=True, help="a .jsonl/.msgpack file, a directory, or -")
    run.add_argument("--data", type=Path, required=True, help="the data directory")
    run.add_argument("--format", choices=["jsonl", "msgpack"], help="default: from the file name")
    run.add_argument("--workers", type=int, default=1, help="worker threads per process")
    run.add_argument("--processes", type=int, default=1, help="processes (on this machine)")
    run.add_argument(
        "--partitions",
        type=int,
        help="log partitions of a new log (default 4); an existing log keeps its own",
    )
    run.add_argument("--fsync", choices=[f.value for f in Fsync], default="always")
    endpoint_flags(run, 9464)
    run.add_argument(
        "--max-view-lag",
        type=int,
        default=2_000_000,
        metavar="EVENTS",
        help="slow the intake while the views are more than this many events behind a "
        "partition of the log (default 2,000,000; 0: never)",
    )
    run.add_argument(
        "--cache-size",
        type=int,
        default=50_000,
        metavar="N",
        help="aggregate states each partition's shard keeps in memory (default 50,000)",
    )
    run.add_argument(
        "--cache-policy",
        choices=["lru", "lfu", "arc"],
        default="lru",
        help="which states the aggregate cache evicts first (default: lru)",
    )
    run.add_argument(
        "--warm",
        type=int,
        default=0,
        metavar="N",
        help="on start, load the N busiest aggregates of each partition's recent history "
        "into the cache, for at most 5 s (default 0: off)",
    )
    run.add_argument(
        "--bytewax-metrics",
        action="store_true",
        help="also serve bytewax's own metrics (per-step durations); turns on bytewax's web "
        "server, which listens on every interface, on a free port (one process only)",
    )
    run.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    run.add_argument("--addresses", help=argparse.SUPPRESS)
    run.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    from flows._flow import (
        FLOW_LOG,
        FlowConfig,
        RunOptions,
        ShardConfig,
        prepare,
        recovery_dir,
        run_process,
    )
    from flows._load import claim, load_app

    if args.commands != "-" and not Path(args.commands).exists():
        raise UsageError(f"--commands {args.commands}: no such file or directory")
    if args.warm < 0:
        raise UsageError(f"--warm {args.warm}: expected a count >= 0")
    for flag in ("workers", "processes", "partitions", "cache_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            name = flag.replace("_", "-")
            raise UsageError(f"--{name} {getattr(args, flag)}: expected at least 1")
    existing = log_partitions(args.data)
    if existing is not None and args.partitions not in (None, existing):
        raise UsageError(
            f"--partitions {args.partitions}: the log in {args.data} has {existing}, fixed when "
            "it was created; leave --partitions out"
        )
    log = dataclasses.replace(
        FLOW_LOG, partitions=existing or args.partitions or 4, fsync=Fsync(args.fsync)
    )
    shard = ShardConfig(cache_size=args.cache_size, cache_policy=args.cache_policy, warm=args.warm)
    options = RunOptions(
        commands=args.commands,
        format=args.format,
        flow=FlowConfig(args.data, log=log, shard=shard, max_view_lag=args.max_view_lag),
        workers=args.workers,
        processes=args.processes,
        process_id=args.process_id,
        addresses=args.addresses.split(";") if args.addresses else None,
    )
    app = load_app(args.app)
    if args.process_id is not None:  # a child of a cluster run
        run_process(app, options)
        return EXIT_OK
    check_writable(args.data)  # another writer: say so now, not from inside a worker
    # Another application's directory, or old events these classes cannot read: refused
    # before a worker starts, in one line.
    claim(args.data, app, args.app)
    started = time.perf_counter()
    # A run of an input whose checkpoints exist resumes it; a shard may then find events
    # of that input in the log from before its first checkpoint (see FlowConfig).
    resuming = args.commands != "-" and recovery_dir(args.data, args.commands).exists()
    options = dataclasses.replace(
        options, flow=dataclasses.replace(options.flow, resuming=resuming)
    )
    before = prepare(args.data, args.commands)
    registry, child_env = run_registry(args.data, args.processes)
    if args.bytewax_metrics:
        if args.processes > 1:
            raise UsageError("--bytewax-metrics: only with one process")
        enable_bytewax_metrics(registry, args.data)
    endpoints = None
    if args.metrics_port >= 0:
        ready = run_readiness(args.data, args.ready_lag)
        endpoints = start_endpoints(
            ready, args.metrics_host, args.metrics_port, registry, say(term.out)
        )
    # One follower maintains the views however many processes write the log.
    follower = start_follower(args.data, args.app)
    total = None if args.commands == "-" else count_records(Path(args.commands))
    try:
        with answered_progress(term.out, registry, total):
            _run_flow(app, args, term.argv, options, child_env)
        seconds = time.perf_counter() - started
    except _ClusterFailed:
        return EXIT_FAILURE
    finally:
        views_code = stop_follower(follower)
        if endpoints is not None:
            endpoints.close()
    summarize(args.data, before, seconds, term.out)
    if views_code:
        term.out.print(f"the views were not brought up to date (exit code {views_code})")
        return EXIT_FAILURE
    return EXIT_OK


class _ClusterFailed(Exception):
    """A process of a cluster run failed (it said why on its own stderr)."""


def _run_flow(
    app: Any,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    options: Any,
    child_env: dict[str, str],
) -> None:
    from flows._flow import run_cluster, run_process

    if args.processes > 1:
        argv = list(argv if argv is not None else sys.argv[1:])
        if run_cluster(argv, args.processes, child_env):
            raise _ClusterFailed
    else:
        run_process(app, options)


def summarize(data_dir: Path, before: dict[Path, int], seconds: float, console: Console) -> None:
    """What this run did (in `seconds`), read back from the results it wrote."""
    from flows._flow import count_statuses

    counts = count_statuses(data_dir, before)
    total = sum(counts.values())
    events = sum(LogReader.open(data_dir).watermarks().values())
    data = DataDir(data_dir)
    if not total:
        console.print(
            f"no new commands: this input was processed before (the run resumed where it "
            f"stopped, as recorded in {data.recovery}); the log holds {events:,} events",
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
        f"results in {data.results}, invalid records in {data.dead_letter}", highlight=False
    )
