"""Recovery of the active segment on open: the longest prefix of sound batches, the rest cut.

The directory is fsynced lazily (see `store._segment._format`), so a durable batch may
have lost its entry: one that verifies itself by its body CRC gets its entry back."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from store._errors import CorruptionError, SchemaError
from store._layout import Layout
from store._segment._format import (
    BODY_CRC,
    ENTRY_DTYPE,
    EOS,
    SegmentFiles,
    damaged,
    entry_bytes,
    entry_offset,
    misplaced,
    parse_batch,
    read_entries,
    read_preamble,
)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening a segment for writing had to cut off its tail."""

    path: str
    kept_batches: int
    dropped_batches: int
    truncated_bytes: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.path}: truncated a torn tail of {self.truncated_bytes} bytes "
            f"({self.dropped_batches} uncommitted batch(es)): {self.reason}"
        )


def unlisted_entries(data: bytes, header: bytes, offset: int, position: int) -> Iterator[bytes]:
    """Directory entries for the whole batches written after the last entry that
    verify by their own body CRC and follow on in position; up to the first that does
    not (a torn write, or a batch written before messages verified themselves)."""
    while offset < len(data):
        stream = pa.BufferReader(pa.py_buffer(data).slice(offset))
        try:
            message = pa.ipc.read_message(stream)
            batch, metadata = parse_batch(header, data[offset : offset + stream.tell()])
        except (pa.ArrowException, OSError, EOFError, StopIteration):  # not a whole batch
            return
        crc = metadata.get(BODY_CRC)
        if crc is None or int(crc) != zlib.crc32(message.body):
            return
        if batch.num_rows == 0 or batch.column(0)[0].as_py() != position:
            return
        raw = data[offset : offset + stream.tell()]
        codes = batch.column(4).to_numpy()
        timestamps = batch.column(8).cast(pa.int64()).to_numpy()
        yield entry_bytes(batch, offset, raw, codes, timestamps)
        offset += len(raw)
        position += batch.num_rows


def recover(files: SegmentFiles) -> tuple[Layout | None, int, Recovery | None]:
    """Cut the active segment back to its last whole, checksummed batch.

    Returns the segment's layout (None when even its header is torn, in which
    case the segment holds nothing and should be recreated), the number of
    batches kept, and what was cut if anything.
    """
    size = files.data.stat().st_size
    with open(files.data, "rb") as f:
        data = f.read()
    preamble = read_preamble(files)
    entries = read_entries(files) if preamble else np.empty(0, ENTRY_DTYPE)
    if (
        preamble is None
        or len(data) < preamble[0]
        or zlib.crc32(data[: preamble[0]]) != preamble[1]
    ):
        # Only damage can do this (the header is durable before any batch is
        # written): nothing of the segment can be read, so it starts again empty.
        report = None
        lost = len(entries) if preamble else size > _parsable_header_length(data)
        if lost:
            reason = "the schema header is cut short or damaged; the segment starts again empty"
            report = Recovery(str(files.data), 0, len(entries), size, reason)
        return None, 0, report
    header_len = preamble[0]
    try:
        layout = Layout.from_schema(pa.ipc.read_schema(pa.BufferReader(data[:header_len])))
    except (pa.ArrowException, SchemaError) as err:
        raise CorruptionError(str(files.data), 0, f"unreadable schema header: {err}") from err
    dir_size = files.dir.stat().st_size
    expected_offset = header_len
    expected_position = files.first_position
    kept = 0
    reason = ""
    view = memoryview(data)
    for entry in entries:
        problem = misplaced(files, kept, entry, expected_offset, expected_position, size)
        problem = problem or damaged(files, kept, entry, view)
        if problem is not None:
            reason = problem.reason
            break
        expected_offset = int(entry["offset"]) + int(entry["length"])
        expected_position += int(entry["count"])
        kept += 1
    end = expected_offset
    if not reason and end < size:
        # Durable batches whose directory entries were not (see the module's docstring).
        relisted = b"".join(unlisted_entries(data, data[:header_len], end, expected_position))
        if relisted:
            with open(files.dir, "r+b") as f:
                f.truncate(entry_offset(kept))
                f.seek(entry_offset(kept))
                f.write(relisted)
                os.fsync(f.fileno())
            entries = read_entries(files)
            kept = len(entries)
            end = int(entries[-1]["offset"] + entries[-1]["length"])
            dir_size = entry_offset(kept)
    report = None
    if end != size or entry_offset(kept) != dir_size:
        dropped = len(entries) - kept
        if not reason:
            reason = "bytes past the last directory entry (an unacknowledged write)"
            if size == end + len(EOS) and data[end:] == EOS and kept == len(entries):
                reason = "end-of-stream marker of an unfinished rotation"
        report = Recovery(str(files.data), kept, dropped, size - end, reason)
        with open(files.data, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
        with open(files.dir, "r+b") as f:
            f.truncate(entry_offset(kept))
            os.fsync(f.fileno())
    return layout, kept, report


def _parsable_header_length(data: bytes) -> int:
    """The length of the schema header at the start of `data`, or 0 if it does not parse."""
    try:
        return int(pa.ipc.read_schema(pa.BufferReader(data)).serialize().size)
    except pa.ArrowException:
        return 0
