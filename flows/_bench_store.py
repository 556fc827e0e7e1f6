"""`cqrsflow bench write|read`: the event log against raw pyarrow on the same data."""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from flows import bank
from flows._bench import Figure, interleaved, rate, timed
from flows._progress import Report
from store import (
    ArrowLog,
    Fsync,
    Layout,
    LogConfig,
    LogReader,
    NewEvent,
    SnapshotStore,
    fingerprint,
)

BATCH = 1_000
HOT = "acct-hot"


@dataclass(frozen=True, slots=True)
class Scale:
    write_events: int  # events per append run
    runs: int
    log_events: int  # size of the log that reads are measured on
    hot_events: int  # events of the one aggregate read back by `read_stream`
    rss_commands: int  # commands of the memory run (over a tenth as many accounts)


SCALES = {
    "small": Scale(100_000, 3, 1_000_000, 1_000, rss_commands=200_000),
    "medium": Scale(300_000, 5, 10_000_000, 10_000, rss_commands=10_000_000),
    "large": Scale(1_000_000, 7, 10_000_000, 10_000, rss_commands=10_000_000),
}


def bank_batches(
    events: int, accounts: int, seed: int = 7, hot_every: int = 0
) -> Iterator[list[NewEvent]]:
    """Bank-shaped event batches: opens first, then deposits and withdrawals.

    With `hot_every`, one aggregate (`HOT`) gets every `hot_every`-th event, spread
    evenly through the log like a busy account's would be.
    """
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    stamp = 1_700_000_000_000_000
    counter = rng.getrandbits(64) << 64
    batch: list[NewEvent] = []
    for i in range(events):
        hot = hot_every and i % hot_every == 0
        agg = HOT if hot else f"acct-{rng.randrange(accounts):07d}"
        version = versions.get(agg, 0) + 1
        versions[agg] = version
        if version == 1:
            payload: Any = bank.AccountOpened(owner=f"owner {agg}", overdraft_limit=100)
        elif rng.random() < 0.6:
            payload = bank.Deposited(amount=rng.randrange(1, 10_000))
        else:
            payload = bank.Withdrawn(amount=rng.randrange(1, 5_000))
        batch.append(
            NewEvent(
                aggregate_id=agg,
                version=version,
                payload=payload,
                event_id=(counter + i).to_bytes(16, "big"),
                command_id=f"cmd-{i}",
                timestamp=stamp + i,
                correlation_id=None,
            )
        )
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def raw_pyarrow_write(batches: list[list[NewEvent]], path: Path, layout: Layout) -> None:
    """The baseline: build the same columns from the same objects, write an IPC stream.

    Written the way one would without cqrsflow: one pass over the events filling a
    list per column, then `pa.array` per column and a stream writer.
    """
    schema = layout.read_schema.remove_metadata()
    fields_of = {c: [f.name for f in dataclasses.fields(c)] for c in bank.EVENTS}
    payload_names = list(layout.payload_columns)
    position = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for events in batches:
            n = len(events)
            payload: dict[str, list[Any]] = {c: [None] * n for c in payload_names}
            for i, e in enumerate(events):
                p = e.payload
                for f in fields_of[type(p)]:
                    payload[f][i] = getattr(p, f)
            arrays = [
                pa.array(range(position, position + n), pa.int64()),
                pa.array([e.aggregate_id for e in events], pa.string()),
                pa.array([bank.AGGREGATE_TYPE] * n, pa.string()).dictionary_encode(),
                pa.array([e.version for e in events], pa.int64()),
                pa.array([type(e.payload).__name__ for e in events]).dictionary_encode(),
                pa.array([e.event_id for e in events], pa.binary(16)),
                pa.array([e.command_id for e in events], pa.string()),
                pa.array([e.correlation_id for e in events], pa.string()),
                pa.array([e.timestamp for e in events], pa.timestamp("us", tz="UTC")),
            ]
            arrays += [pa.array(payload[c], schema.field(c).type) for c in payload_names]
            arrays[2] = arrays[2].cast(schema.field(2).type)
            arrays[4] = arrays[4].cast(pa.dictionary(pa.int16(), pa.string()))
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            position += n


def _fresh_dir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=parent))


def bench_write(scale: Scale, workdir: Path, progress: Report) -> list[Figure]:
    layout = bank.layout()
    batches = list(bank_batches(scale.write_events, accounts=scale.write_events // 20))
    n = sum(len(b) for b in batches)

    def ours(fsync: Fsync) -> Callable[[], float]:
        def run() -> float:
            log = ArrowLog.open(_fresh_dir(workdir), layout, LogConfig(fsync=fsync))
            try:
                return rate(n, timed(lambda: [log.append(b) for b in batches]))
            finally:
                log.close()

        return run

    def raw() -> float:
        return rate(
            n, timed(lambda: raw_pyarrow_write(batches, _fresh_dir(workdir) / "raw.arrows", layout))
        )

    progress("append, fsync never vs raw pyarrow")
    never, base = interleaved(scale.runs, ours(Fsync.NEVER), raw)
    progress("append, fsync per batch")
    always, _ = interleaved(scale.runs, ours(Fsync.ALWAYS))
    return [
        Figure(
            "append from Python objects, fsync never",
            "events/s",
            tuple(never),
            "higher",
            target=1_000_000,
            baseline_name="raw pyarrow build+write",
            baseline_runs=tuple(base),
            ratio_target=0.7,
        ),
        Figure(
            "append, fsync per batch of 1,000",
            "events/s",
            tuple(always),
            "higher",
            target=500_000,
        ),
    ]


def build_log(directory: Path, scale: Scale, progress: Report) -> None:
    """A log of `scale.log_events` bank events with one hot aggregate spread through it."""
    events = scale.log_events
    write_bank_log(
        directory, events, max(events // 10, 1), progress, hot_every=events // scale.hot_events
    )


def write_bank_log(
    directory: Path,
    events: int,
    accounts: int,
    progress: Report,
    *,
    hot_every: int = 0,
    partitions: int | None = None,
) -> None:
    """A log of `events` bank events over `accounts` accounts (see `bank_batches`)."""
    config = LogConfig(partitions=partitions, fsync=Fsync.NEVER)
    with ArrowLog.open(directory, bank.layout(), config) as log:
        for i, batch in enumerate(bank_batches(events, accounts, hot_every=hot_every)):
            log.append(batch)
            if i % 100 == 0:
                progress(f"building a {events:,}-event log", i * BATCH, events)


def raw_scan(directory: Path) -> int:
    rows = 0
    for path in sorted((directory / "log").glob("*/*.arrows")):
        for batch in pa.ipc.open_stream(pa.memory_map(str(path))):
            rows += batch.num_rows
    return rows


def bench_read(scale: Scale, workdir: Path, progress: Report) -> list[Figure]:
    directory = _fresh_dir(workdir)
    build_log(directory, scale, progress)
    reader = LogReader.open(directory)
    total = sum(reader.watermarks().values())

    def scan(log: LogReader) -> float:
        rows = 0

        def run() -> None:
            nonlocal rows
            for batch in log.read_all():
                rows += batch.num_rows

        seconds = timed(run)
        assert rows == total, (rows, total)
        return rate(rows, seconds)

    def raw() -> float:
        return rate(total, timed(lambda: raw_scan(directory)))

    progress("full log scan vs raw memory-mapped scan")
    scan(reader)  # an open log keeps each sealed segment's parsed batches
    scans, raws = interleaved(scale.runs, lambda: scan(reader), raw)
    first_scans, _ = interleaved(scale.runs, lambda: scan(LogReader.open(directory)))

    progress("read_stream of the hot aggregate")
    cold_reader = LogReader.open(directory)
    cold = timed(lambda: cold_reader.read_stream(HOT)) * 1000
    stream_ms = []
    for _ in range(max(scale.runs, 11)):
        start = time.perf_counter()
        table = cold_reader.read_stream(HOT)
        stream_ms.append((time.perf_counter() - start) * 1000)
        assert table.num_rows == scale.hot_events, table.num_rows

    progress("snapshot load")
    snapshots = SnapshotStore(directory / "snapshots")

    @dataclasses.dataclass
    class State:
        owner: str
        balance: int
        overdraft_limit: int
        open: bool

    tag = fingerprint(State)
    snapshots.save(HOT, 10_000, dataclasses.asdict(State("owner", 1234, 100, True)), tag)
    loads = []
    reps = 1000
    for _ in range(max(scale.runs, 5)):
        seconds = timed(lambda: [snapshots.load(HOT, tag) for _ in range(reps)])
        loads.append(seconds / reps * 1000)

    return [
        Figure(
            f"full zero-copy log scan ({total:,} events), log open",
            "events/s",
            tuple(scans),
            "higher",
            target=50_000_000,
            baseline_name="raw pa.memory_map scan",
            baseline_runs=tuple(raws),
        ),
        Figure(
            "full log scan, first after opening",
            "events/s",
            tuple(first_scans),
            "higher",
            baseline_name="raw pa.memory_map scan",
            baseline_runs=tuple(raws),
        ),
        Figure(
            f"read_stream of {scale.hot_events:,} events among {total:,}",
            "ms",
            tuple(stream_ms),
            "lower",
            target=5.0,
        ),
        Figure(
            "read_stream, first call (opens the index)",
            "ms",
            (cold,),
            "lower",
        ),
        Figure("snapshot load", "ms", tuple(loads), "lower", target=1.0),
    ]
