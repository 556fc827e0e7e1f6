"""`cqrsflow bench write|read`: the event log against raw pyarrow on the same data."""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa

from flows import bank
from flows._progress import Report
from flows.bench._harness import PERCENTILES, Figure, interleaved, percentile, rate, timed
from store import (
    ArrowLog,
    DataDir,
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
    decode_events: int = 100_000  # events of the log decoded to Python objects
    codec_events: int = 20_000  # events each codec encodes and decodes per run
    peer_commands: int = 2_000  # commands through the `eventsourcing` peer per run
    fsyncs: int = 100  # fsyncs per run when measuring the disk's fsync latency


SCALES = {
    # `bench all --scale small` finishes within a minute on 2 busy cores.
    "small": Scale(
        100_000, 3, 500_000, 1_000, 100_000,
        decode_events=50_000, codec_events=20_000, peer_commands=1_000, fsyncs=200,
    ),
    "medium": Scale(
        300_000, 5, 10_000_000, 10_000, 10_000_000,
        decode_events=500_000, codec_events=200_000, peer_commands=10_000, fsyncs=500,
    ),
    "large": Scale(
        1_000_000, 7, 10_000_000, 10_000, 10_000_000,
        decode_events=1_000_000, codec_events=1_000_000, peer_commands=50_000, fsyncs=1_000,
    ),
}  # fmt: skip


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


def raw_pyarrow_write(
    batches: list[list[NewEvent]], path: Path, layout: Layout, *, fsync: bool = False
) -> None:
    """The baseline: build the same columns from the same objects, write an IPC stream.

    Written the way one would without cqrsflow: one pass over the events filling a
    list per column, then `pa.array` per column and a stream writer. With `fsync`, each
    batch is fsynced once written, as `Fsync.ALWAYS` does.
    """
    schema = layout.read_schema.remove_metadata()
    fields_of = {c: _field_names(c) for c in bank.EVENTS}
    payload_names = list(layout.payload_columns)
    position = 0
    # An unbuffered Python file when fsyncing, so that each batch is on its way to the
    # disk once `write_batch` returns and `os.fsync` has its descriptor.
    sink_of = open(path, "wb", buffering=0) if fsync else pa.OSFile(str(path), "wb")  # noqa: SIM115
    with sink_of as sink, pa.ipc.new_stream(sink, schema) as writer:
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
            if fsync:
                os.fsync(sink.fileno())
            position += n


def _field_names(cls: type) -> list[str]:
    """The fields of an event class: a msgspec Struct's or a dataclass's."""
    struct_fields = getattr(cls, "__struct_fields__", None)
    if struct_fields is not None:
        return list(struct_fields)
    return [f.name for f in dataclasses.fields(cls)]


def fsync_latencies(directory: Path, size: int, count: int) -> list[float]:
    """Milliseconds of each of `count` appends of `size` bytes, each followed by fsync:
    what the disk under `directory` makes every durable batch wait for at least."""
    block = os.urandom(size)
    fd = os.open(directory / "fsync.probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        out = []
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            out.append((time.perf_counter() - start) * 1000)
        return out
    finally:
        os.close(fd)


def fresh_dir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=parent))


def bench_write(scale: Scale, workdir: Path, progress: Report) -> list[Figure]:
    layout = bank.layout()
    batches = list(bank_batches(scale.write_events, accounts=scale.write_events // 20))
    n = sum(len(b) for b in batches)

    def ours(fsync: Fsync) -> Callable[[], float]:
        def run() -> float:
            log = ArrowLog.open(fresh_dir(workdir), layout, LogConfig(fsync=fsync))
            try:
                return rate(n, timed(lambda: [log.append(b) for b in batches]))
            finally:
                log.close()

        return run

    def raw(fsync: bool) -> Callable[[], float]:
        def run() -> float:
            path = fresh_dir(workdir) / "raw.arrows"
            return rate(n, timed(lambda: raw_pyarrow_write(batches, path, layout, fsync=fsync)))

        return run

    progress("append, fsync never vs raw pyarrow")
    never, base = interleaved(scale.runs, ours(Fsync.NEVER), raw(False))
    progress("append, fsync per batch vs raw pyarrow with fsync per batch")
    always, base_always = interleaved(scale.runs, ours(Fsync.ALWAYS), raw(True))
    # One batch's bytes as the log stores them: what each fsync of a batch carries.
    size = layout.encode(batches[0], 0).serialize().size
    progress(f"the disk's fsync latency ({size / 1024:.0f} KiB appends)")
    probe = fresh_dir(workdir)
    syncs = [fsync_latencies(probe, size, scale.fsyncs) for _ in range(scale.runs)]
    fsync_figures = [
        Figure(
            f"fsync latency of the disk ({size / 1024:.0f} KiB append + fsync), {name}",
            "ms",
            tuple(percentile(run, q) for run in syncs),
            "lower",
        )
        for name, q in PERCENTILES[:3]
    ]
    return [
        Figure(
            "append from Python objects, fsync never",
            "events/s",
            tuple(never),
            "higher",
            target=1_000_000,
            baseline_name="raw pyarrow build+write",
            baseline_runs=tuple(base),
            ratio_target=0.9,
        ),
        Figure(
            "append, fsync per batch of 1,000",
            "events/s",
            tuple(always),
            "higher",
            target=500_000,
            baseline_name="raw pyarrow build+write, fsync per batch",
            baseline_runs=tuple(base_always),
        ),
        *fsync_figures,
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
    for path in sorted(DataDir(directory).log.glob("*/*.arrows")):
        for batch in pa.ipc.open_stream(pa.memory_map(str(path))):
            rows += batch.num_rows
    return rows


def bench_read(
    scale: Scale, workdir: Path, progress: Report, log: Path | None = None
) -> list[Figure]:
    """`log`: a data directory `build_log` wrote at this scale, shared with `bench
    query` by `bench all` (writing 10M events takes longer than reading them)."""
    directory = log if log is not None else fresh_dir(workdir)
    if log is None:
        build_log(directory, scale, progress)
    reader = LogReader.open(directory, bank.layout())
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

    progress(f"{scale.decode_events:,} events decoded to Python objects vs to_pylist")
    decoded, to_pylist = _decoded_read(reader, scale)

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
    snapshots = SnapshotStore(DataDir(directory).snapshots)

    @dataclasses.dataclass
    class State:
        owner: str
        balance: int
        overdraft_limit: int
        open: bool

    tag = fingerprint(State)
    snapshots.save(HOT, 10_000, dataclasses.asdict(State("owner", 1234, 100, True)), tag)
    reps = 1000
    (path,) = DataDir(directory).snapshots.glob("*/*.snap")
    body = msgpack.packb([HOT, 10_000, tag, dataclasses.asdict(State("owner", 1234, 100, True))])
    header = path.stat().st_size - len(body)

    def raw_load() -> object:
        # The least a snapshot load can do: read the file, decode its msgpack body.
        return msgpack.unpackb(memoryview(path.read_bytes())[header:])

    loads, raw_loads = interleaved(
        max(scale.runs, 5),
        lambda: timed(lambda: [snapshots.load(HOT, tag) for _ in range(reps)]) / reps * 1000,
        lambda: timed(lambda: [raw_load() for _ in range(reps)]) / reps * 1000,
    )

    return [
        Figure(
            f"full zero-copy log scan ({total:,} events), log open",
            "events/s",
            tuple(scans),
            "higher",
            target=50_000_000,
            baseline_name="raw pa.memory_map scan",
            baseline_runs=tuple(raws),
            ratio_target=0.9,
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
        Figure(
            f"events decoded to Python objects ({scale.decode_events:,})",
            "events/s",
            decoded,
            "higher",
            baseline_name="pyarrow to_pylist of the same batches (dicts)",
            baseline_runs=to_pylist,
        ),
        Figure(
            "snapshot load",
            "ms",
            tuple(loads),
            "lower",
            target=1.0,
            baseline_name="raw read_bytes + msgpack.unpackb of the same file",
            baseline_runs=tuple(raw_loads),
        ),
    ]


def _decoded_read(reader: LogReader, scale: Scale) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Events/s turning the log's first `decode_events` events into Python objects
    (`RecordedEvent`s with the bank's payload classes), against pyarrow's own
    conversion of the same batches to dicts. Batches are read (and kept parsed) first."""
    batches: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader.read_all():
        batches.append(batch)
        rows += batch.num_rows
        if rows >= scale.decode_events:
            break

    def ours() -> float:
        return rate(rows, timed(lambda: [reader.decode(b) for b in batches]))

    def raw() -> float:
        return rate(rows, timed(lambda: [b.to_pylist() for b in batches]))

    mine, theirs = interleaved(scale.runs, ours, raw)
    return tuple(mine), tuple(theirs)
