"""Property tests: what goes into the log comes back out, and torn tails are cut exactly.

Every example gets its own data directory (hypothesis runs many examples per test
function, so the tests make a `tempfile.TemporaryDirectory` in their body rather
than use pytest's function-scoped `tmp_path`).

The torn-tail tests damage the files of a partition's *active* segment the way a
crash can leave them (a file cut at any byte, garbage past the last batch) and
check that `ArrowLog.open` keeps exactly the batches whose bytes are whole (a
prefix of what was committed), says so in `log.recoveries`, leaves the sealed
segments byte for byte alone, and that the log takes appends again afterwards.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_events import (
    AccountClosed,
    AccountOpened,
    Deposited,
    Withdrawn,
    all_events,
    bank_layout,
    digests,
    in_log_order,
    new_event,
    recorded,
    segments,
)

from store import (
    ArrowLog,
    Fsync,
    LogConfig,
    LogReader,
    NewEvent,
    RecordedEvent,
    verify_log,
)
from store.disk import PREAMBLE_SIZE, SegmentFiles, entry_offset, read_entries

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=24)  # any unicode (hypothesis leaves out surrogates), NUL included
OPTIONAL_TEXT = st.none() | TEXT
# Aggregate ids are the sealed index's keys (NUL-padded fixed-width bytes), so no NUL.
AGGREGATE_IDS = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=16
)
TIMESTAMPS = st.integers(-(2**62), 2**62)

OPENED = st.builds(AccountOpened, owner=TEXT, overdraft_limit=INT64, nickname=OPTIONAL_TEXT)
LATER = st.one_of(
    st.builds(Deposited, amount=INT64, memo=OPTIONAL_TEXT),
    st.builds(Withdrawn, amount=INT64, memo=OPTIONAL_TEXT),
    st.just(AccountClosed()),
)
SEGMENT_BYTES = st.sampled_from([4096, 8192, 64 * 1024 * 1024])  # 4 KiB: a few batches each


@st.composite
def histories(
    draw: st.DrawFn,
    max_batches: int = 20,
    max_events: int = 6,
    max_ids: int = 6,
    min_events: int = 1,
) -> list[list[NewEvent]]:
    """Append batches: random aggregates, each one's versions gap-free from 1.

    Field values come from small per-example pools, so that long histories stay
    cheap to draw; which aggregate and which values each event gets is drawn.
    """
    ids = draw(st.lists(AGGREGATE_IDS, min_size=1, max_size=max_ids, unique=True), label="ids")
    opened = draw(st.lists(OPENED, min_size=1, max_size=3), label="opened")
    later = draw(st.lists(LATER, min_size=1, max_size=6), label="later")
    commands = draw(st.lists(TEXT, min_size=1, max_size=3), label="command ids")
    correlations = draw(st.lists(OPTIONAL_TEXT, min_size=1, max_size=3), label="correlation ids")
    timestamps = draw(st.lists(TIMESTAMPS, min_size=1, max_size=3), label="timestamps")
    pick = st.integers(0, 5)
    versions = dict.fromkeys(ids, 0)
    batches = []
    for _ in range(draw(st.integers(1, max_batches), label="batches")):
        batch = []
        for _ in range(draw(st.integers(min_events, max_events), label="events")):
            agg = ids[draw(st.integers(0, len(ids) - 1))]
            versions[agg] += 1
            payloads = opened if versions[agg] == 1 else later
            n = draw(pick)
            batch.append(
                NewEvent(
                    aggregate_id=agg,
                    version=versions[agg],
                    payload=payloads[n % len(payloads)],
                    event_id=draw(st.uuids()).bytes,
                    command_id=commands[n % len(commands)],
                    timestamp=timestamps[n % len(timestamps)],
                    correlation_id=correlations[n % len(correlations)],
                )
            )
        batches.append(batch)
    return batches


# Long histories of few aggregates: at 16-64 KiB segments, a sealed segment then holds
# 64+ events of one aggregate, which gives it a contiguous copy (the `.hot` file).
BUSY = histories(max_batches=8, min_events=20, max_events=150, max_ids=3)
BUSY_SEGMENT_BYTES = st.sampled_from([16 * 1024, 64 * 1024])
Scenario = tuple[list[list[NewEvent]], int]  # append batches, segment_bytes
SCENARIOS = st.tuples(histories(), SEGMENT_BYTES) | st.tuples(BUSY, BUSY_SEGMENT_BYTES)


def config(segment_bytes: int, partitions: int | None = None) -> LogConfig:
    return LogConfig(partitions=partitions, segment_bytes=segment_bytes, fsync=Fsync.ALWAYS)


def write(log: ArrowLog, batches: Sequence[Sequence[NewEvent]]) -> list[RecordedEvent]:
    """Append every batch; the events as the log must give them back, in log order."""
    out = []
    for batch in batches:
        positions = log.append(batch)
        assert len(positions) == len(batch)
        out.extend(recorded(e, p) for e, p in zip(batch, positions, strict=True))
    check_positions(out, log.partitions)
    return in_log_order(out)


def check_positions(events: Sequence[RecordedEvent], partitions: int) -> None:
    """Positions are gap-free from 0 in every partition."""
    for p in range(partitions):
        got = sorted(e.position for e in events if e.partition == p)
        assert got == list(range(len(got))), f"partition {p}: positions {got}"


def check_contents(log: LogReader, expected: Sequence[RecordedEvent]) -> None:
    """The log holds exactly `expected`, through every read path."""
    assert all_events(log) == list(expected)
    counts = Counter(e.partition for e in expected)
    assert log.watermarks() == {p: counts.get(p, 0) for p in range(log.partitions)}
    for agg in {e.aggregate_id for e in expected}:
        mine = [e for e in expected if e.aggregate_id == agg]
        assert [e.version for e in mine] == list(range(1, len(mine) + 1))
        assert log.decode(log.read_stream(agg)) == mine
        assert log.last_version(agg) == len(mine)
        middle = len(mine) // 2 + 1
        assert log.decode(log.read_stream(agg, middle)) == mine[middle - 1 :]
    assert log.last_version("no such account") == 0
    assert log.read_stream("no such account").num_rows == 0


def read_table(log: LogReader) -> pa.Table:
    return pa.Table.from_batches(list(log.read_all()), schema=bank_layout().read_schema)


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def kept_rows(entries: np.ndarray, kept: int) -> int:
    """The events in the first `kept` batches (`entries` are the segment's directory)."""
    return int(entries["count"][:kept].sum())


def batch_end(files: SegmentFiles, entries: np.ndarray, kept: int) -> int:
    """The byte where the `kept`-th batch ends (the header's end when none are kept)."""
    if kept:
        return int(entries[kept - 1]["offset"]) + int(entries[kept - 1]["length"])
    if len(entries):
        return int(entries[0]["offset"])
    return files.data.stat().st_size


def sealed_files(data_dir: str, partitions: int) -> list[Path]:
    """Every file of every sealed segment (all but each partition's last)."""
    out = []
    for p in range(partitions):
        for seg in segments(data_dir, p)[:-1]:
            out.extend([seg.data, seg.dir, seg.index, seg.index.with_suffix(".hot")])
    return out


def append_more(log: ArrowLog, expected: list[RecordedEvent]) -> list[RecordedEvent]:
    """Append the next version of every aggregate and one new aggregate; check they read back."""
    aggregates = sorted({e.aggregate_id for e in expected})
    events = [
        new_event(agg, log.last_version(agg) + 1, Deposited(i + 1, "after recovery"))
        for i, agg in enumerate(aggregates)
    ]
    events.append(new_event("opened after recovery", 1, AccountOpened("Zoë", 0)))
    positions = log.append(events)
    now = in_log_order(
        [*expected, *(recorded(e, p) for e, p in zip(events, positions, strict=True))]
    )
    check_positions(now, log.partitions)
    check_contents(log, now)
    return now


def check_reopens_clean(data_dir: str, segment_bytes: int, expected: list[RecordedEvent]) -> None:
    with ArrowLog.open(data_dir, bank_layout(), config(segment_bytes)) as log:
        assert log.recoveries == []
        check_contents(log, expected)
    assert list(verify_log(data_dir)) == []


@SETTINGS
@given(
    scenario=SCENARIOS,
    partitions=st.sampled_from([1, 3]),
)
def test_what_is_appended_reads_back_identically_after_reopening(
    scenario: Scenario, partitions: int
) -> None:
    history, segment_bytes = scenario
    with tempfile.TemporaryDirectory() as d:
        with ArrowLog.open(d, bank_layout(), config(segment_bytes, partitions)) as log:
            expected = write(log, history)
            check_contents(log, expected)
            table = read_table(log)
        assert table.num_rows == sum(map(len, history))

        with ArrowLog.open(d, bank_layout(), config(segment_bytes)) as log:
            assert log.partitions == partitions
            assert log.recoveries == []
            check_contents(log, expected)
            assert read_table(log).equals(table)

        reader = LogReader.open(d, bank_layout())
        check_contents(reader, expected)
        assert read_table(reader).equals(table)
        assert list(verify_log(d)) == []
        for p in range(partitions):  # each segment is a plain Arrow IPC stream
            for seg in segments(d, p):
                entries = read_entries(seg)
                with pa.ipc.open_stream(str(seg.data)) as stream:
                    on_disk = stream.read_all()
                assert on_disk.num_rows == kept_rows(entries, len(entries))
                first = seg.first_position
                assert on_disk.column("position").to_pylist() == list(
                    range(first, first + on_disk.num_rows)
                )


@SETTINGS
@given(
    scenario=SCENARIOS,
    partitions=st.sampled_from([1, 2]),
    data=st.data(),
)
def test_a_data_file_cut_at_any_byte_keeps_exactly_the_whole_batches(
    scenario: Scenario, partitions: int, data: st.DataObject
) -> None:
    history, segment_bytes = scenario
    with tempfile.TemporaryDirectory() as d:
        with ArrowLog.open(d, bank_layout(), config(segment_bytes, partitions)) as log:
            expected = write(log, history)
        p = data.draw(st.integers(0, partitions - 1), label="partition")
        active = segments(d, p)[-1]
        entries = read_entries(active)
        size = active.data.stat().st_size
        sealed = digests(sealed_files(d, partitions))

        cut = data.draw(st.integers(0, size), label="cut")
        truncate(active.data, cut)
        kept = sum(1 for e in entries if int(e["offset"]) + int(e["length"]) <= cut)
        survivors = [
            e
            for e in expected
            if e.partition != p or e.position < active.first_position + kept_rows(entries, kept)
        ]

        with ArrowLog.open(d, bank_layout(), config(segment_bytes)) as log:
            assert digests(sealed_files(d, partitions)) == sealed
            if kept < len(entries):
                [recovery] = log.recoveries
                assert recovery.path == str(active.data)
                assert recovery.kept_batches == kept
                assert recovery.dropped_batches == len(entries) - kept
                if cut >= batch_end(active, entries, 0):  # the header is whole
                    assert recovery.truncated_bytes == cut - batch_end(active, entries, kept)
            else:
                assert log.recoveries == []
            assert active.data.stat().st_size == batch_end(active, entries, kept)
            assert active.dir.stat().st_size == entry_offset(kept)
            check_contents(log, survivors)
            survivors = append_more(log, survivors)
        check_reopens_clean(d, segment_bytes, survivors)


@SETTINGS
@given(
    scenario=SCENARIOS,
    partitions=st.sampled_from([1, 2]),
    data=st.data(),
)
def test_a_batch_directory_cut_at_any_byte_loses_no_batch(
    scenario: Scenario, partitions: int, data: st.DataObject
) -> None:
    """The directory is fsynced lazily (at sealing and closing), so a crash can cut it
    anywhere: every batch past the cut verifies itself and gets its entry back. Only a
    cut into the preamble, which is written once and durable before any batch, loses
    the segment (the header's checksum with it)."""
    history, segment_bytes = scenario
    with tempfile.TemporaryDirectory() as d:
        with ArrowLog.open(d, bank_layout(), config(segment_bytes, partitions)) as log:
            expected = write(log, history)
        p = data.draw(st.integers(0, partitions - 1), label="partition")
        active = segments(d, p)[-1]
        entries = read_entries(active)
        size = active.data.stat().st_size
        directory = active.dir.read_bytes()
        assert len(directory) == entry_offset(len(entries))
        sealed = digests(sealed_files(d, partitions))

        cut = data.draw(st.integers(0, entry_offset(len(entries))), label="cut")
        truncate(active.dir, cut)
        whole = cut >= PREAMBLE_SIZE
        survivors = [
            e for e in expected if whole or e.partition != p or e.position < active.first_position
        ]

        with ArrowLog.open(d, bank_layout(), config(segment_bytes)) as log:
            assert digests(sealed_files(d, partitions)) == sealed
            if whole:
                assert log.recoveries == []
                assert active.dir.read_bytes() == directory  # the same entries, re-created
                assert active.data.stat().st_size == size
            elif entries.size:
                [recovery] = log.recoveries  # the segment was re-created: all of it was cut
                assert recovery.path == str(active.data)
                assert recovery.truncated_bytes == size
            check_contents(log, survivors)
            survivors = append_more(log, survivors)
        check_reopens_clean(d, segment_bytes, survivors)


@SETTINGS
@given(
    scenario=SCENARIOS,
    garbage=st.binary(min_size=1, max_size=3000),
    into=st.sampled_from(["arrows", "dir", "both"]),
)
def test_garbage_after_the_last_batch_is_cut_on_open(
    scenario: Scenario, garbage: bytes, into: str
) -> None:
    history, segment_bytes = scenario
    with tempfile.TemporaryDirectory() as d:
        with ArrowLog.open(d, bank_layout(), config(segment_bytes, 1)) as log:
            expected = write(log, history)
        active = segments(d, 0)[-1]
        batches = len(read_entries(active))
        data_size, dir_size = active.data.stat().st_size, active.dir.stat().st_size
        sealed = digests(sealed_files(d, 1))
        if into in ("arrows", "both"):
            append_bytes(active.data, garbage)
        if into in ("dir", "both"):
            append_bytes(active.dir, garbage)

        with ArrowLog.open(d, bank_layout(), config(segment_bytes)) as log:
            assert digests(sealed_files(d, 1)) == sealed
            [recovery] = log.recoveries
            assert recovery.path == str(active.data)
            assert recovery.kept_batches == batches
            if into == "arrows":
                assert recovery.dropped_batches == 0
            torn = len(garbage) if into != "dir" else 0
            assert recovery.truncated_bytes == torn
            assert active.data.stat().st_size == data_size
            assert active.dir.stat().st_size == dir_size
            check_contents(log, expected)
            expected = append_more(log, expected)
        check_reopens_clean(d, segment_bytes, expected)


def test_a_batch_past_the_directory_that_cannot_verify_itself_is_cut(tmp_path: Path) -> None:
    """Only a batch carrying its body's checksum gets its entry back: one written
    without it (by a version before self-verifying batches) is not trusted."""
    first = [new_event("a", 1, Deposited(5))]
    with ArrowLog.open(tmp_path, bank_layout(), config(1 << 20, 1)) as log:
        log.append(first)
        second = bank_layout().encode([new_event("a", 2, Deposited(7))], 1)
    active = segments(str(tmp_path), 0)[-1]
    append_bytes(active.data, second.serialize().to_pybytes())
    with ArrowLog.open(tmp_path, bank_layout(), config(1 << 20, 1)) as log:
        [recovery] = log.recoveries
        assert (recovery.kept_batches, recovery.truncated_bytes) == (1, second.serialize().size)
        assert [(e.aggregate_id, e.version) for e in all_events(log)] == [("a", 1)]


def test_a_note_is_as_durable_as_its_batch_and_read_back_by_position(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, bank_layout(), config(1 << 20, 1)) as log:
        log.append_partition(0, [new_event("a", 1, Deposited(5))], b"first")
        log.append_partition(0, [new_event("a", 2, Deposited(5))])
        two = [new_event("a", 3, Deposited(5)), new_event("a", 4, Deposited(1))]
        log.append_partition(0, two, b"third")
    truncate(segments(str(tmp_path), 0)[-1].dir, entry_offset(1))  # entries re-created
    with ArrowLog.open(tmp_path, bank_layout(), config(1 << 20, 1)) as log:
        notes = log.partition(0).notes
        assert list(notes(0)) == [(0, b"first"), (2, b"third")]
        assert list(notes(3)) == [(2, b"third")]  # the batch that holds position 3
        assert list(notes(4)) == []
