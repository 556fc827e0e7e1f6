"""The event log's conformance suite: every log implementation must pass it.

A test class inherits `LogContract` and supplies `make_log(tmp_path, partitions)`;
`tests/test_log_conformance.py` runs it over `MemoryLog` (the spec) and `ArrowLog`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from store import (
    ConcurrencyError,
    EventLog,
    Layout,
    NewEvent,
    Position,
    SchemaError,
    partition_of,
)


@dataclass(frozen=True, slots=True)
class Opened:
    owner: str
    limit: int


@dataclass(frozen=True, slots=True)
class Paid:
    amount: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Tagged:
    tags: list[str]
    at: dt.datetime
    ratio: float
    flag: bool
    raw: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    pass


@dataclass(frozen=True, slots=True)
class Stranger:
    amount: int


LAYOUT = Layout.from_classes({"Account": [Opened, Paid, Tagged, Closed]})
T0 = 1_700_000_000_000_000


def event(agg: str, version: int, payload: Any, *, at: int = 0, command: str = "c") -> NewEvent:
    return NewEvent(
        aggregate_id=agg,
        version=version,
        payload=payload,
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{agg}/{version}").bytes,
        command_id=command,
        timestamp=T0 + at,
        correlation_id=None if version % 2 else f"corr-{agg}",
    )


def fresh(agg: str, version: int, payload: Any) -> NewEvent:
    """An event with a new random id: never mistaken for one already in the log."""
    return event(agg, version, payload)._replace(event_id=uuid.uuid4().bytes)


def history(agg: str, n: int, start: int = 1) -> list[NewEvent]:
    first = [event(agg, start, Opened(agg, 10))] if start == 1 else []
    rest = [event(agg, v, Paid(v)) for v in range(start + len(first), start + n)]
    return first + rest


def rows(log: EventLog, **kwargs: Any) -> list[tuple[str, int, str]]:
    out = []
    for batch in log.read_all(**kwargs):
        for e in log.decode(batch):
            out.append((e.aggregate_id, e.version, e.event_type))
    return out


class LogContract:
    partitions = 1

    def make_log(self, path: Path, partitions: int) -> EventLog:
        raise NotImplementedError

    @pytest.fixture
    def log(self, tmp_path: Path) -> Any:
        log = self.make_log(tmp_path, self.partitions)
        yield log
        log.close()

    # -- append ---------------------------------------------------------------

    def test_positions_are_gap_free_per_partition_from_zero(self, log: EventLog) -> None:
        events = [e for agg in ("a", "b", "c", "d") for e in history(agg, 3)]
        first = list(log.append(events[:5]))
        second = list(log.append(events[5:]))
        by_partition: dict[int, list[int]] = {}
        for p in first + second:
            by_partition.setdefault(p.partition, []).append(p.offset)
        for offsets in by_partition.values():
            assert offsets == list(range(len(offsets)))
        for e, p in zip(events, first + second, strict=True):
            assert p.partition == partition_of(e.aggregate_id, self.partitions)
        assert log.watermarks() == {p: len(o) for p, o in by_partition.items()} | {
            p: 0 for p in range(self.partitions) if p not in by_partition
        }

    def test_events_read_back_with_envelope_and_payload(self, log: EventLog) -> None:
        stamp = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
        given = [
            event("a", 1, Opened("ann", 50)),
            event("a", 2, Paid(7, note="rent")),
            event("a", 3, Paid(8)),
            event("a", 4, Tagged(["x", "ü"], stamp, 0.5, True, b"\x00\xff")),
            event("a", 5, Closed()),
        ]
        log.append(given)
        got = log.decode(log.read_stream("a"))
        assert [e.payload for e in got] == [g.payload for g in given]
        assert [e.version for e in got] == [1, 2, 3, 4, 5]
        assert [e.event_type for e in got] == ["Opened", "Paid", "Paid", "Tagged", "Closed"]
        assert [e.event_id.bytes for e in got] == [g.event_id for g in given]
        assert [e.correlation_id for e in got] == [g.correlation_id for g in given]
        assert [e.timestamp for e in got] == [g.timestamp for g in given]
        assert {e.aggregate_type for e in got} == {"Account"}

    def test_payload_fields_are_typed_columns(self, log: EventLog) -> None:
        log.append(history("a", 3))
        batch = next(iter(log.read_all()))
        assert batch.schema.field("amount").type == pa.int64()
        assert batch.schema.field("owner").type == pa.string()
        assert batch.schema.field("event_type").type == pa.dictionary(pa.int16(), pa.string())
        assert batch.column("amount").to_pylist() == [None, 2, 3]

    def test_a_version_that_does_not_follow_is_a_conflict(self, log: EventLog) -> None:
        log.append(history("a", 3) + history("b", 1))
        with pytest.raises(ConcurrencyError) as caught:
            log.append([fresh("a", 3, Paid(1)), event("b", 2, Paid(2))])
        [conflict] = caught.value.conflicts
        assert (conflict.aggregate_id, conflict.expected, conflict.actual) == ("a", 3, 3)
        assert "'a'" in str(caught.value) and "3" in str(caught.value)
        # nothing for 'a', but 'b' was appended
        assert caught.value.appended.get(0) is None
        assert caught.value.appended.get(1) is not None
        assert log.last_version("a") == 3
        assert log.last_version("b") == 2

    def test_a_gap_is_a_conflict_and_writes_nothing_of_that_aggregate(self, log: EventLog) -> None:
        log.append(history("a", 2))
        with pytest.raises(ConcurrencyError) as caught:
            log.append([fresh("a", 3, Paid(3)), fresh("a", 5, Paid(5))])
        assert caught.value.conflicts[0].aggregate_id == "a"
        assert log.last_version("a") == 2
        assert [r[1] for r in rows(log)] == [1, 2]

    def test_first_version_must_be_one(self, log: EventLog) -> None:
        with pytest.raises(ConcurrencyError) as caught:
            log.append([event("new", 2, Paid(1))])
        assert caught.value.conflicts[0].actual == 0
        assert rows(log) == []

    def test_reappending_events_already_in_the_log_is_a_no_op(self, log: EventLog) -> None:
        events = history("a", 4)
        first = list(log.append(events))
        again = list(log.append(events[1:3]))
        assert again == first[1:3]
        assert len(rows(log)) == 4
        # a replay that overlaps the log and then continues appends only the new part
        more = [*events[2:], event("a", 5, Paid(5))]
        positions = list(log.append(more))
        assert positions[:2] == first[2:]
        assert log.last_version("a") == 5
        assert [r[1] for r in rows(log)] == [1, 2, 3, 4, 5]

    def test_same_version_with_another_event_id_is_a_conflict(self, log: EventLog) -> None:
        log.append(history("a", 2))
        impostor = NewEvent("a", 2, Paid(9), uuid.uuid4().bytes, "c", T0)
        with pytest.raises(ConcurrencyError):
            log.append([impostor])
        assert log.decode(log.read_stream("a"))[1].payload == Paid(2)

    def test_unknown_event_class_is_refused_with_its_name(self, log: EventLog) -> None:
        with pytest.raises(SchemaError, match="Stranger"):
            log.append([event("a", 1, Stranger(1))])

    def test_an_event_id_must_be_sixteen_bytes(self, log: EventLog) -> None:
        bad = NewEvent("a", 1, Opened("x", 1), b"short", "c", T0)
        with pytest.raises(SchemaError, match="16 bytes"):
            log.append([bad])
        assert rows(log) == []

    # -- reads ----------------------------------------------------------------

    def test_read_stream_from_a_version(self, log: EventLog) -> None:
        log.append(history("a", 5) + history("b", 2))
        log.append(history("a", 3, start=6))
        assert [e.version for e in log.decode(log.read_stream("a", 4))] == [4, 5, 6, 7, 8]
        assert log.read_stream("a", 9).num_rows == 0
        assert log.read_stream("nobody").num_rows == 0
        assert log.last_version("nobody") == 0

    def test_read_streams_is_each_stream_in_position_order(self, log: EventLog) -> None:
        for round_ in range(6):
            log.append(
                [e for agg in ("a", "b", "c", "d") for e in history(agg, 3, start=1 + 3 * round_)]
            )
        wanted = {"a": 1, "b": 7, "d": 18, "nobody": 1, "c": 19}
        table = log.read_streams(wanted)
        got = log.decode(table)
        for agg, since in wanted.items():
            mine = [e for e in got if e.aggregate_id == agg]
            assert mine == log.decode(log.read_stream(agg, since)), agg
        assert len(got) == 18 + 12 + 1
        by_partition: dict[int, list[int]] = {}
        for e in got:
            by_partition.setdefault(e.partition, []).append(e.position)
        assert all(p == sorted(p) for p in by_partition.values())

    def test_read_all_from_a_position(self, log: EventLog) -> None:
        log.append(history("a", 6))
        p = partition_of("a", self.partitions)
        tail = rows(log, from_position={p: 4})
        assert [v for _, v, _ in tail] == [5, 6]
        assert [v for _, v, _ in rows(log, from_position=6)] == []

    def test_read_all_by_event_type_and_time(self, log: EventLog) -> None:
        log.append([event("a", 1, Opened("a", 1), at=0), event("b", 1, Opened("b", 1), at=1)])
        log.append([event("a", 2, Paid(1), at=10), event("a", 3, Closed(), at=20)])
        assert sorted(rows(log, event_types=["Opened"])) == [
            ("a", 1, "Opened"),
            ("b", 1, "Opened"),
        ]
        assert rows(log, event_types=["Paid", "Closed"]) == [("a", 2, "Paid"), ("a", 3, "Closed")]
        assert rows(log, since=T0 + 15) == [("a", 3, "Closed")]
        assert rows(log, event_types=["Nothing"]) == []

    def test_many_aggregates_keep_their_own_order(self, log: EventLog) -> None:
        aggs = [f"acct-{i}" for i in range(40)]
        for round_ in range(5):
            batch = [
                event(a, round_ + 1, Opened(a, 0) if round_ == 0 else Paid(round_)) for a in aggs
            ]
            log.append(batch)
        for a in aggs:
            assert [e.version for e in log.decode(log.read_stream(a))] == [1, 2, 3, 4, 5]
        assert len(rows(log)) == 200


__all__ = ["LogContract", "LAYOUT", "Position", "event", "history"]
