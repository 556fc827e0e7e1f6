"""The per-aggregate index: which rows of a segment belong to an aggregate.

An aggregate's stream is named by its key, its id and its type (`store._streams`).
While a segment is active its index is a dict from stream key to its rows in that
segment, folded in lazily by readers. When the segment is sealed, the index is built
from the segment with Arrow and numpy and written beside it as ``<segment>.idx``, an
Arrow IPC file with one row per stream sorted by key: ``key`` (the key's UTF-8 bytes,
fixed width, NUL-padded), ``last_version``, ``rows`` (its row numbers within the
segment, in version order) and ``hot_start``. Its schema metadata says the index's
format: an index of another format (one keyed by id alone, before streams had a type)
is rebuilt like a missing one. Opened with a memory map, a lookup is a
binary search over the keys, with no Python objects per aggregate.

Hot streams. Reading rows scattered over a segment costs a cache miss per value, so a
busy aggregate's long history is slow to gather. An aggregate with at least
`HOT_ROWS` events in a sealed segment therefore also gets its rows copied, contiguous
and in version order, into ``<segment>.hot``; ``hot_start`` is where they begin
(-1 for the others). The copy costs disk only for busy aggregates, and turns their
reads into one zero-copy slice per segment.

Both files are derived data: a missing or damaged one is rebuilt from the segment.
"""

from __future__ import annotations

import mmap
import os
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from store._errors import translate_os_error
from store._layout import Layout


class ActiveIndex:
    """Rows per aggregate in the segment being written.

    Each aggregate's rows are a chain: its last row, and for every row the previous row
    of the same aggregate. A dict entry per aggregate and four bytes per row, instead
    of a list per aggregate and an int object per row: for the active segments of a
    busy log that is hundreds of MB less (`cqrsflow bench commands`, peak RSS).
    """

    def __init__(self) -> None:
        self.last_row: dict[str, int] = {}
        self.previous = array("i")  # row -> the aggregate's previous row, or -1
        self.versions = array("q")  # row -> its version
        self.first_row = 0  # rows below this were folded into another index

    def add(self, streams: list[str], versions: list[int], first_row: int) -> None:
        if not self.previous:
            self.first_row = first_row
        last_row = self.last_row
        get = last_row.get
        previous: list[int] = []
        link = previous.append
        for row, agg in enumerate(streams, first_row):
            link(get(agg, -1))
            last_row[agg] = row
        self.previous.extend(previous)
        self.versions.extend(versions)

    def lookup(self, stream: str) -> tuple[np.ndarray, int, int]:
        """The aggregate's rows in this segment, its last version (0 if none), and -1:
        the active segment has no hot streams."""
        row = self.last_row.get(stream, -1)
        if row < 0:
            return np.zeros(0, np.int64), 0, -1
        first, previous = self.first_row, self.previous
        last_version = self.versions[row - first]
        rows = []
        while row >= 0:
            rows.append(row)
            row = previous[row - first]
        rows.reverse()
        return np.array(rows, dtype=np.int64), last_version, -1


HOT_ROWS = 64


INDEX_FORMAT = b"2"  # 2: keyed by stream (id and type); 1 (no marker): by id alone
_FORMAT_KEY = b"cqrsflow.index"


def write_index(path: Path, batches: Sequence[pa.RecordBatch], layout: Layout) -> None:
    """Build a sealed segment's index (and hot streams) from its batches (of the
    segment's own `layout`), and write them."""
    if batches:
        ids = pa.chunked_array([layout.batch_keys(b) for b in batches]).combine_chunks()
        versions = pa.chunked_array([b.column(3) for b in batches]).to_numpy()
    else:
        ids, versions = pa.array([], pa.string()), np.zeros(0, np.int64)
    # Sorted unique keys, and each row's rank among them. With numpy on fixed-width
    # bytes rather than Arrow's dictionary_encode and a Python bytes object per id:
    # those took 55 MB at once for a 32 MB segment, at each rotation.
    keys, rank = np.unique(_fixed_width(ids), return_inverse=True)
    width = keys.dtype.itemsize
    # Rows grouped by aggregate, groups in key order, rows in position (= version) order.
    rows = np.argsort(rank, kind="stable").astype(np.int32)
    counts = np.bincount(rank, minlength=len(keys)).astype(np.int32)
    del rank
    offsets = np.zeros(len(keys) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    last_rows = rows[offsets[1:] - 1] if len(keys) else np.zeros(0, np.int32)
    hot_start = _write_hot(path.with_suffix(".hot"), batches, rows, counts, offsets)
    table = pa.table(
        {
            "key": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(keys), [None, pa.py_buffer(keys.tobytes())]
            ),
            "last_version": pa.array(versions[last_rows], pa.int64()),
            "rows": pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows)),
            "hot_start": pa.array(hot_start, pa.int64()),
        },
        metadata={_FORMAT_KEY: INDEX_FORMAT},
    )
    tmp = path.with_suffix(".idx.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        os.replace(tmp, path)
    except OSError as err:
        raise translate_os_error(err, f"writing index {path}") from err
    # Arrow's allocator keeps what the build freed for reuse; a rotation is rare, and
    # until the next one that is tens of MB resident for nothing.
    pa.default_memory_pool().release_unused()


def _write_hot(
    path: Path,
    batches: Sequence[pa.RecordBatch],
    rows: np.ndarray,
    counts: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """Copy the rows of aggregates with at least HOT_ROWS events, clustered by key."""
    hot_start = np.full(len(counts), -1, dtype=np.int64)
    hot = np.flatnonzero(counts >= HOT_ROWS)
    if not len(hot):
        path.unlink(missing_ok=True)
        return hot_start
    hot_start[hot] = np.cumsum(counts[hot]) - counts[hot]
    wanted = np.concatenate([rows[offsets[k] : offsets[k + 1]] for k in hot])
    # Take batch by batch in position order, then put the rows in key order.
    by_position = np.argsort(wanted, kind="stable")
    starts = np.cumsum([0] + [b.num_rows for b in batches[:-1]])
    sorted_rows = wanted[by_position]
    which = np.searchsorted(starts, sorted_rows, side="right") - 1
    pieces = []
    for b in np.unique(which).tolist():
        local = sorted_rows[which == b] - starts[b]
        pieces.append(batches[b].take(pa.array(local)))
    taken = pa.Table.from_batches(pieces).combine_chunks()
    key_order = np.empty_like(by_position)
    key_order[by_position] = np.arange(len(by_position))
    clustered = taken.take(pa.array(key_order))
    tmp = path.with_suffix(".hot.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, clustered.schema) as w:
            w.write_table(clustered.combine_chunks(), max_chunksize=len(wanted))
        os.replace(tmp, path)
    except OSError as err:
        raise translate_os_error(err, f"writing hot streams {path}") from err
    return hot_start


def _fixed_width(ids: pa.Array) -> np.ndarray:
    """Aggregate ids (UTF-8) as a NUL-padded fixed-width bytes array, which numpy can
    sort and binary-search: copied byte column by byte column from the Arrow buffers,
    a few rows at a time, so that the index arrays are the only large temporaries."""
    n = len(ids)
    if not n:
        return np.zeros(0, dtype="S1")
    _, offsets_buffer, data_buffer = ids.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, ids.offset * 4).astype(np.int64)
    lengths = np.diff(offsets)
    width = int(lengths.max()) or 1
    out = np.zeros((n, width), np.uint8)
    if data_buffer is None:  # every id empty
        return out.view(f"S{width}").ravel()
    data = np.frombuffer(data_buffer, np.uint8)
    step = 1 << 16
    for start in range(0, n, step):
        at, length = offsets[start : start + step], lengths[start : start + step]
        block = out[start : start + step]
        for j in range(width):
            has = np.flatnonzero(length > j)
            block[has, j] = data[at[has] + j]
    return out.view(f"S{width}").ravel()


class SealedIndex:
    """A memory-mapped sealed index; lookups are binary searches.

    Each lookup drops the pages it mapped once it is done (see `release`): a batch of a
    few hundred cold aggregates touches nearly every page of every sealed index it
    searches, so pages kept between lookups add up to every index of the log (160 MB
    of resident memory at 10M events over 1M aggregates). Mapping them in again from
    the page cache costs ~0.15 ms per lookup of a 7 MB index, a few percent of a cold
    batch's read.
    """

    def __init__(self, path: Path):
        self.path = path
        self._hot: pa.RecordBatch | None = None
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:  # mmap refuses an empty file
                raise OSError(f"{path}: empty index")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        source = pa.BufferReader(pa.py_buffer(self._map))
        table = pa.ipc.open_file(source).read_all().combine_chunks()
        if (table.schema.metadata or {}).get(_FORMAT_KEY) != INDEX_FORMAT:
            self._map.close()
            raise KeyError(f"{path}: an index of another format; rebuild it")
        self.hot_start = table.column("hot_start").to_numpy()
        key = table.column("key").chunk(0) if table.num_rows else pa.array([], pa.binary(1))
        width = key.type.byte_width
        self.keys = np.frombuffer(
            key.buffers()[1], dtype=f"S{width}", count=len(key), offset=key.offset * width
        )
        self.width = width
        self.last_version = table.column("last_version").to_numpy()
        rows = table.column("rows").chunk(0) if table.num_rows else None
        if rows is None:
            self.offsets = np.zeros(1, np.int32)
            self.flat = np.zeros(0, np.int32)
        else:
            self.offsets = rows.offsets.to_numpy()
            self.flat = rows.values.to_numpy()

    def __len__(self) -> int:
        return len(self.keys)

    def release(self) -> None:
        """Drop the index's mapped pages from resident memory (they stay in the page
        cache). Binary searches over the indexes of every segment of a large log
        otherwise leave most of their pages resident: a hundred MB at 10M events."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def find(self, stream: str) -> int:
        """The stream's slot, or -1 (its pages stay mapped: the caller reads on)."""
        key = stream.encode()
        if len(key) > self.width or not len(self.keys):
            return -1
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key:
            return i
        return -1

    def lookup(self, stream: str) -> tuple[np.ndarray, int, int]:
        """The aggregate's rows in this segment, its last version (0 if none), and
        where its rows start in the hot streams (-1 if it has none there)."""
        i = self.find(stream)
        if i < 0:
            self.release()
            return np.zeros(0, np.int64), 0, -1
        rows = self.flat[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)
        found = rows, int(self.last_version[i]), int(self.hot_start[i])
        self.release()  # all of it was copied out
        return found

    def lookup_many(self, streams: list[str]) -> list[tuple[str, np.ndarray, int, int]]:
        """`lookup` for many aggregates in one binary search; only those found."""
        if not len(self.keys) or not streams:
            return []
        if len(streams) == 1:  # one aggregate: a scalar search costs a tenth
            rows, last, hot_start = self.lookup(streams[0])
            return [(streams[0], rows, last, hot_start)] if len(rows) else []
        encoded = [a.encode() for a in streams]
        fits = [i for i, k in enumerate(encoded) if len(k) <= self.width]
        keys = np.array([encoded[i] for i in fits], dtype=f"S{self.width}")
        slots = np.searchsorted(self.keys, keys)
        inside = slots < len(self.keys)
        found = np.zeros(len(keys), dtype=bool)
        found[inside] = self.keys[slots[inside]] == keys[inside]
        hit = np.flatnonzero(found)
        if not len(hit):
            self.release()
            return []
        at = slots[hit]
        # Every found aggregate's rows in one gather, then split per aggregate.
        starts = self.offsets[at].astype(np.int64)
        counts = self.offsets[at + 1] - starts
        ends = np.cumsum(counts)
        rows = self.flat[np.repeat(starts - (ends - counts), counts) + np.arange(ends[-1])]
        out = list(
            zip(
                [streams[fits[j]] for j in hit.tolist()],
                np.split(rows.astype(np.int64), ends[:-1]),
                self.last_version[at].tolist(),
                self.hot_start[at].tolist(),
                strict=True,
            )
        )
        self.release()  # all of it was copied out
        return out

    def hot_rows(self, start: int, count: int) -> pa.RecordBatch:
        """`count` rows of the hot streams from `start`: a zero-copy slice of the map."""
        if self._hot is None:
            reader = pa.ipc.open_file(pa.memory_map(str(self.path.with_suffix(".hot"))))
            self._hot = reader.get_batch(0)
        return self._hot.slice(start, count)
