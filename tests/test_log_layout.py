"""How event classes become columns, and what happens when they change."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from log_contract import LAYOUT, T0, Closed, Opened, Paid, Tagged, event, history

from queries import register_log
from store import ArrowLog, Layout, LogConfig, LogReader, NewEvent, SchemaError, log_table
from store.disk import SegmentFiles, read_entries


@dataclass(frozen=True)
class Refunded:
    amount: int
    reason: str


@dataclass(frozen=True)
class Renamed:
    owner: int  # clashes with Opened.owner (a str)
    position: str  # clashes with the envelope


def test_fields_of_the_same_name_and_type_share_a_column() -> None:
    layout = Layout.from_classes({"Account": [Opened, Paid, Refunded, Renamed]})
    names = layout.read_schema.names
    assert names.count("amount") == 1
    columns = {et.name: {f.name: f.column for f in et.fields} for et in layout.event_types}
    assert columns["Refunded"]["amount"] == "amount"
    assert columns["Renamed"] == {"owner": "Renamed.owner", "position": "Renamed.position"}
    assert layout.read_schema.field("Renamed.owner").type == pa.int64()


def test_types_without_an_arrow_type_are_msgpack() -> None:
    field = {f.name: f for f in LAYOUT.event_types[2].fields}  # Tagged
    assert field["tags"].msgpack and field["tags"].arrow_type == pa.binary()
    assert not field["at"].msgpack and field["at"].arrow_type == pa.timestamp("us", tz="UTC")


def test_a_duplicate_event_type_name_is_refused() -> None:
    with pytest.raises(SchemaError, match="Paid"):
        Layout.from_classes({"Account": [Paid], "Loan": [Paid]})


def test_a_payload_that_cannot_be_stored_names_the_field(tmp_path: Path) -> None:
    bad = Tagged([object()], dt.datetime.now(dt.UTC), 1.0, True, b"")  # type: ignore[list-item]
    with ArrowLog.open(tmp_path, LAYOUT) as log, pytest.raises(SchemaError, match="tags"):
        log.append([event("a", 1, bad)])


def test_new_event_classes_start_a_new_segment_and_old_ones_still_read(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, LAYOUT) as log:
        log.append(history("a", 3))
    wider = Layout.from_classes({"Account": [Opened, Paid, Tagged, Closed, Refunded]})
    with ArrowLog.open(tmp_path, wider) as log:
        log.append([event("a", 4, Refunded(5, "oops"))])
        assert len(list((tmp_path / "log" / "0").glob("*.arrows"))) == 2
        got = [e.payload for e in log.decode(log.read_stream("a"))]
    assert got == [Opened("a", 10), Paid(2), Paid(3), Refunded(5, "oops")]
    reader = LogReader.open(tmp_path)
    table = log_table(reader)
    assert table.num_rows == 4 and "reason" in table.column_names
    con = duckdb.connect()
    register_log(con, reader)
    assert con.execute("SELECT reason FROM Refunded").fetchall() == [("oops",)]
    assert con.execute("SELECT sum(amount) FROM Paid").fetchall() == [(5,)]


def test_zone_maps_record_positions_times_and_types(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, LAYOUT) as log:
        log.append([event("a", 1, Opened("a", 1), at=5), event("b", 1, Opened("b", 1), at=9)])
        log.append([event("a", 2, Paid(1), at=20), event("a", 3, Closed(), at=30)])
    entries = read_entries(SegmentFiles(tmp_path / "log" / "0", 0))
    assert entries["first_position"].tolist() == [0, 2]
    assert entries["count"].tolist() == [2, 2]
    t0 = 1_700_000_000_000_000
    assert (entries["min_ts"] - t0).tolist() == [5, 20]
    assert (entries["max_ts"] - t0).tolist() == [9, 30]
    codes = {et.name: i for i, et in enumerate(LAYOUT.event_types)}
    assert entries["types"].tolist() == [
        1 << codes["Opened"],
        (1 << codes["Paid"]) | (1 << codes["Closed"]),
    ]
    assert np.all(entries["length"] > 0)


def test_timestamps_are_utc_microseconds(tmp_path: Path) -> None:
    stamp = 1_767_225_600_123_456  # 2026-01-01T00:00:00.123456Z
    e = NewEvent("a", 1, Opened("a", 1), uuid.uuid4().bytes, "c", stamp)
    with ArrowLog.open(tmp_path, LAYOUT) as log:
        log.append([e])
        value: Any = next(iter(log.read_all())).column("timestamp")[0].as_py()
    assert value == dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)


def test_a_second_log_config_cannot_change_the_partition_count(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, LAYOUT, LogConfig(partitions=2)):
        pass
    from store import DataDirError

    with pytest.raises(DataDirError, match="2 partitions"):
        ArrowLog.open(tmp_path, LAYOUT, LogConfig(partitions=3))
    with ArrowLog.open(tmp_path, LAYOUT) as log:
        assert log.partitions == 2


def test_read_all_skips_batches_by_zone_map_without_reading_them(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, LAYOUT, LogConfig(segment_bytes=64 * 1024)) as log:
        log.append([event(f"a{i}", 1, Opened("x", 1), at=i) for i in range(50)])
        for v in range(2, 40):
            log.append([event(f"a{i}", v, Paid(v), at=1000 * v + i) for i in range(50)])
        log.append([event("a0", 40, Closed(), at=99_999)])
    reader = LogReader.open(tmp_path)
    part = reader.partition(0)
    sealed = [s for s in part.segments if s.sealed]
    assert sealed, "expected sealed segments"
    closed = list(reader.read_all(event_types=["Closed"]))
    assert [b.num_rows for b in closed] == [1]
    late = sum(b.num_rows for b in reader.read_all(since=T0 + 39_000))
    assert late == 51
    # Sealed segments cache the batches they decode: the zone maps let every batch
    # of Paid events before the cut-off go unread.
    decoded = sum(1 for s in sealed for b in s._batches if b is not None)
    assert decoded == 0
    sum(b.num_rows for b in reader.read_all())  # a full scan does decode them
    assert sum(1 for s in sealed for b in s._batches if b is not None) == sum(
        len(s.entries) for s in sealed
    )
