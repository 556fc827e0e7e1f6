"""The log registered in DuckDB: typed payload columns, one view per event type."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
from log_contract import LAYOUT, Opened, Paid, event, history

from queries import register_log
from store import ArrowLog, LogConfig, LogReader, to_polars


def test_sql_reads_payload_fields_without_decoding(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, LAYOUT, LogConfig(segment_bytes=4096)) as log:
        for agg in ("a", "b", "c"):
            log.append(history(agg, 20))
    con = duckdb.connect()
    register_log(con, LogReader.open(tmp_path))
    # amounts are the versions 2..20 of each of three aggregates
    assert con.execute("SELECT sum(amount) FROM Paid").fetchone() == (3 * sum(range(2, 21)),)
    assert con.execute("SELECT count(*) FROM events WHERE event_type = 'Opened'").fetchone() == (3,)
    assert con.execute('SELECT owner, "limit" FROM Opened ORDER BY owner').fetchall() == [
        ("a", 10),
        ("b", 10),
        ("c", 10),
    ]
    columns = [d[0] for d in con.execute("SELECT * FROM Paid").description]
    assert columns[-2:] == ["amount", "note"] and "owner" not in columns


def test_polars_sees_the_same_log(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, LAYOUT) as log:
        log.append([*history("a", 5), event("b", 1, Opened("b", 1)), event("b", 2, Paid(100))])
    frame = to_polars(LogReader.open(tmp_path))
    totals = (
        frame.filter(pl.col("event_type") == "Paid")
        .group_by("aggregate_id")
        .agg(pl.col("amount").sum())
        .sort("aggregate_id")
        .collect()
    )
    assert totals.rows() == [("a", 2 + 3 + 4 + 5), ("b", 100)]
