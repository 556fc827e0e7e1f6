"""`cqrsflow bench`: run a suite, all of them, or compare two reports (see `flows.bench`)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from flows._progress import reporting
from flows.bench import (
    SUITES,
    BenchUsageError,
    SuiteUnavailable,
    bench_all,
    compare,
    parse_threshold,
    render,
    render_all,
    render_comparison,
    run_suite,
    to_json,
    wide,
    write_markdown,
)
from flows.cli._common import EXIT_FAILURE, Subparsers, Terminal, UsageError


def add_parser(sub: Subparsers) -> None:
    """`cqrsflow bench SUITE|all|compare ...`, a sub-command per registered suite."""
    bench = sub.add_parser(
        "bench",
        help="measure throughput and latency against baselines",
        description="Measure cqrsflow against baselines run in the same process. Every figure "
        "is a median of several runs; ratios compare with the baseline measured alongside.",
    )
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")

    def common(p: Any, scale: bool = True) -> None:
        if scale:
            p.add_argument(
                "--scale",
                choices=["small", "medium", "large"],
                default="medium",
                help="workload size: small finishes in about a minute (default medium)",
            )
        p.add_argument(
            "--json",
            nargs="?",
            const="-",
            metavar="PATH",
            help="write every figure as JSON to PATH (to stdout, instead of tables, without PATH)",
        )
        p.add_argument("--workdir", type=Path, help="where to write scratch logs (default: temp)")

    every = suites.add_parser(
        "all",
        help="every suite: throughput, latency and resource tables, DESIGN.md's targets",
        description="Run every suite (not soak) and print three tables, each figure beside "
        "its baseline and target, and DESIGN.md's performance targets, met or not. Exits 1 "
        "if a suite failed (the others' figures are still reported).",
    )
    common(every)
    every.add_argument("--markdown", type=Path, metavar="PATH", help="write a markdown report")
    for suite in SUITES.values():
        p = suites.add_parser(suite.name, help=suite.help, description=suite.help)
        common(p, scale=suite.sized_by != "minutes")
        if suite.sized_by == "minutes":
            p.add_argument("--minutes", type=float, default=5.0, help="how long (default 5)")
    comparing = suites.add_parser(
        "compare",
        help="list the figures that got worse between two JSON reports",
        description="Compare two reports written by --json (bench all or one suite). A "
        "figure with a baseline is judged on its ratio to it, since absolute figures drift "
        "between machines. Exits 1 when a figure got worse by more than the threshold.",
    )
    comparing.add_argument("old", type=Path, metavar="OLD.json")
    comparing.add_argument("new", type=Path, metavar="NEW.json")
    comparing.add_argument(
        "--threshold", default="10%", help="how much worse counts: 10%% or 0.1 (default 10%%)"
    )
    bench.set_defaults(handler=command)


def _bench(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """Run what `cqrsflow bench` was asked; the exit code (1: a regression, a failure).

    Raises `BenchUsageError` for bad input (to `compare`, say), and `SuiteUnavailable`
    or `PeerMissing` for a single suite that cannot run here."""
    if args.suite == "compare":
        result = compare(args.old, args.new, parse_threshold(args.threshold))
        render_comparison(result, wide(console))
        return 1 if result.regressions else 0
    if getattr(args, "minutes", 1.0) <= 0:
        raise BenchUsageError(f"--minutes {args.minutes}: expected a positive number")
    to_stdout = args.json == "-"
    single = not errors.is_terminal and args.suite != "all"  # a long `all` says where it is
    with (
        reporting(errors, quiet=to_stdout or single) as progress,
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="cqrsflow-bench-") as tmp,
    ):
        if args.suite == "all":
            report = bench_all(args.scale, Path(tmp), progress)
        else:
            minutes = getattr(args, "minutes", 5.0)
            scale = getattr(args, "scale", "medium")
            figures = run_suite(args.suite, scale, Path(tmp), progress, minutes)
    if args.suite != "all":
        text = to_json(figures)
        if args.json and not to_stdout:
            Path(args.json).write_text(text + "\n")
        if to_stdout:
            print(text)
        else:
            title = f"cqrsflow bench {args.suite} ({getattr(args, 'scale', '')})"
            render(title, figures, wide(console))
        return 0
    if args.json:
        text = json.dumps(report.to_json(), indent=2)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.markdown:
        write_markdown(report, args.markdown)
    if not to_stdout:
        render_all(report, console)
    if report.failed:
        errors.print(
            "cqrsflow: bench all: "
            + "; ".join(f"{s} failed ({report.skipped[s]})" for s in report.failed),
            markup=False,
            highlight=False,
        )
        return 1
    return 0


def command(args: argparse.Namespace, term: Terminal) -> int:
    try:
        return _bench(args, term.out, term.err)
    except BenchUsageError as err:
        raise UsageError(str(err)) from None
    except SuiteUnavailable as err:
        term.err.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_FAILURE
