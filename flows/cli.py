"""The `cqrsflow` command line: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 ok; 1 a runtime failure, reported as one line; 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from store import DataDirError, StoreError

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
        description="Generate a bank workload, write it to an event log, and show the log: "
        "throughput, segments, one account's history and totals by event type.",
    )
    demo.add_argument("--data", type=Path, help="data directory (default: a new temporary one)")
    demo.add_argument(
        "--events", type=int, default=200_000, help="events to write (default 200,000)"
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

    bench = sub.add_parser(
        "bench",
        help="measure throughput and latency against baselines",
        description="Measure cqrsflow against baselines run in the same process. Every figure "
        "is a median of several runs; ratios compare with the baseline measured alongside.",
    )
    bench.add_argument("suite", choices=["write", "read"], help="what to measure")
    bench.add_argument(
        "--json", action="store_true", help="print one JSON object with every figure"
    )
    bench.add_argument(
        "--scale",
        choices=["small", "medium", "large"],
        default="medium",
        help="workload size: small finishes in about a minute (default medium)",
    )
    bench.add_argument("--workdir", type=Path, help="where to write scratch logs (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)  # never break a path or a message across lines
    errors = Console(stderr=True, soft_wrap=True)
    try:
        if args.command == "demo":
            return _demo(args, console)
        if args.command == "log":
            return _log(args, console)
        if args.command == "bench":
            return _bench(args, console, errors)
    except UsageError as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_USAGE
    except DataDirError as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_USAGE
    except StoreError as err:
        errors.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE  # pragma: no cover  (parser.error exits)


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


def _bench(args: argparse.Namespace, console: Console, errors: Console) -> int:
    from flows._bench import render, to_json
    from flows._bench_store import SCALES, bench_read, bench_write

    scale = SCALES[args.scale]
    quiet = args.json or not errors.is_terminal

    def progress(message: str) -> None:
        if not quiet:
            errors.print(f"[dim]… {message}[/]")

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="cqrsflow-bench-") as tmp:
        work = Path(tmp)
        suite = bench_write if args.suite == "write" else bench_read
        figures = suite(scale, work, progress)
    if args.json:
        print(to_json(figures))
    else:
        render(f"cqrsflow bench {args.suite} ({args.scale})", figures, console)
    return EXIT_OK


def _demo(args: argparse.Namespace, console: Console) -> int:
    from flows._demo import run_demo

    if args.events < 1:
        raise UsageError(f"--events {args.events}: expected a positive number")
    if args.data is None:
        with tempfile.TemporaryDirectory(prefix="cqrsflow-demo-") as tmp:
            return run_demo(Path(tmp), args.events, console)
    return run_demo(args.data, args.events, console)


if __name__ == "__main__":
    sys.exit(main())
