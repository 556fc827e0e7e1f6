"""Connectors: every source gives back exactly the records it was fed, batched; sinks parse back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bytewax.operators as op
import msgpack
import msgspec
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source, StatefulSourcePartition
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from connectors import (
    CHUNK_BYTES,
    GROW,
    SHRINK,
    BatchSize,
    GeneratorSource,
    JsonLinesSink,
    JsonLinesSource,
    LogTailSource,
    MissingExtraError,
    MsgpackSource,
    RawBatch,
    SourceError,
    kafka_source,
)
from store import ArrowLog, Layout, LogConfig, NewEvent, partition_of

ROOT = Path(__file__).resolve().parent.parent


def run_source(source: Source[RawBatch]) -> list[RawBatch]:
    """Everything a source emits, through a real one-worker flow."""
    out: list[RawBatch] = []
    flow = Dataflow("read")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return out


def flatten(batches: list[RawBatch]) -> tuple[list[bytes], list[int]]:
    return [r for b in batches for r in b.records], [o for b in batches for o in b.offsets]


def write_records(path: Path, records: list[bytes], end: bytes = b"\n") -> list[int]:
    """Write records one per line; their offsets, counted as they are written."""
    offsets = []
    with path.open("wb") as f:
        for record in records:
            offsets.append(f.tell())
            f.write(record + end)
    return offsets


def drain(part: StatefulSourcePartition[RawBatch, int]) -> list[RawBatch]:
    out: list[RawBatch] = []
    while True:
        try:
            out += part.next_batch()
        except StopIteration:
            return out


# -- JSON lines files -------------------------------------------------------------


def test_a_jsonl_file_reads_back_exactly_in_batches(tmp_path: Path) -> None:
    # Enough lines to span several 1 MiB chunks, one line longer than a chunk, and
    # bytes that are not UTF-8: all passed through untouched.
    records = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 300)) for i in range(12_000)]
    records[5_000] = b'{"long": "' + b"y" * (CHUNK_BYTES * 2 + 17) + b'"}'
    records[7_000] = b'{"bad": "\xff\xfe\xc0"}'
    path = tmp_path / "commands.jsonl"
    offsets = write_records(path, records)
    assert path.stat().st_size > 3 * CHUNK_BYTES

    batches = run_source(JsonLinesSource(path, batch_size=1000))

    assert flatten(batches) == (records, offsets)
    # A file is a backlog: batches start at the configured size and grow.
    sizes = [len(b.records) for b in batches]
    assert sizes[0] == 1000 and max(sizes) > 1000 and max(sizes) <= 1000 * GROW
    assert all(len(b.records) == len(b.offsets) for b in batches)
    assert {(b.source, b.format) for b in batches} == {(str(path), "jsonl")}


def test_a_directory_is_one_partition_per_jsonl_file(tmp_path: Path) -> None:
    a = [b'{"a": %d}' % i for i in range(5)]
    b = [b'{"b": %d}' % i for i in range(3)]
    offsets_a = write_records(tmp_path / "a.jsonl", a)
    offsets_b = write_records(tmp_path / "b.jsonl", b)
    (tmp_path / "notes.txt").write_bytes(b'{"not": "read"}\n')
    source = JsonLinesSource(tmp_path, batch_size=2)
    assert source.list_parts() == ["a.jsonl", "b.jsonl"]

    batches = run_source(source)

    by_file = {
        name: flatten([x for x in batches if x.source == str(tmp_path / name)])
        for name in ("a.jsonl", "b.jsonl")
    }
    assert by_file == {"a.jsonl": (a, offsets_a), "b.jsonl": (b, offsets_b)}
    assert sum(len(x.records) for x in batches) == 8  # nothing from notes.txt
    assert all(len(x.records) == 2 for x in batches[:2])  # then they grow: a backlog


def test_blank_lines_crlf_and_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\n{"a":1}\r\n\r\n   \n{"b":2}\n\n \t\r\n{"c":3}\r\n{"d":4}')
    batches = run_source(JsonLinesSource(path))
    assert flatten(batches) == ([b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}'], [1, 16, 29, 38])


def test_an_empty_file_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n\r\n  \n")
    assert run_source(JsonLinesSource(tmp_path)) == []


def test_a_missing_path_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nowhere\.jsonl: no such file or directory"):
        JsonLinesSource(tmp_path / "nowhere.jsonl")


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_reading_resumes_from_a_snapshot(tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        records = [b'{"n": %d, "pad": "%s"}' % (i, b"z" * (i % 90)) for i in range(30_000)]
        path = tmp_path / "r.jsonl"
        offsets = write_records(path, records)
        source: JsonLinesSource | MsgpackSource = JsonLinesSource(path, batch_size=7)
    else:
        records = [msgpack.packb({"n": i, "pad": "z" * (i % 90)}) for i in range(30_000)]
        path = tmp_path / "r.msgpack"
        offsets = write_records(path, records, end=b"")
        source = MsgpackSource(path, batch_size=7)
    assert path.stat().st_size > CHUNK_BYTES

    first = source.build_part("in", path.name, None)
    read = first.next_batch() + first.next_batch()
    snapshot = first.snapshot()
    first.close()
    # Mid-chunk: the snapshot is the first record not emitted, not the end of the read
    # (7 records, then 14: the size grows while more are waiting).
    assert snapshot == offsets[7 + 14]

    resumed = source.build_part("in", path.name, snapshot)
    rest = drain(resumed)
    assert flatten(read + rest) == (records, offsets)
    assert resumed.snapshot() == path.stat().st_size
    resumed.close()

    at_end = source.build_part("in", path.name, path.stat().st_size)
    with pytest.raises(StopIteration):
        at_end.next_batch()
    at_end.close()


def test_resuming_another_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"{}\n")
    with pytest.raises(SourceError, match="resumes only from the same input file"):
        JsonLinesSource(path).build_part("in", "b.jsonl", 0)


# -- msgpack files ----------------------------------------------------------------


def test_msgpack_objects_read_back_as_their_own_bytes(tmp_path: Path) -> None:
    records = [msgpack.packb({"n": i, "tags": ["a", "b"][: i % 3]}) for i in range(3_000)]
    records[10] = msgpack.packb({"big": b"q" * (CHUNK_BYTES + 5)})  # spans chunks
    records[11] = b"\xa3\xff\xfe\xfd"  # a str that is not UTF-8: framed all the same
    path = tmp_path / "c.msgpack"
    offsets = write_records(path, records, end=b"")

    batches = run_source(MsgpackSource(path, batch_size=500))

    assert flatten(batches) == (records, offsets)
    assert {(b.source, b.format) for b in batches} == {(str(path), "msgpack")}
    assert len(batches[0].records) == 500


def test_a_directory_of_msgpack_files(tmp_path: Path) -> None:
    (tmp_path / "a.msgpack").write_bytes(msgpack.packb(1) + msgpack.packb("two"))
    (tmp_path / "b.mpk").write_bytes(msgpack.packb([3]))
    (tmp_path / "c.jsonl").write_bytes(b"{}\n")
    batches = run_source(MsgpackSource(tmp_path))
    found = [
        (Path(b.source).name, r, o)
        for b in batches
        for r, o in zip(b.records, b.offsets, strict=True)
    ]
    assert sorted(found) == [
        ("a.msgpack", b"\x01", 0),
        ("a.msgpack", b"\xa3two", 1),
        ("b.mpk", b"\x91\x03", 0),
    ]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\xc1" + msgpack.packb({"after": 1}), id="invalid-byte"),
        pytest.param(msgpack.packb({"cut": "short"})[:-3], id="truncated"),
    ],
)
def test_a_corrupt_msgpack_tail_is_one_last_record(tmp_path: Path, tail: bytes) -> None:
    good = [msgpack.packb({"n": i}) for i in range(5)]
    path = tmp_path / "c.msgpack"
    offsets = write_records(path, good, end=b"")
    with path.open("ab") as f:
        f.write(tail)

    batches = run_source(MsgpackSource(path, batch_size=2))

    assert flatten(batches) == ([*good, tail], [*offsets, sum(map(len, good))])


# -- stdin --------------------------------------------------------------------------

_STDIN_CHILD = """
import json, sys
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from connectors import StdinSource

out = []
flow = Dataflow("stdin")
op.output("out", op.input("in", flow, StdinSource(sys.argv[1], batch_size=2)), TestingSink(out))
run_main(flow)
json.dump([[b.source, b.format, [r.hex() for r in b.records], b.offsets] for b in out], sys.stdout)
"""


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_stdin_is_read_in_batches_by_a_real_flow(tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        records = [b'{"a": 1}', b'{"b": "\xff"}', b'{"c": 3}', b'{"d": 4}', b'{"e": 5}']
        data = b"\n".join(records[:2]) + b"\r\n\n" + b"\n".join(records[2:])  # no final newline
        offsets = [data.index(r) for r in records]
    else:
        records = [msgpack.packb(x) for x in ({"a": 1}, [1, 2, 3], "x" * 40, 7, {"e": None})]
        data = b"".join(records)
        offsets = [sum(map(len, records[:i])) for i in range(len(records))]
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(_STDIN_CHILD))

    done = subprocess.run(
        [sys.executable, str(child), fmt],
        input=data,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr.decode()
    batches = json.loads(done.stdout)
    assert {(source, f) for source, f, _, _ in batches} == {("stdin", fmt)}
    assert len(batches[0][2]) <= 2 and all(recs for _, _, recs, _ in batches)
    assert [bytes.fromhex(r) for _, _, recs, _ in batches for r in recs] == records
    assert [o for _, _, _, offs in batches for o in offs] == offsets


# -- generator ------------------------------------------------------------------------


def test_the_generator_emits_every_record_numbered() -> None:
    records = [b'{"n": %d}' % i for i in range(2_500)]
    batches = run_source(GeneratorSource(iter(records), batch_size=1000))
    assert [len(b.records) for b in batches] == [1000, 1000, 500]
    assert flatten(batches) == (records, list(range(2_500)))
    assert {(b.source, b.format) for b in batches} == {("generator", "jsonl")}


def test_a_paced_generator_emits_every_record_numbered() -> None:
    records = [msgpack.packb(i) for i in range(45)]
    batches = run_source(GeneratorSource(records, "msgpack", batch_size=1000, rate=2_000.0))
    assert flatten(batches) == (records, list(range(45)))
    assert {b.format for b in batches} == {"msgpack"}


class _Clock:
    """Stands in for time.perf_counter: the pacing is arithmetic on the clock's readings."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_a_paced_generator_takes_the_records_that_have_arrived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr("connectors._generator.time", clock)
    source = GeneratorSource([b"1"] * 100, rate=400.0, batch_size=8)
    part = source.build_part("in", "generator", None)
    assert part.next_awake() is None  # nothing read yet: due at once
    assert [len(b.records) for b in part.next_batch()] == [1]  # record 0 arrives at start
    assert source.started == 100.0
    assert part.next_batch() == []  # record 1 arrives 1/400 s later
    clock.now += 5 / 400
    assert [b.offsets for b in part.next_batch()] == [[1, 2, 3, 4, 5]]
    clock.now += 1.0  # a backlog: batches are capped at batch_size
    assert [len(b.records) for b in part.next_batch()] == [8]
    awake = part.next_awake()
    assert awake is not None and awake <= datetime.now(UTC)  # more are waiting


def test_a_generator_refuses_a_rate_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="rate=0"):
        GeneratorSource([], rate=0)


# -- the JSON lines sink ----------------------------------------------------------------


class Result(msgspec.Struct):
    command_id: str
    ok: bool


def test_the_sink_appends_one_file_per_worker(tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    earlier = out_dir / "results-0.jsonl"
    earlier.write_bytes(b'{"command_id": "earlier", "ok": true}\n')
    results = [[Result(f"c{i}-{j}", ok=j % 2 == 0) for j in range(3)] for i in range(20)]
    batches: list[list[Result | dict[str, object]]] = [
        *results,
        [{"command_id": "as-dict", "ok": False}],
    ]
    flow = Dataflow("sink")
    items = op.redistribute("spread", op.input("in", flow, TestingSource(batches)))
    op.output("out", items, JsonLinesSink(out_dir, "results"))

    cluster_main(flow, [], 0, worker_count_per_proc=2)

    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["results-0.jsonl", "results-1.jsonl"]
    lines = [line for name in files for line in (out_dir / name).read_bytes().splitlines()]
    found = sorted((r["command_id"], r["ok"]) for r in map(json.loads, lines))
    expected = [("earlier", True), ("as-dict", False)]
    expected += [(r.command_id, r.ok) for batch in results for r in batch]
    assert found == sorted(expected)
    assert earlier.read_bytes().startswith(b'{"command_id": "earlier", "ok": true}\n')


def test_the_sink_creates_its_directory(tmp_path: Path) -> None:
    out_dir = tmp_path / "fresh" / "dead-letter"
    flow = Dataflow("sink")
    rows: list[list[dict[str, object]]] = [[{"reason": "bad", "raw": "x"}]]
    op.output("out", op.input("in", flow, TestingSource(rows)), JsonLinesSink(out_dir, "dead"))
    run_main(flow)
    assert (out_dir / "dead-0.jsonl").read_bytes() == b'{"reason":"bad","raw":"x"}\n'


# -- following the log ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deposited:
    amount: int


def append(log: ArrowLog, ids: list[str], version: int) -> list[NewEvent]:
    events = [
        NewEvent(
            agg, version, Deposited(version * 10), uuid.uuid4().bytes, f"cmd-{agg}-{version}", 1
        )
        for agg in ids
    ]
    log.append(events)
    return events


@pytest.fixture
def log(tmp_path: Path) -> Iterator[ArrowLog]:
    layout = Layout.from_classes({"Account": [Deposited]})
    with ArrowLog.open(tmp_path, layout, LogConfig(partitions=2)) as opened:
        yield opened


def rows(batches: list[pa.RecordBatch]) -> list[tuple[int, str, int]]:
    """(position, aggregate_id, version) of every row, in the order emitted."""
    table = pa.Table.from_batches(batches)
    return list(
        zip(
            table.column("position").to_pylist(),
            table.column("aggregate_id").to_pylist(),
            table.column("version").to_pylist(),
            strict=True,
        )
    )


def test_the_tail_emits_each_partition_once_in_order(tmp_path: Path, log: ArrowLog) -> None:
    ids = [f"acct-{i}" for i in range(12)]
    append(log, ids, 1)
    append(log, ids[:5], 2)
    assert {partition_of(a, 2) for a in ids} == {0, 1}

    out: list[pa.RecordBatch] = []
    flow = Dataflow("tail")
    op.output(
        "out", op.input("in", flow, LogTailSource(tmp_path, stop_at_end=True)), TestingSink(out)
    )
    run_main(flow)

    found = rows(out)
    assert sorted((a, v) for _, a, v in found) == sorted(
        [(a, 1) for a in ids] + [(a, 2) for a in ids[:5]]
    )
    for p in (0, 1):
        mine = [(pos, v) for pos, a, v in found if partition_of(a, 2) == p]
        assert [pos for pos, _ in mine] == list(range(len(mine)))  # gap-free, in order
    assert all(isinstance(b, pa.RecordBatch) and b.num_rows for b in out)


def test_the_tail_starts_from_given_positions(tmp_path: Path, log: ArrowLog) -> None:
    ids = [f"acct-{i}" for i in range(12)]
    append(log, ids, 1)
    append(log, ids, 2)
    in_0 = [a for a in ids if partition_of(a, 2) == 0]

    out: list[pa.RecordBatch] = []
    flow = Dataflow("tail")
    source = LogTailSource(tmp_path, {0: len(in_0)}, stop_at_end=True)
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)

    found = rows(out)
    assert sorted((a, v) for _, a, v in found if a in in_0) == [(a, 2) for a in sorted(in_0)]
    assert sorted((a, v) for _, a, v in found if a not in in_0) == sorted(
        [(a, v) for a in ids if a not in in_0 for v in (1, 2)]
    )


def test_a_tail_partition_follows_appends_and_snapshots_its_position(
    tmp_path: Path, log: ArrowLog
) -> None:
    ids = [a for a in (f"acct-{i}" for i in range(40)) if partition_of(a, 2) == 1][:4]
    append(log, ids, 1)
    source = LogTailSource(tmp_path, poll_interval=3600)
    assert source.list_parts() == ["0", "1"]
    part = source.build_part("in", "1", None)

    assert [r for b in part.next_batch() for r in rows([b])] == [
        (i, a, 1) for i, a in enumerate(ids)
    ]
    assert part.next_batch() == []  # caught up: it waits, it does not end
    assert part.next_awake() is not None
    assert part.snapshot() == 4

    append(log, ids[:2], 2)  # appended while it follows
    assert rows(part.next_batch()) == [(4, ids[0], 2), (5, ids[1], 2)]
    assert part.snapshot() == 6

    resumed = source.build_part("in", "1", 5)
    assert rows(resumed.next_batch()) == [(5, ids[1], 2)]
    assert source.build_part("in", "0", None).next_batch() == []  # partition 0 is empty


# -- Kafka ------------------------------------------------------------------------------------


def test_kafka_without_its_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Made missing for certain, whether or not confluent-kafka is installed here.
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    monkeypatch.delitem(sys.modules, "bytewax.connectors.kafka", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'cqrsflow\[kafka\]'") as caught:
        kafka_source(["localhost:9092"], ["commands"])
    assert isinstance(caught.value, ImportError)


def test_the_batch_size_grows_under_a_backlog_and_shrinks_when_input_is_sparse() -> None:
    size = BatchSize(1000)
    for _ in range(10):  # full batches with more waiting
        size.taken(size.current, left=50_000)
    assert size.current == 1000 * GROW
    size.taken(size.current, left=0)  # took exactly what there was: no change
    assert size.current == 1000 * GROW
    for _ in range(20):  # a few records at a time
        size.taken(3, left=0)
    assert size.current == 1000 // SHRINK
