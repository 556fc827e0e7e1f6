"""Gather rows scattered over many record batches of one memory-mapped segment.

A busy aggregate's events are spread over thousands of small batches; taking them
batch by batch costs tens of microseconds per batch in Python and Arrow call overhead,
and Arrow's take on a chunked array concatenates the chunks first. Since all batches
of a segment live in one memory map, each column's buffers are at known byte offsets
of that map: `BufferMap` records them once per batch, and `gather` copies the wanted
values straight out of the map with numpy, for all batches at once. It covers exactly
the Arrow types the log's layout uses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NONE = -1
_VAR, _BITS = -2, -3  # column kinds besides a fixed byte width
_AGG_ID, _AGG_TYPE, _TYPE = 1, 2, 4  # envelope columns gather treats specially


def _bits(raw: np.ndarray, byte_at: np.ndarray, local: np.ndarray) -> np.ndarray:
    """The bit of each row from bit-packed buffers (little-endian bit order)."""
    shifted = raw[byte_at + (local >> 3)] >> (local & 7).astype(np.uint8)
    return np.asarray(shifted & 1, dtype=bool)


class BufferMap:
    """Byte offsets, within the mapped file, of every buffer of every column per batch."""

    def __init__(self, schema: pa.Schema, payload_codes: dict[int, list[int]]):
        """`payload_codes`: per payload column, the event type codes that have it."""
        self.schema = schema
        self._payload_codes = {c: np.asarray(v, np.int16) for c, v in payload_codes.items()}
        self.columns = len(schema)
        self.batches = 0
        # per column: validity, offsets (var-length only) and data, one entry per batch
        self.validity: list[list[int]] = [[] for _ in range(self.columns)]
        self.offsets: list[list[int]] = [[] for _ in range(self.columns)]
        self.data: list[list[int]] = [[] for _ in range(self.columns)]
        self._arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.nullable = [False] * self.columns  # per column: has any batch a null in it?
        self.types = [(field.type, _kind(field.type)) for field in schema]

    def add(self, batch: pa.RecordBatch, base: int) -> None:
        """Record where `batch`'s buffers are; `base` is the map's address."""
        for c in range(self.columns):
            column = batch.column(c)
            if column.offset:
                raise ValueError("sliced arrays are not laid out in the map")
            buffers = column.buffers()
            validity = buffers[0]
            if validity is not None and column.null_count:
                self.validity[c].append(validity.address - base)
                self.nullable[c] = True
            else:
                self.validity[c].append(_NONE)
            if len(buffers) == 3:  # string / binary: validity, offsets, data
                self.offsets[c].append(buffers[1].address - base)
                data = buffers[2]
            else:
                self.offsets[c].append(_NONE)
                data = buffers[1]
            self.data[c].append(data.address - base if data is not None else _NONE)
        self.batches += 1
        self._arrays = None

    def read_on(self, column: int, codes: np.ndarray) -> np.ndarray | None:
        """Rows (a mask) whose event type has this payload column; None for envelope ones."""
        wanted = self._payload_codes.get(column)
        return None if wanted is None else np.isin(codes, wanted)

    def arrays(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self._arrays is None:
            self._arrays = [
                (
                    np.asarray(self.validity[c], np.int64),
                    np.asarray(self.offsets[c], np.int64),
                    np.asarray(self.data[c], np.int64),
                )
                for c in range(self.columns)
            ]
        return self._arrays


def gather(
    raw: np.ndarray,
    buffers: BufferMap,
    batch_of: np.ndarray,
    local: np.ndarray,
    aggregate_id: str | None,
) -> pa.RecordBatch:
    """Rows (`batch_of[i]`, `local[i]`) from the mapped segment `raw`.

    Reading scattered rows is bound by memory latency, one cache miss per value, so
    this reads only what it must: a payload column only on rows whose event type has
    that field, and when the rows are all one aggregate's (`aggregate_id` given) its
    id and type not at all, since they are the same on every row.
    """
    n = len(local)
    # Arrow IPC aligns every buffer to 8 bytes, so typed views index values directly.
    whole = raw[: len(raw) - len(raw) % 8]
    views = {1: raw, 2: whole.view("<i2"), 4: whole.view("<i4"), 8: whole.view("<i8")}
    columns = buffers.arrays()
    codes = views[2][(columns[_TYPE][2][batch_of] >> 1) + local]
    arrays = []
    for c, (validity_at, offsets_at, data_at) in enumerate(columns):
        arrow_type, kind = buffers.types[c]
        if c == _AGG_ID and aggregate_id is not None:
            arrays.append(_repeat_string(aggregate_id.encode(), n, arrow_type))
            continue
        if c == _AGG_TYPE and aggregate_id is not None:
            first = views[1][data_at[batch_of[0]] + local[0]] if n else 0
            arrays.append(pa.array(np.full(n, first, np.int8), arrow_type))
            continue
        if c == _TYPE:
            arrays.append(pa.array(codes, arrow_type))
            continue
        read = buffers.read_on(c, codes)  # rows whose event type has this column
        if read is not None:
            if not read.any():
                arrays.append(pa.nulls(n, arrow_type))
                continue
            b, at_row = batch_of[read], local[read]
        else:
            b, at_row = batch_of, local
        valid = None
        if buffers.nullable[c] or read is not None:
            valid_read = np.ones(len(at_row), dtype=bool)
            valid_in = validity_at[b]
            has_bitmap = valid_in != _NONE
            valid_read[has_bitmap] = _bits(raw, valid_in[has_bitmap], at_row[has_bitmap])
            if read is None:
                valid = valid_read
            else:
                valid = np.zeros(n, dtype=bool)
                valid[read] = valid_read
        data_in = data_at[b]
        if kind == _VAR:
            at = (offsets_at[b] >> 2) + at_row
            starts = views[4][at]
            lengths_read = views[4][at + 1] - starts
            lengths = lengths_read if read is None else np.zeros(n, np.int32)
            if read is not None:
                lengths[read] = lengths_read
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            source = np.repeat(data_in + starts, lengths_read)
            source += np.arange(len(source)) - np.repeat(
                offsets[:-1] if read is None else offsets[:-1][read], lengths_read
            )
            out = [pa.py_buffer(offsets), pa.py_buffer(raw[source])]
        elif kind == _BITS:
            bits = _bits(raw, data_in, at_row)
            out = [pa.py_buffer(np.packbits(_scatter(bits, read, n), bitorder="little"))]
        elif kind == 16:  # event ids: two int64 words each
            at = (data_in >> 3) + at_row * 2
            out = [pa.py_buffer(_scatter(views[8][np.stack([at, at + 1], axis=1)], read, n))]
        else:
            out = [pa.py_buffer(_scatter(views[kind][(data_in // kind) + at_row], read, n))]
        if valid is None:
            arrays.append(pa.Array.from_buffers(arrow_type, n, [None, *out], 0))
        else:
            nulls = n - int(np.count_nonzero(valid))
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
            arrays.append(pa.Array.from_buffers(arrow_type, n, [bitmap, *out], nulls))
    return pa.RecordBatch.from_arrays(arrays, schema=buffers.schema)


def _scatter(values: np.ndarray, read: np.ndarray | None, n: int) -> np.ndarray:
    """Values read on the rows `read` placed in an n-row column (zeros elsewhere)."""
    if read is None:
        return values
    full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    full[read] = values
    return full


def _repeat_string(value: bytes, n: int, arrow_type: pa.DataType) -> pa.Array:
    offsets = np.arange(n + 1, dtype=np.int32) * len(value)
    return pa.Array.from_buffers(
        arrow_type, n, [None, pa.py_buffer(offsets), pa.py_buffer(value * n)], 0
    )


def _kind(arrow_type: pa.DataType) -> int:
    if pa.types.is_string(arrow_type) or pa.types.is_binary(arrow_type):
        return _VAR
    if pa.types.is_boolean(arrow_type):
        return _BITS
    if arrow_type.byte_width in (1, 2, 4, 8, 16):
        return int(arrow_type.byte_width)
    raise TypeError(f"the log has no columns of type {arrow_type}")
