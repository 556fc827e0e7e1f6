"""The per-aggregate index: which rows of a segment belong to an aggregate.

While a segment is active the index is a dict from aggregate id to its rows in
that segment, built at append time. When the segment is sealed the dict is written
beside it as ``<segment>.idx``, an Arrow IPC file with one row per aggregate sorted
by id: ``key`` (the id's UTF-8 bytes, fixed width, NUL-padded), ``last_version`` and
``rows`` (its row numbers within the segment, in version order). Opened with a
memory map, a lookup is a binary search over the keys, with no Python objects per
aggregate. The index is derived data: a missing or damaged one is rebuilt from the
segment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from store._errors import translate_os_error


class ActiveIndex:
    """Rows per aggregate in the segment being written."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}

    def add(self, aggregate_ids: Iterable[str], first_row: int) -> None:
        rows = self.rows
        for row, agg in enumerate(aggregate_ids, first_row):
            found = rows.get(agg)
            if found is None:
                rows[agg] = [row]
            else:
                found.append(row)

    def lookup(self, aggregate_id: str) -> np.ndarray:
        return np.asarray(self.rows.get(aggregate_id, ()), dtype=np.int64)


def write_index(path: Path, batches: Sequence[pa.RecordBatch]) -> None:
    """Build a sealed segment's index from its batches, vectorised, and write it."""
    if batches:
        ids = pa.chunked_array([b.column(1) for b in batches]).combine_chunks()
        versions = pa.chunked_array([b.column(3) for b in batches]).to_numpy()
    else:
        ids, versions = pa.array([], pa.string()), np.zeros(0, np.int64)
    encoded = ids.dictionary_encode()
    codes = encoded.indices.to_numpy()
    unique = encoded.dictionary
    keys = _fixed_width(unique)
    width = keys.dtype.itemsize
    # Rows grouped by aggregate, groups in key order, rows in position (= version) order.
    rank = np.empty(len(keys), dtype=np.int64)
    rank[np.argsort(keys, kind="stable")] = np.arange(len(keys))
    rows = np.argsort(rank[codes], kind="stable").astype(np.int32)
    counts = np.bincount(rank[codes], minlength=len(keys)).astype(np.int32)
    offsets = np.zeros(len(keys) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    last_rows = rows[offsets[1:] - 1] if len(keys) else np.zeros(0, np.int32)
    table = pa.table(
        {
            "key": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(keys), [None, pa.py_buffer(np.sort(keys).tobytes())]
            ),
            "last_version": pa.array(versions[last_rows], pa.int64()),
            "rows": pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows)),
        }
    )
    tmp = path.with_suffix(".idx.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        os.replace(tmp, path)
    except OSError as err:
        raise translate_os_error(err, f"writing index {path}") from err


def _fixed_width(ids: pa.Array) -> np.ndarray:
    """Aggregate ids as a NUL-padded fixed-width bytes array, which numpy can binary-search."""
    encoded = [a.encode() for a in ids.to_pylist()]
    width = max((len(k) for k in encoded), default=1) or 1
    return np.array(encoded, dtype=f"S{width}")


class SealedIndex:
    """A memory-mapped sealed index; lookups are binary searches."""

    def __init__(self, path: Path):
        source = pa.memory_map(str(path))
        table = pa.ipc.open_file(source).read_all().combine_chunks()
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

    def find(self, aggregate_id: str) -> int:
        """The aggregate's slot, or -1."""
        key = aggregate_id.encode()
        if len(key) > self.width or not len(self.keys):
            return -1
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key:
            return i
        return -1

    def lookup(self, aggregate_id: str) -> np.ndarray:
        i = self.find(aggregate_id)
        if i < 0:
            return np.zeros(0, np.int64)
        return self.flat[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)

    def items(self) -> tuple[list[str], list[int]]:
        """Every aggregate id with its last version in this segment."""
        ids = [k.decode() for k in self.keys.tolist()]
        return ids, self.last_version.tolist()
