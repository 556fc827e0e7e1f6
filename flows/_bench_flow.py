"""`cqrsflow bench commands`: the command flow end to end against bare bytewax."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from connectors import GeneratorSource
from flows._bench import Figure, interleaved, rate, timed
from flows._bench_store import Scale
from flows._dataflow import FlowConfig, command_flow, tune_gc
from flows._generate import bank_commands
from flows.bank import ACCOUNT


def _records(scale: Scale) -> list[bytes]:
    encode = msgspec.json.Encoder().encode
    commands = scale.write_events
    return [encode(r) for r in bank_commands(commands, max(commands // 20, 1))]


def _pass_through(records: list[bytes]) -> Dataflow:
    """The baseline: the same batches through bytewax, untouched, into a sink."""
    flow = Dataflow("bare")
    raw = op.input("commands", flow, GeneratorSource(records))
    seen: list[Any] = []
    op.output("out", op.map("identity", raw, lambda b: b), TestingSink(seen))
    return flow


def bench_commands(scale: Scale, workdir: Path, progress: Callable[[str], None]) -> list[Figure]:
    records = _records(scale)

    def ours() -> float:
        data = Path(tempfile.mkdtemp(dir=workdir))
        results: list[Any] = []
        dead: list[Any] = []
        flow = command_flow(
            ACCOUNT,
            GeneratorSource(records),
            TestingSink(results),
            TestingSink(dead),
            FlowConfig(data, partitions=1),
        )
        seconds = timed(lambda: run_main(flow))  # type: ignore[no-untyped-call]
        answered = sum(len(r) for r in results)
        assert answered == len(records), (answered, len(records))
        return rate(len(records), seconds)

    def bare() -> float:
        flow = _pass_through(records)
        return rate(len(records), timed(lambda: run_main(flow)))  # type: ignore[no-untyped-call]

    progress(f"{len(records):,} commands end to end vs bare bytewax")
    tune_gc()
    mine, theirs = interleaved(scale.runs, ours, bare)
    return [
        Figure(
            "commands end to end (parse, decide, durable append, result), 1 worker",
            "commands/s",
            tuple(mine),
            "higher",
            target=300_000,
            baseline_name="bare bytewax pass-through of the same batches",
            baseline_runs=tuple(theirs),
        )
    ]
