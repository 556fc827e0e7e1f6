"""`cqrsflow bench commands`: the command flow end to end against bare bytewax."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from flows._domain import Rejected
from flows._flow import FLOW_LOG, FlowConfig
from flows._parse import Invalid, Parser
from flows._progress import Report
from flows._results import Result
from flows._workload import bank_commands, encoder
from flows.bank import ACCOUNT
from flows.bench._harness import Figure, interleaved, rate, timed
from flows.bench._store import Scale


def _records(scale: Scale) -> list[bytes]:
    encode = msgspec.json.Encoder().encode
    commands = scale.write_events
    return [encode(r) for r in bank_commands(commands, max(commands // 20, 1))]


# bytewax is imported where a flow is built, so that listing the suites (`cqrsflow bench
# --help`, every CLI start) does not load it.


def _pass_through(records: list[bytes]) -> Any:
    """The baseline: the same batches through bytewax, untouched, into a sink."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink

    from connectors import GeneratorSource

    flow = Dataflow("bare")
    raw = op.input("commands", flow, GeneratorSource(records))
    seen: list[Any] = []
    op.output("out", op.map("identity", raw, lambda b: b), TestingSink(seen))
    return flow


def _clocked(arrived: dict[int, float]) -> Any:
    """A sink that notes when each result arrives, by the number in its command id."""
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class Part(StatelessSinkPartition[list[Result]]):
        def write_batch(self, items: list[list[Result]]) -> None:
            now = time.perf_counter()
            for results in items:
                for r in results:
                    if r.command_id is not None:
                        arrived[int(r.command_id.rsplit("-", 1)[1])] = now

    class Clocked(DynamicSink[list[Result]]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    return Clocked()


def _latency(records: list[bytes], rate: float, workdir: Path) -> list[float]:
    """Command -> result latencies (ms) at a steady `rate`: command k arrives at
    start + k/rate, so falling behind shows up as latency, as it would for a client."""
    from bytewax.testing import TestingSink, run_main

    from connectors import GeneratorSource
    from flows._flow import command_flow

    arrived: dict[int, float] = {}
    source = GeneratorSource(records, rate=rate)
    flow = command_flow(
        ACCOUNT,
        source,
        _clocked(arrived),
        TestingSink([]),
        FlowConfig(Path(tempfile.mkdtemp(dir=workdir)), log=replace(FLOW_LOG, partitions=1)),
    )
    run_main(flow)  # type: ignore[no-untyped-call]
    started = source.started
    assert started is not None
    return [(t - (started + k / rate)) * 1000 for k, t in arrived.items()]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _peak_rss(commands: int, accounts: int, workdir: Path) -> tuple[float, float]:
    """Peak resident memory (MB) of `cqrsflow run` over a generated workload, and of
    the view follower it starts (DuckDB, a process of its own), each on its own:
    the kernel's high-water mark (VmHWM), read until each process ends."""
    path = workdir / f"rss-{commands}.jsonl"
    encode = encoder("jsonl")
    with open(path, "wb") as f:
        f.writelines(map(encode, bank_commands(commands, accounts)))
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "bank", "--commands", str(path),
         "--data", str(workdir / f"rss-{commands}"), "--metrics-port", "-1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    peaks: dict[int, float] = {}
    while run.poll() is None:
        for pid in (run.pid, *_children(run.pid)):
            peaks[pid] = max(peaks.get(pid, 0.0), _high_water_mb(pid))
        time.sleep(0.2)
    assert run.stderr is not None
    errors = run.stderr.read()
    run.stderr.close()
    if run.returncode:
        raise RuntimeError(errors.decode(errors="replace")[-2000:])
    follower = max((mb for pid, mb in peaks.items() if pid != run.pid), default=0.0)
    return peaks.get(run.pid, 0.0), follower


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _high_water_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # ended between two reads
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_commands(scale: Scale, workdir: Path, progress: Report) -> list[Figure]:
    from bytewax.testing import TestingSink, run_main

    from connectors import GeneratorSource
    from flows._flow import command_flow, tune_gc

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
            FlowConfig(data, log=replace(FLOW_LOG, partitions=1)),
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
    progress("the same commands parsed and decided in a bare loop")
    floor = [_decide_loop(records) for _ in range(scale.runs)]
    steady = 50_000
    progress(f"latency at a steady {steady:,} commands/s")
    latencies = _latency(records, steady, workdir)
    progress(f"peak memory over {scale.rss_commands:,} commands")
    rss, follower = _peak_rss(scale.rss_commands, scale.rss_commands // 10, workdir)
    lat = [
        Figure(
            f"command -> result latency at {steady:,}/s, {name}",
            "ms",
            (_percentile(latencies, q),),
            "lower",
            target=target,
        )
        for name, q, target in (
            ("p50", 0.5, 1.5),
            ("p95", 0.95, None),
            ("p99", 0.99, 10.0),
            ("p99.9", 0.999, 25.0),
        )
    ]
    return [
        *lat,
        Figure(
            f"peak RSS, {scale.rss_commands:,} commands over {scale.rss_commands // 10:,} "
            "accounts (cqrsflow run, 4 partitions)",
            "MB",
            (rss,),
            "lower",
            target=500.0,
        ),
        Figure(
            "peak RSS of the view follower beside it (DuckDB, its own process)",
            "MB",
            (follower,),
            "lower",
        ),
        Figure(
            "commands end to end (parse, decide, durable append, result), 1 worker",
            "commands/s",
            tuple(mine),
            "higher",
            baseline_name="the user's code alone: parse + decide + evolve in a bare loop "
            "(no flow, no log, no results)",
            baseline_runs=tuple(floor),
            ratio_target=0.5,
        ),
        Figure(
            "commands end to end, against bare bytewax",
            "commands/s",
            tuple(mine),
            "higher",
            baseline_name="bare bytewax pass-through of the same batches",
            baseline_runs=tuple(theirs),
        ),
    ]


def _decide_loop(records: list[bytes]) -> float:
    """Commands/s of the least any flow must do per command: msgspec's decode and the
    aggregate's decide and evolve, in a plain loop over a dict of states. What the
    flow adds on top (batching, the log, durability, results) is the ratio to this."""
    parser = Parser(ACCOUNT)
    decide, evolve, initial = ACCOUNT.decide, ACCOUNT.evolve, ACCOUNT.initial
    states: dict[str, Any] = {}

    def loop() -> None:
        for raw in records:
            command = parser.parse(raw)
            if isinstance(command, Invalid):
                continue
            state = states.get(command.aggregate_id, initial)
            decision = decide(command.payload, state)
            if not isinstance(decision, Rejected):
                for event in decision:
                    state = evolve(state, event)
                states[command.aggregate_id] = state

    return rate(len(records), timed(loop))
