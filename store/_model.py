"""Value types of the event log: events in and out, positions, configuration."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload


class NewEvent(NamedTuple):
    """An event to append. `version` is the aggregate's version *after* this event.

    `payload` is an instance of one of the event classes the log was opened
    with; its class name is the event type, and the class's aggregate type is the
    event's. `event_id` is a UUID's 16 bytes (``uuid4().bytes``) and `timestamp` is
    UTC microseconds since the epoch: raw values, so that building a batch does no
    per-event conversion. A named tuple, not a frozen dataclass: as immutable, and
    half the cost to build, which matters at a million events a second.
    """

    aggregate_id: str
    version: int
    payload: Any
    event_id: bytes
    command_id: str
    timestamp: int
    correlation_id: str | None = None


class RecordedEvent(NamedTuple):
    """An event read back from the log, with the position it was stored at."""

    partition: int
    position: int
    aggregate_id: str
    aggregate_type: str
    version: int
    event_type: str
    payload: Any
    event_id: uuid.UUID
    command_id: str
    timestamp: int
    correlation_id: str | None


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event is: a partition and its gap-free offset within it."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse `partition:offset`, the form results and `--after` use."""
        part, sep, off = text.partition(":")
        if not sep or not part.isdigit() or not off.isdigit():
            raise ValueError(f"position {text!r}: expected PARTITION:OFFSET, e.g. 0:1234")
        return cls(int(part), int(off))


def latest_positions(texts: Iterable[str]) -> dict[int, int]:
    """Positions as ``partition:offset`` (each text may hold several, comma-separated):
    the latest one in each partition, as read-your-writes waits for them.

    >>> latest_positions(["0:5,1:2", "0:9"])
    {0: 9, 1: 2}
    """
    after: dict[int, int] = {}
    for value in (v.strip() for given in texts for v in given.split(",")):
        position = Position.parse(value)
        after[position.partition] = max(after.get(position.partition, 0), position.offset)
    return after


class Fsync(enum.Enum):
    """When appended bytes are forced to disk before `append` returns."""

    ALWAYS = "always"  # every append batch (one fsync per partition touched)
    INTERVAL = "interval"  # at most every `fsync_interval_ms`
    NEVER = "never"  # leave it to the OS


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How a log is laid out on disk and how hard it tries to be durable."""

    partitions: int | None = None  # for a new log; None: as on disk, or 1 when new
    segment_bytes: int = 64 * 1024 * 1024
    fsync: Fsync = Fsync.ALWAYS
    fsync_interval_ms: int = 100

    def __post_init__(self) -> None:
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"partitions={self.partitions}: expected at least 1")
        if self.segment_bytes < 4096:
            raise ValueError(f"segment_bytes={self.segment_bytes}: expected at least 4096")
        if self.fsync_interval_ms < 1:
            raise ValueError(f"fsync_interval_ms={self.fsync_interval_ms}: expected at least 1")


class Positions(Sequence[Position]):
    """Where each event of an append went, one `Position` per event.

    Built on demand from compact offsets: a batch for one partition is a single
    `range`, so an append of a thousand events creates no thousand objects.
    """

    __slots__ = ("_offsets", "_partitions")

    def __init__(self, partitions: int | Sequence[int], offsets: Sequence[int | None]):
        self._partitions = partitions
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, i: int) -> Position: ...
    @overload
    def __getitem__(self, i: slice) -> list[Position]: ...
    def __getitem__(self, i: int | slice) -> Position | list[Position]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        offset = self._offsets[i]
        if offset is None:
            raise LookupError(f"event {i} was not appended (its aggregate had a conflict)")
        p = self._partitions if isinstance(self._partitions, int) else self._partitions[i]
        return Position(p, offset)

    def text(self, i: int) -> str:
        """Position i as ``partition:offset``, without building a Position."""
        offset = self._offsets[i]
        if offset is None:
            raise LookupError(f"event {i} was not appended (its aggregate had a conflict)")
        p = self._partitions if isinstance(self._partitions, int) else self._partitions[i]
        return f"{p}:{offset}"

    def offsets(self) -> Sequence[int | None]:
        """Every event's offset in its partition (None where not appended)."""
        return self._offsets

    def texts(self) -> list[str | None]:
        """Every position as ``partition:offset`` (None where not appended)."""
        p = self._partitions
        if isinstance(p, int):
            prefix = f"{p}:"
            return [None if o is None else prefix + str(o) for o in self._offsets]
        return [None if o is None else f"{q}:{o}" for q, o in zip(p, self._offsets, strict=True)]

    def get(self, i: int) -> Position | None:
        """The position of event i, or None if it was not appended."""
        return None if self._offsets[i] is None else self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Positions({[self.get(i) for i in range(len(self))]!r})"
