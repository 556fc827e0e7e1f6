"""The event log as DuckDB tables: `events`, and one view per event type.

`events` is the log's Arrow data registered with DuckDB, which scans it in place (no
copy). Each event type gets a view named after it with the envelope columns and that
type's payload fields under their own names, so that
``SELECT sum(amount) FROM Deposited`` reads the typed ``amount`` column directly.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa

from store import ENVELOPE_NAMES, Layout, LogReader, log_table

_ENVELOPE = [n for n in ENVELOPE_NAMES if n != "event_type"]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def register_log(
    con: duckdb.DuckDBPyConnection,
    log: LogReader,
    from_position: int | Mapping[int, int] = 0,
) -> pa.Table:
    """Register `events` and the per-type views on `con`; returns the registered table.

    The registration is a snapshot of the log as read now: call again (after
    `log.refresh()`) to see later events.
    """
    table = log_table(log, from_position)
    con.register("events", table)
    for layout in _layouts(log):
        for et in layout.event_types:
            fields = ", ".join(
                f"{_quote(f.column)} AS {_quote(f.name)}" if f.column != f.name else _quote(f.name)
                for f in et.fields
            )
            envelope = ", ".join(_quote(n) for n in _ENVELOPE)
            select = f"{envelope}, {fields}" if fields else envelope
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW {_quote(et.name)} AS SELECT {select} "
                f"FROM events WHERE event_type = {_literal(et.name)}"
            )
    return table


def _layouts(log: LogReader) -> list[Layout]:
    """The distinct layouts of the log's segments, oldest first (newest wins a view name)."""
    found: dict[str, Layout] = {}
    for p in range(log.partitions):
        for seg in log.partition(p).segments:
            if seg.layout is not None:
                found.setdefault(seg.layout.to_json(), seg.layout)
    return list(found.values())
