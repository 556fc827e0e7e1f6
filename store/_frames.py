"""The log as one Arrow table or a polars LazyFrame, zero-copy from the memory maps."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

import polars as pl
import pyarrow as pa

from store._layout import ENVELOPE_NAMES


class _Readable(Protocol):
    def read_all(
        self, from_position: int | Mapping[int, int] = ...
    ) -> Iterator[pa.RecordBatch]: ...


def log_table(log: _Readable, from_position: int | Mapping[int, int] = 0) -> pa.Table:
    """Every event as one table; segments written with other event classes are
    widened with null columns so that all rows share one schema."""
    by_schema: dict[pa.Schema, list[pa.RecordBatch]] = {}
    for batch in log.read_all(from_position):
        by_schema.setdefault(batch.schema, []).append(batch)
    if not by_schema:
        return pa.table({name: pa.array([], pa.null()) for name in ENVELOPE_NAMES})
    tables = [pa.Table.from_batches(b) for b in by_schema.values()]
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def to_polars(log: _Readable, from_position: int | Mapping[int, int] = 0) -> pl.LazyFrame:
    """The log as a polars LazyFrame (no copy of the column buffers)."""
    frame = pl.from_arrow(log_table(log, from_position), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()
