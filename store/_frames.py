"""The log as one Arrow table or a polars LazyFrame, zero-copy from the memory maps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from store._layout import ENVELOPE_NAMES

if TYPE_CHECKING:  # imported when used: polars costs every process ~45 MB resident
    import polars as pl


class _Readable(Protocol):
    def read_all(
        self, from_position: int | Mapping[int, int] = ...
    ) -> Iterator[pa.RecordBatch]: ...


def log_table(log: _Readable, from_position: int | Mapping[int, int] = 0) -> pa.Table:
    """Every event as one table (see `concat`)."""
    table = concat(log.read_all(from_position))
    if table is None:
        return pa.table({name: pa.array([], pa.null()) for name in ENVELOPE_NAMES})
    return table


def concat(batches: Iterable[pa.RecordBatch]) -> pa.Table | None:
    """Batches as one table, without copying. Batches of segments written with other
    event classes are widened with null columns so that all rows share one schema."""
    runs: list[tuple[pa.Schema, list[pa.RecordBatch]]] = []
    for batch in batches:
        if runs and runs[-1][0].equals(batch.schema):
            runs[-1][1].append(batch)
        else:
            runs.append((batch.schema, [batch]))
    if not runs:
        return None
    tables = [pa.Table.from_batches(b) for _, b in runs]
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def to_polars(log: _Readable, from_position: int | Mapping[int, int] = 0) -> pl.LazyFrame:
    """The log as a polars LazyFrame (no copy of the column buffers)."""
    import polars as pl

    frame = pl.from_arrow(log_table(log, from_position), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()
