"""The event log as DuckDB tables: `events`, and one table per event type.

`events` is the log's Arrow data registered with DuckDB, which scans it in place (no
copy). Each event type is a table named after it with the envelope columns and that
type's payload fields under their own names, so that
``SELECT sum(amount) FROM Deposited`` reads the typed ``amount`` column directly.

The tables are SELECTs over a relation of log rows (`event_tables`), so the same
definitions serve the whole log, one micro-batch of a view's maintenance, and the
planner's base-scan plan.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa

from store import ENVELOPE_NAMES, Layout, LogReader, log_table

# Dictionary-encoded on disk; DuckDB would turn them into ENUMs fixed to one batch's
# dictionary, which a view's table could not store the next batch's values in.
_DICTIONARY = {"event_type", "aggregate_type"}
_ENVELOPE = [n for n in ENVELOPE_NAMES if n != "event_type"]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _envelope(name: str) -> str:
    return f"{quote(name)}::VARCHAR AS {quote(name)}" if name in _DICTIONARY else quote(name)


def event_tables(layout: Layout, relation: str) -> dict[str, str]:
    """Table name -> the SELECT that makes it from `relation`, a relation of log rows."""
    payload = dict.fromkeys(f.column for et in layout.event_types for f in et.fields)
    columns = [_envelope(n) for n in ENVELOPE_NAMES] + [quote(c) for c in payload]
    tables = {"events": f"SELECT {', '.join(columns)} FROM {relation}"}
    for et in layout.event_types:
        fields = [
            f"{quote(f.column)} AS {quote(f.name)}" if f.column != f.name else quote(f.name)
            for f in et.fields
        ]
        select = ", ".join([_envelope(n) for n in _ENVELOPE] + fields)
        tables[et.name] = f"SELECT {select} FROM {relation} WHERE event_type = {literal(et.name)}"
    return tables


def register_log(
    con: duckdb.DuckDBPyConnection,
    log: LogReader,
    from_position: int | Mapping[int, int] = 0,
) -> pa.Table:
    """Register `events` and the per-type tables on `con`; returns the registered table.

    The registration is a snapshot of the log as read now: call again (after
    `log.refresh()`) to see later events.
    """
    table = log_table(log, from_position)
    # A reader with classes reads every segment as their layout; without, the tables
    # cover every layout the log holds.
    layouts = [log.layout] if log.layout is not None else log_layouts(log)
    if table.num_rows == 0 and layouts:
        table = layouts[-1].read_schema.empty_table()
    con.register("__cqrsflow_log", table)
    for layout in layouts:
        for name, select in event_tables(layout, "__cqrsflow_log").items():
            con.execute(f"CREATE OR REPLACE TEMP VIEW {quote(name)} AS {select}")
    return table


def log_layouts(log: LogReader) -> list[Layout]:
    """The distinct layouts of the log's segments, oldest first (newest wins a name)."""
    found: dict[str, Layout] = {}
    for p in range(log.partitions):
        for seg in log.partition(p).segments:
            if seg.layout is not None:
                found.setdefault(seg.layout.to_json(), seg.layout)
    if not found and log.layout is not None:
        found[log.layout.to_json()] = log.layout
    return list(found.values())
