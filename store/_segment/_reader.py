"""Zero-copy, memory-mapped reads of one segment, and its verification."""

from __future__ import annotations

import mmap
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from store._errors import CorruptionError, SchemaError, translate_os_error
from store._gather import BufferMap, gather
from store._layout import Layout
from store._segment._format import (
    ENTRY_DTYPE,
    EOS,
    NOTE,
    SegmentFiles,
    damaged,
    entry_ok,
    misplaced,
    parse_batch,
    read_entries,
    read_preamble,
)


def read_notes(files: SegmentFiles, from_position: int) -> Iterator[tuple[int, bytes]]:
    """The notes of the segment's batches that end past `from_position`, with each
    batch's first position. Read from the file, not a map: this is for the rare reader
    (a shard that opens, or answers a command sent again)."""
    preamble = read_preamble(files)
    if preamble is None:
        return
    entries = read_entries(files)
    ends = entries["first_position"] + entries["count"].astype(np.int64)
    with open(files.data, "rb") as f:
        header = f.read(preamble[0])
        for i in np.flatnonzero(ends > from_position).tolist():
            f.seek(int(entries[i]["offset"]))
            raw = f.read(int(entries[i]["length"]))
            note = parse_batch(header, raw)[1].get(NOTE)
            if note:
                yield int(entries[i]["first_position"]), note


@dataclass(frozen=True, slots=True)
class _Seen:
    """What one refresh of a segment saw. A refresh builds a new one and publishes it
    with one attribute store, so a thread reading meanwhile (a query scanning the log
    while `serve`'s follower refreshes the same reader) sees the refresh before or the
    one after, never half of one."""

    entries: np.ndarray
    starts: np.ndarray  # row offset of each batch within the segment
    rows: int
    buffer: pa.Buffer | None  # the memory map of the stream, covering every entry
    mapped: mmap.mmap | None


class SegmentReader:
    """Zero-copy, memory-mapped reads of one segment's committed batches.

    Safe to share between threads: refreshes take turns (a lock), reads take none.
    """

    def __init__(self, files: SegmentFiles):
        self.files = files
        self.layout: Layout | None = None
        self.sealed = False
        self._seen = _Seen(np.empty(0, ENTRY_DTYPE), np.empty(0, np.int64), 0, None, None)
        # Decoded batches of a sealed segment. It only grows, and grows before a refresh
        # publishes the entries it holds a slot for: an index read off `entries` is
        # always a slot here.
        self._batches: list[pa.RecordBatch | None] = []
        self._buffer_map: BufferMap | None = None
        self._lock = threading.Lock()

    @property
    def entries(self) -> np.ndarray:
        """The committed batches' directory entries."""
        return self._seen.entries

    @property
    def starts(self) -> np.ndarray:
        """The row offset of each batch within the segment."""
        return self._seen.starts

    @property
    def rows(self) -> int:
        return self._seen.rows

    def refresh(self) -> None:
        """Pick up batches committed since the last call (a no-op once sealed)."""
        if self.sealed and self.layout is not None:
            return
        with self._lock:
            seen = self._seen
            new = []
            for entry in read_entries(self.files, len(seen.entries)):
                if not entry_ok(entry):
                    break  # an entry being written right now; the next refresh sees it
                new.append(entry)
            if not new and self.layout is not None:
                return
            entries = seen.entries
            if new:
                entries = np.concatenate([entries, np.array(new, ENTRY_DTYPE)])
            end = int(entries[-1]["offset"] + entries[-1]["length"]) if len(entries) else 0
            buffer, mapped = seen.buffer, seen.mapped
            if buffer is None or end > buffer.size:
                buffer, mapped = self._map(mapped)
            counts = entries["count"].astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            self._batches.extend([None] * (len(entries) - len(self._batches)))
            self._seen = _Seen(entries, starts, int(counts.sum()), buffer, mapped)

    def _map(self, replaced: mmap.mmap | None) -> tuple[pa.Buffer, mmap.mmap | None]:
        """A new map of the whole stream (and the layout, the first time)."""
        if replaced is not None:
            drop_pages(replaced)  # the pages of the mapping this one replaces
        try:
            with open(self.files.data, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else None
        except OSError as err:
            raise translate_os_error(err, f"mapping {self.files.data}") from err
        buffer = pa.py_buffer(mapped if mapped is not None else b"")
        if self.layout is None:
            try:
                schema = pa.ipc.read_schema(pa.BufferReader(buffer))
            except pa.ArrowException as err:
                raise CorruptionError(
                    str(self.files.data),
                    0,
                    f"unreadable schema header ({err}); run `cqrsflow log verify`",
                ) from err
            self.layout = Layout.from_schema(schema)
        return buffer, mapped

    def release(self) -> None:
        """Drop the mapped pages from this process's resident memory.

        They stay in the page cache, and batches read from the map stay valid: a
        page read again is mapped in again. Readers that gather a few rows from a
        large log call this after each read, so that resident memory holds what is
        in use, not every page ever touched.
        """
        mapped = self._seen.mapped
        if mapped is not None:
            drop_pages(mapped)

    def batch(self, i: int) -> pa.RecordBatch:
        """The i-th batch in on-disk form, zero-copy from the memory map."""
        cached = self._batches[i]
        if cached is not None:
            return cached
        # Read `sealed` first: once it is set no refresh replaces the map any more, so
        # a batch cached here was read from the segment's last map.
        sealed = self.sealed
        batch = self._read(self._seen, i)
        if sealed:
            self._batches[i] = batch
        return batch

    def _read(self, seen: _Seen, i: int) -> pa.RecordBatch:
        assert seen.buffer is not None and self.layout is not None
        entry = seen.entries[i]
        offset, length = int(entry["offset"]), int(entry["length"])
        try:
            message = pa.ipc.read_message(seen.buffer.slice(offset, length))
            return pa.ipc.read_record_batch(message, self.layout.disk_schema)
        except pa.ArrowException as err:
            raise CorruptionError(str(self.files.data), offset, f"unreadable batch: {err}") from err

    def take(self, rows: np.ndarray, aggregate_id: str | None) -> pa.RecordBatch:
        """Rows (segment-relative, ascending) as an on-disk batch, copied straight out
        of the memory map; `aggregate_id` when they are all that aggregate's."""
        seen = self._seen
        assert seen.buffer is not None and self.layout is not None
        with self._lock:  # the buffer map grows in place
            if self._buffer_map is None:
                self._buffer_map = BufferMap(self.layout.disk_schema, self.layout.payload_codes())
            buffers = self._buffer_map
            base = seen.buffer.address
            # Offsets within the file, so the batches must come from this very map.
            for i in range(buffers.batches, len(seen.entries)):
                buffers.add(self._read(seen, i), base)
        batch_of = np.searchsorted(seen.starts, rows, side="right") - 1
        local = rows - seen.starts[batch_of]
        raw = np.frombuffer(seen.buffer, dtype=np.uint8)
        taken = gather(raw, buffers, batch_of, local, aggregate_id)
        # The rows were copied out. Rows scattered over a segment map in most of its
        # pages (the kernel maps a fault's neighbours too); kept until the caller is done
        # with every segment, they added up to 200 MB of a 10M-event log at once.
        if seen.mapped is not None:
            drop_pages(seen.mapped)
        return taken

    def verify(self) -> Iterator[CorruptionError]:
        """Check every batch's bytes against its checksum and structure."""
        entries = read_entries(self.files)
        try:
            data = pa.memory_map(str(self.files.data)).read_buffer()
        except OSError as err:
            yield CorruptionError(str(self.files.data), 0, f"cannot map: {err}")
            return
        preamble = read_preamble(self.files)
        if preamble is None:
            yield CorruptionError(
                str(self.files.dir), 0, "directory preamble is missing or damaged"
            )
            return
        header_len, header_crc = preamble
        if data.size < header_len or zlib.crc32(data[:header_len]) != header_crc:
            yield CorruptionError(str(self.files.data), 0, "schema header: checksum mismatch")
            return
        try:
            layout = Layout.from_schema(pa.ipc.read_schema(pa.BufferReader(data[:header_len])))
        except (pa.ArrowException, SchemaError) as err:
            yield CorruptionError(str(self.files.data), 0, f"unreadable schema header: {err}")
            return
        expected = header_len
        position = self.files.first_position
        view = memoryview(data)
        for i, entry in enumerate(entries):
            offset, length = int(entry["offset"]), int(entry["length"])
            problem = misplaced(self.files, i, entry, expected, position, data.size)
            if problem is not None:
                yield problem
                return
            problem = damaged(self.files, i, entry, view)
            if problem is not None:
                yield problem
            else:
                try:
                    message = pa.ipc.read_message(data.slice(offset, length))
                    batch = pa.ipc.read_record_batch(message, layout.disk_schema)
                    batch.validate(full=True)
                    if (
                        batch.num_rows != int(entry["count"])
                        or batch.column(0)[0].as_py() != position
                    ):
                        raise ValueError(
                            "row count or first position differs from its directory entry"
                        )
                except (pa.ArrowException, ValueError) as err:
                    yield CorruptionError(str(self.files.data), offset, f"batch {i}: {err}")
            expected = offset + length
            position += int(entry["count"])
        tail = bytes(view[expected:])
        if self.sealed and tail != EOS:
            what = (
                "a damaged end-of-stream marker"
                if len(tail) == len(EOS)
                else f"{len(tail)} unexpected bytes"
            )
            yield CorruptionError(str(self.files.data), expected, f"{what} after the last batch")


def drop_pages(mapped: mmap.mmap) -> None:
    if hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)
