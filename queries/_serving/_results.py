"""The L2 result cache: answers by key, large ones compressed, identical ones shared.

`ResultStore` keeps query answers (Arrow tables) in a policy cache bounded by entries
and bytes. What it stores for an answer is a `Blob`:

- an answer under `compress_from` bytes is kept as the table itself: a hit returns it
  as is, no copy (the path of repeated dashboards and point queries);
- a larger one is kept as an Arrow IPC stream compressed with lz4 (or zstd), if that
  saves at least a fifth: a hit decodes it. Measured on bank view results (`account`
  strings and three int64s, 2-core machine): lz4 keeps 45 % of the bytes, and decoding
  costs 0.03 ms for 40 KB, 0.08 ms for 200 KB, 1 ms for 4 MB, against 2.4, 4.2 and 14 ms
  for DuckDB to compute them; below ~64 KB the fixed cost of an IPC stream (~40 µs)
  buys too little memory. zstd keeps 20 % but decodes 4x slower.
- answers with equal content share one blob (found by a CRC-32 of the table's buffers
  or of the compressed stream, then compared), so twenty dashboards asking for the same
  numbers in different words hold them once.

Each entry is weighed at its blob's full size even when the blob is shared, so the
byte bound holds whatever is shared; `unique_bytes` says what is actually held.
"""

from __future__ import annotations

import threading
import weakref
import zlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from queries._cache import ENTRY_OVERHEAD, Cache, Policy, make_cache

Compression = Literal["lz4", "zstd"]

# Answers of at least this many bytes are compressed (see the module docstring).
COMPRESS_FROM = 64 * 1024
# ... and kept compressed only if that leaves at most this share of the bytes.
_WORTH = 0.8


class Blob:
    """One stored answer: the table, or its compressed IPC stream."""

    __slots__ = ("__weakref__", "nbytes", "packed", "raw_bytes", "table")

    def __init__(self, table: pa.Table | None, packed: pa.Buffer | None, raw_bytes: int):
        self.table = table
        self.packed = packed
        self.raw_bytes = raw_bytes
        self.nbytes = raw_bytes if packed is None else packed.size

    def unpack(self) -> pa.Table:
        if self.table is not None:
            return self.table
        assert self.packed is not None
        return pa.ipc.open_stream(self.packed).read_all()


@dataclass(slots=True)
class CachedResult:
    """An answer in the cache and what it was read from.

    `table` is the answer itself when stored uncompressed (the fast path), else None and
    `blob.unpack()` decodes it. `read_from` is what freshness is judged by (the views'
    generation and watermark, or the log's positions); `stored` a `time.monotonic()`.
    """

    table: pa.Table | None
    blob: Blob
    read_from: tuple[Any, ...]
    stored: float

    def answer(self) -> pa.Table:
        table = self.table
        return table if table is not None else self.blob.unpack()


def pack(table: pa.Table, compression: Compression | None) -> pa.Buffer:
    """`table` as one Arrow IPC stream, its buffers compressed with `compression`."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def unpack(data: pa.Buffer | bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _crc_of_buffers(table: pa.Table) -> int:
    """A CRC-32 of the table's shape and buffers, read in place (no copy)."""
    crc = zlib.crc32(f"{table.schema}|{table.num_rows}".encode())
    for column in table.columns:
        for chunk in column.chunks:
            crc = _crc_of_array(chunk, crc)
    return crc


def _crc_of_array(array: pa.Array, crc: int) -> int:
    crc = zlib.crc32(f"{array.offset},{len(array)},{array.null_count}".encode(), crc)
    for buffer in array.buffers():
        crc = zlib.crc32(b"-" if buffer is None else memoryview(buffer), crc)
    if isinstance(array, pa.DictionaryArray):  # its dictionary is not among its buffers
        crc = _crc_of_array(array.dictionary, crc)
    return crc


class ResultStore:
    """L2: answers by key in a policy cache, compressed when large, deduplicated."""

    def __init__(
        self,
        policy: Policy = "arc",
        max_entries: int = 4096,
        max_bytes: int | None = 256 * 2**20,
        *,
        compression: Compression | None = "lz4",
        compress_from: int = COMPRESS_FROM,
        name: str = "results",
        metrics: bool = True,
    ) -> None:
        self.compression = compression
        self.compress_from = compress_from
        self.cache: Cache[Hashable, CachedResult] = make_cache(
            policy,
            max_entries,
            max_bytes,
            weigh=_weigh,
            name=name,
            tier="L2",
            threadsafe=True,
            metrics=metrics,
        )
        # content digest -> the blob holding it; a blob no entry holds disappears
        self._blobs: weakref.WeakValueDictionary[tuple[int, int, bool], Blob] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()
        self.shared = 0  # answers stored by pointing at an equal blob already held
        self.compressed = 0  # answers stored compressed

    def get(self, key: Hashable) -> CachedResult | None:
        return self.cache.get(key)

    def put(
        self, key: Hashable, table: pa.Table, read_from: tuple[Any, ...], stored: float
    ) -> CachedResult:
        """Store `table` under `key`; the entry (held unless the policy declined it)."""
        blob = self.blob_of(table)
        entry = CachedResult(blob.table, blob, read_from, stored)
        self.cache.put(key, entry)
        return entry

    def blob_of(self, table: pa.Table) -> Blob:
        """The blob for `table`'s content: one already held if equal, else a new one."""
        raw = table.nbytes
        packed = None
        if self.compression is not None and raw >= self.compress_from:
            candidate = pack(table, self.compression)
            if candidate.size <= raw * _WORTH:
                packed = candidate
        if packed is not None:
            digest = (zlib.crc32(memoryview(packed)), packed.size, True)
        else:
            digest = (_crc_of_buffers(table), raw, False)
        with self._lock:
            held = self._blobs.get(digest)
            if held is not None and (
                held.packed.equals(packed)
                if packed is not None and held.packed is not None
                else held.table is not None and held.table.equals(table)
            ):
                self.shared += 1
                return held
            blob = Blob(None if packed is not None else table, packed, raw)
            self._blobs[digest] = blob
            if packed is not None:
                self.compressed += 1
            return blob

    def discard(self, key: Hashable) -> None:
        self.cache.pop(key)

    def clear(self) -> None:
        self.cache.clear()

    def unique_bytes(self) -> int:
        """Bytes of the distinct blobs held (what sharing leaves of `cache.bytes`)."""
        with self._lock:
            return sum(b.nbytes for b in list(self._blobs.values()))

    def __len__(self) -> int:
        return len(self.cache)


def _weigh(entry: CachedResult) -> int:
    return entry.blob.nbytes + ENTRY_OVERHEAD
