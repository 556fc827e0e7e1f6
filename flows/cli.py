"""The `cqrsflow` command line: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 ok; 1 a runtime failure, reported as one line; 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from queries import QueryError, QueryRefused
from store import DataDirError, Fsync, StoreError, check_writable, log_partitions

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or bad input: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cqrsflow",
        description="Event sourcing as a stream-processing pipeline: commands in, events "
        "into a partitioned Arrow log, SQL views out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    gen = sub.add_parser(
        "generate",
        help="write a reproducible workload of commands",
        description="Write a realistic, reproducible command workload: accounts opened on "
        "first use, deposits and withdrawals, some commands that must be rejected, and at "
        "--invalid-rate some malformed records.",
    )
    gen.add_argument("domain", choices=DOMAINS, help="the example domain")
    gen.add_argument("--commands", type=int, required=True, help="how many commands")
    gen.add_argument("--accounts", type=int, required=True, help="how many distinct accounts")
    gen.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    gen.add_argument(
        "--invalid-rate", type=float, default=0.0, help="share of malformed records, 0 to 1"
    )
    gen.add_argument("--format", choices=["jsonl", "msgpack"], default="jsonl")
    gen.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")

    run = sub.add_parser(
        "run",
        help="run a domain's command flow over a file, a directory or stdin",
        description="Decide every command, append the events to the log in DIR, and write a "
        "result per command to DIR/results (invalid records also to DIR/dead-letter). Run "
        "again on the same input after a crash: it resumes, and duplicates nothing.",
    )
    run.add_argument("domain", choices=DOMAINS, help="the domain whose commands these are")
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
    _endpoint_flags(run, 9464)
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
    query.add_argument("--domain", choices=DOMAINS, default="bank", help="default: bank")

    serve = sub.add_parser(
        "serve",
        help="keep the views current and answer SQL over Arrow Flight",
        description="Follow the log into the views and answer queries from other processes "
        "(`cqrsflow query --connect`, notebooks) over Arrow Flight. Binds to loopback unless "
        "--host says otherwise; with --token (or $CQRSFLOW_TOKEN) every request must carry it.",
    )
    serve.add_argument("--data", type=Path, required=True, help="the data directory")
    serve.add_argument("--port", type=int, default=8815, help="default 8815 (0: any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    serve.add_argument("--token", help="require this token (default: $CQRSFLOW_TOKEN)")
    serve.add_argument("--domain", choices=DOMAINS, default="bank", help="default: bank")
    serve.add_argument(
        "--query-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="interrupt a query that runs longer, and tell its client so (default 30)",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="share results with other servers of the same log through Redis "
        "(redis://HOST:PORT/DB; one database per log)",
    )
    serve.add_argument(
        "--cache-policy",
        choices=["lru", "lfu", "arc"],
        default="arc",
        help="eviction policy of the result and hot-row caches (default: arc)",
    )
    serve.add_argument(
        "--warm-queries",
        type=int,
        default=0,
        metavar="N",
        help="on start, re-run the N most frequent query shapes of earlier runs "
        "(DIR/query-shapes.json), for at most 5 s (default 0: off)",
    )
    _endpoint_flags(serve, 9465)

    proj = sub.add_parser(
        "projections",
        help="list, rebuild or follow the materialized views",
        description="The domain's materialized views in DIR/projections.duckdb: list them "
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
        p.add_argument("--domain", choices=DOMAINS, default="bank", help="default: bank")
    proj_follow.add_argument(
        "--max-events",
        type=int,
        default=1_000_000,
        help="most events applied in one transaction (default 1,000,000)",
    )

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
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    tail.add_argument("-n", type=int, default=10, help="how many of the latest events (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")

    from flows._bench_all import add_bench_parser

    add_bench_parser(sub)  # bench SUITE|all|compare, with the suites it has registered

    top = sub.add_parser(
        "top",
        help="a live dashboard of a running process's metrics",
        description="Scrape a running `cqrsflow run` (port 9464) or `serve` (port 9465) every "
        "--interval and show throughput, outcomes, latency quantiles, caches, view lag, the "
        "planner's choices and the log on disk; a crossed alert threshold shows red. Ctrl-C "
        "ends it.",
    )
    top.add_argument("--url", default="http://127.0.0.1:9464/metrics", help="default: %(default)s")
    top.add_argument(
        "--interval", type=float, default=1.0, help="seconds between scrapes (default 1)"
    )
    top.add_argument("--lag-alert", type=float, default=5.0, metavar="SECONDS", help="default 5")
    top.add_argument("--p99-alert", type=float, default=20.0, metavar="MS", help="default 20")
    top.add_argument(
        "--error-rate-alert",
        type=float,
        default=0.05,
        metavar="RATIO",
        help="(rejected + invalid) / all commands (default 0.05)",
    )
    top.add_argument(
        "--disk-alert", type=float, default=10 * 2**30, metavar="BYTES", help="default 10 GiB"
    )
    top.add_argument(
        "--once", action="store_true", help="print the dashboard once (two scrapes) and exit"
    )
    return parser


def _endpoint_flags(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=port,
        help=f"serve /metrics, /healthz and /readyz on this port (default {port}; 0: any "
        "free port; -1: none)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)"
    )
    parser.add_argument(
        "--ready-lag",
        type=float,
        default=30.0,
        help="/readyz fails while a view is more than this many seconds behind (default 30)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)  # never break a path or a message across lines
    errors = Console(stderr=True, soft_wrap=True)
    try:
        if args.command == "demo":
            return _demo(args, console)
        if args.command == "generate":
            return _generate(args, errors)
        if args.command == "run":
            return _run(args, argv, console)
        if args.command == "log":
            return _log(args, console)
        if args.command == "projections":
            return _projections(args, console)
        if args.command == "query":
            return _query(args, console)
        if args.command == "serve":
            return _serve(args, console)
        if args.command == "bench":
            return _bench(args, console, errors)
        if args.command == "top":
            return _top(args, console, errors)
    except UsageError as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_USAGE
    except DataDirError as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_USAGE
    except QueryRefused as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_USAGE
    except (StoreError, QueryError, ConnectionError, PermissionError) as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a failure inside the dataflow arrives wrapped by bytewax
        cause = _root_cause(err)
        if cause is None:
            raise
        errors.print(f"cqrsflow: {cause}", markup=False, highlight=False)
        return EXIT_FAILURE
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE  # pragma: no cover  (parser.error exits)


def _generate(args: argparse.Namespace, errors: Console) -> int:
    from flows._generate import bank_commands, encoder
    from flows._progress import progress_bar

    if args.commands < 0 or args.accounts < 1:
        raise UsageError("--commands must be >= 0 and --accounts >= 1")
    if not 0 <= args.invalid_rate <= 1:
        raise UsageError(f"--invalid-rate {args.invalid_rate}: expected a share from 0 to 1")
    encode = encoder(args.format)
    records = bank_commands(
        args.commands, args.accounts, seed=args.seed, invalid_rate=args.invalid_rate
    )
    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
    try:
        with progress_bar(errors, "commands") as bar:
            task = bar.add_task("generating", total=args.commands)
            chunk: list[bytes] = []
            for record in records:
                chunk.append(encode(record))
                if len(chunk) == 10_000:
                    out.write(b"".join(chunk))
                    bar.advance(task, len(chunk))
                    chunk = []
            out.write(b"".join(chunk))
    finally:
        if args.output:
            out.close()
        else:
            out.flush()
    return EXIT_OK


def _run(args: argparse.Namespace, argv: Sequence[str] | None, console: Console) -> int:
    from flows._http import start_endpoints
    from flows._observe import enable_bytewax_metrics, run_readiness, run_registry
    from flows._progress import answered_progress, count_records
    from flows._projcmd import start_follower, stop_follower
    from flows._runcmd import RunOptions, prepare, recovery_dir, run_process, summarize
    from flows._shard import ShardConfig

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
    options = RunOptions(
        commands=args.commands,
        data_dir=args.data,
        format=args.format,
        workers=args.workers,
        processes=args.processes,
        partitions=existing or args.partitions or 4,
        fsync=Fsync(args.fsync),
        process_id=args.process_id,
        addresses=args.addresses.split(";") if args.addresses else None,
        max_view_lag=args.max_view_lag,
        shard=ShardConfig(
            cache_size=args.cache_size, cache_policy=args.cache_policy, warm=args.warm
        ),
    )
    if args.process_id is not None:  # a child of a cluster run
        run_process(DOMAINS[args.domain](), options)
        return EXIT_OK
    check_writable(args.data)  # another writer: say so now, not from inside a worker
    started = time.perf_counter()
    # A run of an input whose checkpoints exist resumes it; a shard may then find events
    # of that input in the log from before its first checkpoint (see FlowConfig).
    resuming = args.commands != "-" and recovery_dir(args.data, args.commands).exists()
    options = dataclasses.replace(options, resuming=resuming)
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
            ready, args.metrics_host, args.metrics_port, registry, _say(console)
        )
    # One follower maintains the views however many processes write the log.
    follower = start_follower(args.data, args.domain)
    total = None if args.commands == "-" else count_records(Path(args.commands))
    try:
        with answered_progress(console, registry, total):
            _run_flow(args, argv, options, child_env)
        seconds = time.perf_counter() - started
    except _ClusterFailed:
        return EXIT_FAILURE
    finally:
        views_code = stop_follower(follower)
        if endpoints is not None:
            endpoints.close()
    summarize(args.data, before, seconds, console)
    if views_code:
        console.print(f"the views were not brought up to date (exit code {views_code})")
        return EXIT_FAILURE
    return EXIT_OK


class _ClusterFailed(Exception):
    """A process of a cluster run failed (it said why on its own stderr)."""


def _run_flow(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    options: Any,
    child_env: dict[str, str],
) -> None:
    from flows._runcmd import run_cluster, run_process

    if args.processes > 1:
        argv = list(argv if argv is not None else sys.argv[1:])
        if run_cluster(argv, args.processes, child_env):
            raise _ClusterFailed
    else:
        run_process(DOMAINS[args.domain](), options)


def _say(console: Console) -> Callable[[str], None]:
    return lambda message: console.print(message, style="dim", highlight=False)


def _bank() -> Any:
    from flows.bank import ACCOUNT

    return ACCOUNT


DOMAINS = {"bank": _bank}


def _root_cause(err: BaseException) -> BaseException | None:
    """The error to report in one line: the outermost StoreError, ConnectorError,
    QueryError or OSError of the chain (bytewax wraps what a step raised, and the store
    wraps the bare OSError it translated: the outer one names the file and the fix);
    None if the chain holds none, a bug to show with its traceback."""
    connectors = sys.modules.get("connectors._errors")  # none of its errors unless loaded
    reported: tuple[type[BaseException], ...] = (StoreError, QueryError, OSError)
    if connectors is not None:
        reported += (connectors.ConnectorError,)
    seen: set[int] = set()
    found: BaseException | None = err
    while found is not None and id(found) not in seen:
        if isinstance(found, reported):
            return found
        seen.add(id(found))
        found = found.__cause__
    return None


def _require_log(data: Path) -> None:
    if not (data / "log" / "manifest.json").exists():
        raise UsageError(
            f"{data}: no event log here (expected {data / 'log' / 'manifest.json'}); "
            "pass the --data directory a flow wrote to"
        )


def _log(args: argparse.Namespace, console: Console) -> int:
    from flows._logcmd import log_stats, log_tail, log_verify

    _require_log(args.data)
    if args.log_command == "stats":
        return log_stats(args.data, console, as_json=args.json)
    if args.log_command == "verify":
        return log_verify(args.data, console)
    return log_tail(args.data, console, last=args.n, follow=args.follow)


def _query(args: argparse.Namespace, console: Console) -> int:
    from flows._querycmd import parse_after, print_explain, print_table, run_query

    if args.data is not None:
        _require_log(args.data)
    try:
        after = parse_after(args.after)
    except ValueError as err:
        raise UsageError(str(err)) from None
    table = run_query(
        args.sql,
        data=args.data,
        connect=args.connect,
        token=args.token or os.environ.get("CQRSFLOW_TOKEN"),
        domain=args.domain,
        explain=args.explain,
        after=after,
        timeout=args.timeout,
    )
    if args.explain and args.format == "table":
        print_explain(table, console)
    else:
        print_table(table, args.format, console)
    return EXIT_OK


def _serve(args: argparse.Namespace, console: Console) -> int:
    from flows._querycmd import Caching, serve

    _require_log(args.data)
    token = args.token or os.environ.get("CQRSFLOW_TOKEN")
    endpoint = (args.metrics_host, args.metrics_port, args.ready_lag)
    if args.warm_queries < 0:
        raise UsageError(f"--warm-queries {args.warm_queries}: expected a count >= 0")
    if not args.query_timeout > 0:
        raise UsageError(f"--query-timeout {args.query_timeout}: expected seconds > 0")
    caching = Caching(args.redis, args.cache_policy, args.warm_queries)
    timeout = args.query_timeout
    server = (args.data, args.domain, args.host, args.port, token, console, endpoint)
    return serve(*server, caching, query_timeout=timeout)


def _projections(args: argparse.Namespace, console: Console) -> int:
    from flows._projcmd import projections_follow, projections_list, projections_rebuild

    if args.projections_command != "follow":
        _require_log(args.data)
    if args.projections_command == "list":
        return projections_list(args.data, args.domain, console)
    if args.projections_command == "rebuild":
        return projections_rebuild(args.data, args.domain, args.name, console)
    return projections_follow(args.data, args.domain, console, args.max_events)


def _bench(args: argparse.Namespace, console: Console, errors: Console) -> int:
    from flows._bench import BenchUsageError
    from flows._bench_all import SuiteUnavailable, bench_command
    from flows._bench_peer import PeerMissing

    try:
        return bench_command(args, console, errors)
    except BenchUsageError as err:
        raise UsageError(str(err)) from None
    except (SuiteUnavailable, PeerMissing) as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_FAILURE


def _top(args: argparse.Namespace, console: Console, errors: Console) -> int:
    from flows._top import Thresholds, run_top

    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval}: expected a positive number of seconds")
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url {args.url}: expected http://HOST:PORT/metrics")
    thresholds = Thresholds(args.lag_alert, args.p99_alert, args.error_rate_alert, args.disk_alert)
    return run_top(args.url, args.interval, thresholds, console, errors, once=args.once)


def _demo(args: argparse.Namespace, console: Console) -> int:
    from flows._demo import run_demo

    if args.commands < 1:
        raise UsageError(f"--commands {args.commands}: expected a positive number")
    if args.data is None:
        with tempfile.TemporaryDirectory(prefix="cqrsflow-demo-") as tmp:
            return run_demo(Path(tmp), args.commands, console, keep=False)
    if (args.data / "log").exists():
        raise UsageError(f"--data {args.data}: already holds a log; the demo needs a new directory")
    return run_demo(args.data, args.commands, console, keep=True)


if __name__ == "__main__":
    sys.exit(main())
