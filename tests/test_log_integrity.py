"""Integrity: damaged sealed segments are reported precisely, one writer per partition,
and a reader tailing a live log sees whole committed batches only.

The bit-flip tests damage a copy of one pristine log per example and ask
`verify_log` to find the damage: a flipped bit in a batch must be reported against
the segment's ``.arrows`` file at the first byte of the batch that holds it (a CRC
names the batch, not the bit); a flipped bit in a batch-directory entry against the
``.dir`` file at that entry's first byte.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_events import (
    AccountOpened,
    Deposited,
    all_events,
    bank_layout,
    bank_payload,
    in_log_order,
    new_event,
    recorded,
    segments,
)

from store import (
    ArrowLog,
    CorruptionError,
    Fsync,
    LockedError,
    LogConfig,
    LogReader,
    NewEvent,
    RecordedEvent,
    verify_log,
)
from store.disk import ENTRY_SIZE, EOS, PREAMBLE_SIZE, SegmentFiles, entry_offset, read_entries

WRITER = Path(__file__).with_name("crash_writer.py")
STALL_GUARD_S = 120  # not a timing assertion: only so that a hung subprocess fails the test
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def bank_batches(count: int, accounts: int = 12) -> list[list[NewEvent]]:
    """`count` append batches of 1-7 events over `accounts` accounts, versions gap-free."""
    versions = dict.fromkeys((f"acct-{i}" for i in range(accounts)), 0)
    ids = list(versions)
    batches = []
    n = 0
    for b in range(count):
        batch = []
        for _ in range(b % 7 + 1):
            n += 1
            agg = ids[(n * 7 + b) % len(ids)]
            versions[agg] += 1
            batch.append(new_event(agg, versions[agg], bank_payload(versions[agg], n)))
        batches.append(batch)
    return batches


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed log of one partition with several sealed segments; never modified."""
    data_dir = tmp_path_factory.mktemp("pristine")
    config = LogConfig(partitions=1, segment_bytes=8192, fsync=Fsync.ALWAYS)
    with ArrowLog.open(data_dir, bank_layout(), config) as log:
        for batch in bank_batches(60):
            log.append(batch)
    assert len(segments(data_dir, 0)) >= 4, "expected several sealed segments"
    assert list(verify_log(data_dir)) == []
    return data_dir


@contextmanager
def damaged_copy(pristine: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "data"
        shutil.copytree(pristine, copy)
        yield copy


def flip(path: Path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def sealed(data_dir: Path) -> list[SegmentFiles]:
    return segments(data_dir, 0)[:-1]


def batch_region(seg: SegmentFiles) -> tuple[int, int]:
    """From the end of the schema header to the end of the last batch."""
    entries = read_entries(seg)
    return int(entries[0]["offset"]), int(entries[-1]["offset"] + entries[-1]["length"])


# -- bit flips --------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_a_bit_flip_in_a_sealed_batch_is_reported_at_that_batch(
    pristine: Path, data: st.DataObject
) -> None:
    seg = data.draw(st.sampled_from(sealed(pristine)), label="segment")
    start, end = batch_region(seg)
    offset = data.draw(st.integers(start, end - 1), label="offset")
    bit = data.draw(st.integers(0, 7), label="bit")
    entries = read_entries(seg)
    [batch_start] = [
        int(e["offset"])
        for e in entries
        if int(e["offset"]) <= offset < int(e["offset"]) + int(e["length"])
    ]
    with damaged_copy(pristine) as copy:
        target = copy / seg.data.relative_to(pristine)
        flip(target, offset, bit)
        errors = list(verify_log(copy))
    assert [(Path(e.path), e.offset) for e in errors] == [(target, batch_start)], errors
    assert all(isinstance(e, CorruptionError) for e in errors)


@SETTINGS
@given(data=st.data())
def test_a_bit_flip_in_a_sealed_directory_entry_is_reported_at_that_entry(
    pristine: Path, data: st.DataObject
) -> None:
    seg = data.draw(st.sampled_from(sealed(pristine)), label="segment")
    size = seg.dir.stat().st_size
    assert size == entry_offset(len(read_entries(seg)))
    offset = data.draw(st.integers(0, size - 1), label="offset")
    bit = data.draw(st.integers(0, 7), label="bit")
    with damaged_copy(pristine) as copy:
        target = copy / seg.dir.relative_to(pristine)
        flip(target, offset, bit)
        errors = list(verify_log(copy))
    # the preamble (header length and CRC) is reported at 0, an entry at its start
    entry_start = (
        0 if offset < PREAMBLE_SIZE else entry_offset((offset - PREAMBLE_SIZE) // ENTRY_SIZE)
    )
    assert [(Path(e.path), e.offset) for e in errors] == [(target, entry_start)], errors


@SETTINGS
@given(data=st.data())
def test_a_bit_flip_in_a_sealed_schema_header_is_reported(
    pristine: Path, data: st.DataObject
) -> None:
    """Beyond the batches: the header says how every batch of the segment decodes."""
    seg = data.draw(st.sampled_from(sealed(pristine)), label="segment")
    header_end, _ = batch_region(seg)
    offset = data.draw(st.integers(0, header_end - 1), label="offset")
    bit = data.draw(st.integers(0, 7), label="bit")
    with damaged_copy(pristine) as copy:
        target = copy / seg.data.relative_to(pristine)
        flip(target, offset, bit)
        errors = list(verify_log(copy))
    assert [(Path(e.path), e.offset) for e in errors] == [(target, 0)], errors


def test_a_bit_flip_in_a_sealed_end_of_stream_marker_is_reported(pristine: Path) -> None:
    """The marker is what makes a sealed segment a whole stream for any Arrow reader."""
    seg = sealed(pristine)[0]
    _, end = batch_region(seg)
    assert seg.data.read_bytes()[end:] == EOS
    missed = []
    with damaged_copy(pristine) as copy:
        target = copy / seg.data.relative_to(pristine)
        for bit in range(len(EOS) * 8):
            flip(target, end + bit // 8, bit % 8)
            errors = [(Path(e.path), e.offset) for e in verify_log(copy)]
            flip(target, end + bit // 8, bit % 8)  # and back
            if errors != [(target, end)]:
                missed.append((bit, errors))
        assert target.read_bytes() == seg.data.read_bytes()
    assert missed == [], f"{len(missed)} of 64 bit flips in the marker not reported"


# -- one writer per partition -------------------------------------------------------


def wait_for_line(proc: subprocess.Popen[bytes], stderr: Path) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    while b"\n" not in out:
        ready, _, _ = select.select([fd], [], [], STALL_GUARD_S)
        chunk = os.read(fd, 1024) if ready else b""
        if not chunk:
            proc.kill()
            proc.wait()
            pytest.fail(f"the lock holder did not get ready:\n{stderr.read_text()}")
        out += chunk
    return out


def test_a_second_writer_is_refused_while_the_first_lives(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ArrowLog.open(data_dir, bank_layout(), LogConfig(partitions=2)) as log:
        log.append([new_event("acct-x", 1, AccountOpened("Ann", 0))])
    stderr = tmp_path / "holder.err"
    with open(stderr, "wb") as err:
        holder = subprocess.Popen(
            [sys.executable, str(WRITER), "hold", str(data_dir)], stdout=subprocess.PIPE, stderr=err
        )
    try:
        assert wait_for_line(holder, stderr) == b"ready\n"
        for _ in range(2):  # a refused attempt must not disturb the holder's lock either
            with pytest.raises(LockedError) as refused:
                ArrowLog.open(data_dir, bank_layout())
            message = str(refused.value)
            assert "partition 0" in message, message
            assert f"pid {holder.pid}" in message, message
        # Readers are welcome meanwhile, and see what the holder wrote.
        reader = LogReader.open(data_dir, bank_layout())
        assert reader.last_version("acct-x") == 1
        assert [reader.last_version(f"acct-{i}") for i in range(5)] == [1] * 5
        assert holder.poll() is None, "the holder died: the test proved nothing"
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    # The lock dies with its holder: the next writer gets in and sees everything.
    with ArrowLog.open(data_dir, bank_layout()) as log:
        assert log.last_version("acct-x") == 1
        assert [log.last_version(f"acct-{i}") for i in range(5)] == [1] * 5


def test_the_lock_is_per_data_directory(tmp_path: Path) -> None:
    """The contrast case: two writers on two directories do not refuse each other."""
    with (
        ArrowLog.open(tmp_path / "a", bank_layout()) as a,
        ArrowLog.open(tmp_path / "b", bank_layout()) as b,
    ):
        a.append([new_event("x", 1, AccountOpened("A", 0))])
        b.append([new_event("x", 1, AccountOpened("B", 0))])
        assert a.decode(a.read_stream("x"))[0].payload.owner == "A"
        assert b.decode(b.read_stream("x"))[0].payload.owner == "B"
    with ArrowLog.open(tmp_path / "a", bank_layout()), pytest.raises(LockedError):
        ArrowLog.open(tmp_path / "a", bank_layout())


# -- reading while writing ------------------------------------------------------------


_ENTRY = struct.Struct("<QIIqIqqQ")  # the documented directory entry, without its own CRC


def check_reader(reader: LogReader, expected: list[RecordedEvent]) -> None:
    assert all_events(reader) == expected
    assert reader.watermarks() == {0: len(expected)}
    for agg in {e.aggregate_id for e in expected}:
        mine = [e for e in expected if e.aggregate_id == agg]
        assert reader.decode(reader.read_stream(agg)) == mine
        assert reader.last_version(agg) == len(mine)


@contextmanager
def write_in_flight(
    log: ArrowLog, seg: SegmentFiles, events: list[NewEvent], how: str
) -> Iterator[None]:
    """The active segment as it is while the writer is inside `append` for `events`.

    The batch's bytes go first and its directory entry second, so a reader can find
    part of the batch, all of it without its entry, or all of it and part of its entry.
    The files are cut back to their committed size afterwards, before the writer
    appends again (it writes at its own idea of the end).
    """
    data_size, dir_size = seg.data.stat().st_size, seg.dir.stat().st_size
    first = log.watermarks()[0]
    message = bank_layout().encode(events, first).serialize().to_pybytes()
    entry = _ENTRY.pack(data_size, len(message), zlib.crc32(message), first, len(events), 0, 0, 1)
    entry += struct.pack("<I", zlib.crc32(entry))
    written = {
        "part of the batch": (message[: len(message) // 2], b""),
        "the batch without its entry": (message, b""),
        "the batch and part of its entry": (message, entry[: ENTRY_SIZE - 4]),
    }[how]
    try:
        with open(seg.data, "ab") as f:
            f.write(written[0])
        with open(seg.dir, "ab") as f:
            f.write(written[1])
        yield
    finally:
        os.truncate(seg.data, data_size)
        os.truncate(seg.dir, dir_size)


IN_FLIGHT = ["part of the batch", "the batch without its entry", "the batch and part of its entry"]


def test_a_reader_sees_exactly_the_committed_batches_while_a_writer_appends(
    tmp_path: Path,
) -> None:
    config = LogConfig(partitions=1, segment_bytes=4096, fsync=Fsync.ALWAYS)
    with ArrowLog.open(tmp_path, bank_layout(), config) as log:
        reader = LogReader.open(tmp_path, bank_layout())
        check_reader(reader, [])
        expected: list[RecordedEvent] = []
        batches = bank_batches(40, accounts=5)
        for i, batch in enumerate(batches):
            positions = log.append(batch)
            expected = in_log_order(
                [*expected, *(recorded(e, p) for e, p in zip(batch, positions, strict=True))]
            )
            if i + 1 < len(batches):
                nxt = [
                    new_event(e.aggregate_id, log.last_version(e.aggregate_id) + 1, Deposited(1))
                    for e in batches[i + 1][:1]
                ]
                with write_in_flight(log, segments(tmp_path, 0)[-1], nxt, IN_FLIGHT[i % 3]):
                    reader.refresh()
                    check_reader(reader, expected)
                    check_reader(LogReader.open(tmp_path, bank_layout()), expected)
            reader.refresh()
            check_reader(reader, expected)
        assert len(segments(tmp_path, 0)) > 3, "expected the writer to rotate segments"


@pytest.mark.parametrize("header", ["none of it", "half of it"])
def test_a_reader_sees_the_committed_batches_while_a_segment_is_being_created(
    tmp_path: Path, header: str
) -> None:
    """Rotation writes the next segment's directory, then its header to a temporary
    file that is renamed into place.

    A reader that lists the partition in between finds the directory and a partial
    temporary file; the segment holds no batches yet, so the reader must see every
    committed batch of the segments before it and nothing else, whether it refreshes
    or opens.
    """
    config = LogConfig(partitions=1, segment_bytes=4096, fsync=Fsync.ALWAYS)
    with ArrowLog.open(tmp_path, bank_layout(), config) as log:
        reader = LogReader.open(tmp_path, bank_layout())
        expected: list[RecordedEvent] = []
        for batch in bank_batches(30, accounts=3):
            before = len(segments(tmp_path, 0))
            positions = log.append(batch)
            expected = in_log_order(
                [*expected, *(recorded(e, p) for e, p in zip(batch, positions, strict=True))]
            )
            if len(segments(tmp_path, 0)) > before:
                break
            reader.refresh()
        else:
            pytest.fail("the writer never rotated")
        new = segments(tmp_path, 0)[-1]
        complete_header = new.data.read_bytes()
        assert read_entries(new).size == 0
        complete_dir = new.dir.read_bytes()
        tmp = new.data.with_suffix(".arrows.tmp")
        try:
            new.data.unlink()
            tmp.write_bytes(b"" if header == "none of it" else complete_header[:700])
            reader.refresh()
            check_reader(reader, expected)
            check_reader(LogReader.open(tmp_path, bank_layout()), expected)
        finally:
            tmp.replace(new.data)
            new.data.write_bytes(complete_header)
            new.dir.write_bytes(complete_dir)
        reader.refresh()
        check_reader(reader, expected)


def test_a_reader_in_another_process_tails_a_live_writer(tmp_path: Path) -> None:
    """The real thing: a writer process appending and rotating, a reader refreshing.

    After each refresh the reader holds every batch acknowledged before it, at its
    acknowledged position, and only whole batches: positions gap-free, each
    aggregate's versions gap-free, every event decodable.
    """
    data_dir = tmp_path / "data"
    stderr = tmp_path / "writer.err"
    with open(stderr, "wb") as err:
        writer = subprocess.Popen(
            [sys.executable, str(WRITER), "append", str(data_dir), "7", "1", "4096"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    acked: dict[tuple[str, int], tuple[str, int]] = {}
    reader: LogReader | None = None
    buffered = b""
    refreshes = 0
    try:
        assert writer.stdout is not None
        fd = writer.stdout.fileno()
        while len(acked) < 3000:
            ready, _, _ = select.select([fd], [], [], STALL_GUARD_S)
            chunk = os.read(fd, 1 << 16) if ready else b""
            if not chunk:
                writer.kill()
                writer.wait()
                pytest.fail(f"the writer stopped:\n{stderr.read_text()}")
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                for agg, version, event_id, _, offset in json.loads(line):
                    acked[agg, version] = (event_id, offset)
            if reader is None:
                reader = LogReader.open(data_dir, bank_layout())
            reader.refresh()
            refreshes += 1
            events = all_events(reader)
            assert [e.position for e in events] == list(range(len(events)))
            seen = {(e.aggregate_id, e.version): (e.event_id.hex, e.position) for e in events}
            assert len(seen) == len(events), "an (aggregate, version) twice"
            missing = [k for k, v in acked.items() if seen.get(k) != v]
            assert missing == [], f"acknowledged but not seen: {missing[:5]}"
            for agg in {a for a, _ in seen}:
                versions = sorted(v for a, v in seen if a == agg)
                assert versions == list(range(1, len(versions) + 1)), agg
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    assert refreshes > 1
    assert len(segments(data_dir, 0)) > 3, "expected the writer to rotate segments"
