"""The command dataflow, and the only module that speaks bytewax.

    source (RawBatch) ─► parse ─┬─► invalid results ─────────────┐
                                ├─► dead letters ─► dead-letter  │
                                └─► per shard ─► decide ─► results ─► results sink

Every item is a batch: a source emits up to a thousand records at once, parsing
splits them per shard, and the decide step (`flows._flow._shard.Shard`) appends one Arrow
batch per shard batch. bytewax's own upstream has stopped releasing, so everything it
touches is here, behind `command_flow` and `run_flow`.
"""

from __future__ import annotations

import gc
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from connectors import RawBatch
from flows._app import App, as_app
from flows._domain import Aggregate
from flows._flow._backpressure import Backpressure
from flows._flow._config import FlowConfig
from flows._flow._metrics import BATCH_SIZE, LATENCY, count_commands, observe_many
from flows._flow._shard import Shard
from flows._load import check_log_readable
from flows._parse import Command, Invalid, Parser
from flows._results import DeadLetter, Result, dead_letter
from store import ArrowLog, DataDir, Fsync, Journal, SnapshotStore, partition_of


@dataclass(frozen=True, slots=True)
class Parsed:
    by_shard: dict[int, list[Command]]
    invalid: list[Result]
    dead: list[DeadLetter]
    received: float


@dataclass(frozen=True, slots=True)
class ShardBatch:
    shard: int
    commands: list[Command]
    received: float  # time.monotonic() when parsed: where the latency metric starts


def _parse(parser: Parser, partitions: int) -> Callable[[RawBatch], Parsed]:
    def parse(batch: RawBatch) -> Parsed:
        by_shard: dict[int, list[Command]] = {}
        invalid: list[Result] = []
        dead: list[DeadLetter] = []
        for raw, offset in zip(batch.records, batch.offsets, strict=True):
            found = parser.parse(raw, batch.format)
            if isinstance(found, Invalid):
                invalid.append(
                    Result(
                        found.command_id,
                        "invalid",
                        found.aggregate_id,
                        reason=found.reason,
                        aggregate_type=found.aggregate_type,
                    )
                )
                dead.append(
                    dead_letter(batch.source, offset, found.reason, raw, found.aggregate_type)
                )
            else:
                shard = partition_of(found.aggregate_id, partitions)
                by_shard.setdefault(shard, []).append(found)
        if invalid:
            count_commands(["unknown"] * len(invalid), ["invalid"] * len(invalid))
        return Parsed(by_shard, invalid, dead, time.monotonic())

    return parse


_PAYLOAD = operator.itemgetter(2)  # Command.payload
_STATUS = operator.attrgetter("status")


def _clock() -> int:
    return time.time_ns() // 1000


class _ShardLogic(StatefulBatchLogic[ShardBatch, list[Result], int]):
    """bytewax's per-key state: one `Shard`, opened on the worker that owns the key.

    Its snapshot is the partition's watermark, which bytewax stores together with the
    sources' offsets: on resume the shard answers commands found past it from the log.
    """

    def __init__(self, app: App, config: FlowConfig, resume: int | None):
        self._app = app
        self._config = config
        self._resume = resume
        self._shard: Shard | None = None
        self._brake = Backpressure(config.data_dir, config.max_view_lag)

    def _open(self, partition: int) -> Shard:
        config = self._config
        data = DataDir(config.data_dir)
        log = ArrowLog.open(data.root, self._app.layout(), config.log, only=partition)
        snapshots = SnapshotStore(data.snapshots)
        decisions = Journal(data.decisions(partition), sync=config.log.fsync is Fsync.ALWAYS)
        shard = Shard(
            self._app, log, partition, snapshots, config.shard, _clock, decisions=decisions
        )
        if self._resume is not None:
            shard.replay_from(self._resume)
        elif config.resuming and shard.watermark > 0:
            shard.replay_from(0)
        shard.warm()
        return shard

    def on_batch(self, values: list[ShardBatch]) -> tuple[list[list[Result]], bool]:
        if self._shard is None:
            self._shard = self._open(values[0].shard)
        self._brake.wait(self._shard.partition, self._shard.watermark)
        commands = [c for v in values for c in v.commands]
        results = self._shard.handle(commands)
        observe_many(LATENCY, time.monotonic() - min(v.received for v in values), len(commands))
        BATCH_SIZE.set(len(commands))
        count_commands(map(type, map(_PAYLOAD, commands)), map(_STATUS, results))
        return [results], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[list[Result]], bool]:
        """The input ended: close the shard, so that its partition is free for the next
        flow of this process (a notebook or a test runs several)."""
        if self._shard is not None:
            self._resume = self._shard.watermark
            self._shard.close()
            self._shard = None
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> int:
        if self._shard is None:
            return self._resume or 0
        return self._shard.watermark


def command_flow(
    app: App | Aggregate[Any],
    source: Source[RawBatch],
    results: Sink[list[Result]],
    dead_letters: Sink[list[DeadLetter]],
    config: FlowConfig,
) -> Dataflow:
    """The command dataflow of an application (or of one aggregate type): sources and
    sinks are parameters, so tests pass their own.

    Raises AppError now, before any worker starts, if the log in the data directory
    holds events the application's classes cannot read."""
    app = as_app(app)
    check_log_readable(config.data_dir, app)
    parser = Parser(app)
    flow = Dataflow("cqrsflow")
    raw = op.input("commands", flow, source)
    parsed = op.map("parse", raw, _parse(parser, config.partitions))
    invalid = op.filter("invalid", op.map("invalid_results", parsed, lambda p: p.invalid), bool)
    dead = op.filter("dead", op.map("dead_letter_records", parsed, lambda p: p.dead), bool)
    keyed = op.flat_map(
        "shard",
        parsed,
        lambda p: [(str(s), ShardBatch(s, cmds, p.received)) for s, cmds in p.by_shard.items()],
    )
    decided = op.stateful_batch("decide", keyed, lambda resume: _ShardLogic(app, config, resume))
    accepted = op.map("results_of_shards", decided, lambda item: item[1])
    op.output("results", op.merge("all_results", accepted, invalid), results)
    op.output("dead_letters", dead, dead_letters)
    return flow


def run_flow(
    flow: Dataflow,
    recovery_dir: Path,
    *,
    workers: int = 1,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    epoch: timedelta = timedelta(milliseconds=200),
) -> None:
    """Run a flow to the end of its input, resuming where the last run stopped."""
    from bytewax._bytewax import cli_main
    from bytewax.recovery import RecoveryConfig

    init_recovery(recovery_dir)
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=workers,
        process_id=process_id,
        addresses=addresses,
        epoch_interval=epoch,
        recovery_config=RecoveryConfig(recovery_dir),  # type: ignore[no-untyped-call]
    )


def init_recovery(recovery_dir: Path) -> None:
    """Create bytewax's recovery store once (before any process of a cluster starts)."""
    from bytewax.recovery import init_db_dir

    if not recovery_dir.exists():
        tmp = recovery_dir.with_name(recovery_dir.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        init_db_dir(tmp, 1)  # type: ignore[no-untyped-call]
        tmp.rename(recovery_dir)


def tune_gc() -> None:
    """Set the process's garbage collector up for a flow.

    The aggregate cache keeps hundreds of thousands of objects alive, and the cyclic
    collector would rescan them all every few batches: a third of the time spent
    deciding. Freeze what exists now and collect the young generation less often.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
