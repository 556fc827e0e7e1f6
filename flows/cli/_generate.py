"""`cqrsflow generate`: a reproducible workload of commands, as JSON lines or msgpack."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from flows._workload import WORKLOADS
from flows.cli._common import EXIT_OK, Subparsers, Terminal, UsageError


def add_parser(sub: Subparsers) -> None:
    gen = sub.add_parser(
        "generate",
        help="write a reproducible workload of commands",
        description="Write a realistic, reproducible command workload for an example "
        "application: for the bank, accounts opened on first use, deposits and withdrawals; "
        "for the shop, products, orders of several lines, their reservations, payments, "
        "shipments and cancellations. Some commands must be rejected, and at --invalid-rate "
        "some records are malformed.",
    )
    gen.add_argument("example", choices=sorted(WORKLOADS), help="the example application")
    gen.add_argument("--commands", type=int, required=True, help="how many commands")
    gen.add_argument(
        "--aggregates",
        "--accounts",
        "--products",
        dest="aggregates",
        type=int,
        required=True,
        help="how many distinct accounts (bank) or products (shop)",
    )
    gen.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    gen.add_argument(
        "--invalid-rate", type=float, default=0.0, help="share of malformed records, 0 to 1"
    )
    gen.add_argument("--format", choices=["jsonl", "msgpack"], default="jsonl")
    gen.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    gen.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    from flows._progress import progress_bar
    from flows._workload import encoder

    if args.commands < 0 or args.aggregates < 1:
        raise UsageError(
            f"--commands {args.commands} --aggregates {args.aggregates}: expected commands "
            ">= 0 and aggregates >= 1"
        )
    if not 0 <= args.invalid_rate <= 1:
        raise UsageError(f"--invalid-rate {args.invalid_rate}: expected a share from 0 to 1")
    encode = encoder(args.format)
    records = itertools.islice(
        WORKLOADS[args.example](
            args.commands, args.aggregates, seed=args.seed, invalid_rate=args.invalid_rate
        ),
        args.commands,
    )
    out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
    try:
        with progress_bar(term.err, "commands") as bar:
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
