"""Shared pieces of the event log tests: bank-like event classes and small helpers.

The classes are plain frozen dataclasses, defined here rather than imported from
`flows`, so that the store's tests depend on nothing but `store`. The optional
fields make the layout carry nullable columns (``memo`` is one column shared by
`Deposited` and `Withdrawn`); `AccountClosed` has no payload columns at all.

`tests/crash_writer.py` imports this module too (it runs as a script from this
directory), so the writer subprocesses and the tests lay the log out identically.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from store import Layout, LogReader, NewEvent, Position, RecordedEvent
from store.disk import SegmentFiles, list_segments

AGGREGATE_TYPE = "Account"


@dataclass(frozen=True, slots=True)
class AccountOpened:
    owner: str
    overdraft_limit: int
    nickname: str | None = None


@dataclass(frozen=True, slots=True)
class Deposited:
    amount: int
    memo: str | None = None


@dataclass(frozen=True, slots=True)
class Withdrawn:
    amount: int
    memo: str | None = None


@dataclass(frozen=True, slots=True)
class AccountClosed:
    pass


EVENT_CLASSES: tuple[type, ...] = (AccountOpened, Deposited, Withdrawn, AccountClosed)


def bank_layout() -> Layout:
    return Layout.from_classes({AGGREGATE_TYPE: EVENT_CLASSES})


def recorded(event: NewEvent, position: Position) -> RecordedEvent:
    """The event as the log must give it back, stored at `position`."""
    return RecordedEvent(
        partition=position.partition,
        position=position.offset,
        aggregate_id=event.aggregate_id,
        aggregate_type=AGGREGATE_TYPE,
        version=event.version,
        event_type=type(event.payload).__name__,
        payload=event.payload,
        event_id=uuid.UUID(bytes=event.event_id),
        command_id=event.command_id,
        timestamp=event.timestamp,
        correlation_id=event.correlation_id,
    )


def all_events(log: LogReader) -> list[RecordedEvent]:
    """Every event of the log, partition by partition, in position order."""
    out: list[RecordedEvent] = []
    for batch in log.read_all():
        out.extend(log.decode(batch))
    return out


def in_log_order(events: Iterable[RecordedEvent]) -> list[RecordedEvent]:
    """`events` in the order `read_all` yields them: by partition, then position."""
    return sorted(events, key=lambda e: (e.partition, e.position))


def partition_dir(data_dir: str | Path, partition: int) -> Path:
    return Path(data_dir) / "log" / str(partition)


def segments(data_dir: str | Path, partition: int) -> list[SegmentFiles]:
    """The segments of a partition in order; the last one is the active segment."""
    directory = partition_dir(data_dir, partition)
    return [SegmentFiles(directory, first) for first in list_segments(directory)]


def digests(paths: Sequence[Path]) -> dict[Path, str]:
    """A fingerprint of each file's bytes, to prove files were left alone."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def new_event(
    aggregate_id: str,
    version: int,
    payload: object,
    *,
    timestamp: int = 1_700_000_000_000_000,
    command_id: str = "cmd",
    correlation_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> NewEvent:
    return NewEvent(
        aggregate_id=aggregate_id,
        version=version,
        payload=payload,
        event_id=(event_id or uuid.uuid4()).bytes,
        command_id=command_id,
        timestamp=timestamp,
        correlation_id=correlation_id,
    )


def bank_payload(version: int, n: int) -> object:
    """A plausible payload for an account's `version`-th event (deterministic in `n`)."""
    if version == 1:
        return AccountOpened(f"owner-{n}", (n % 5) * 100, None if n % 3 else f"nick-ü{n}")
    if n % 7 == 0:
        return Withdrawn(n % 1000, None if n % 2 else "atm €")
    return Deposited(n % 10_000, None if n % 4 else "salary ✓")
