"""The event log's contract, stated once.

Both `MemoryLog` (the executable spec) and `ArrowLog` (the product) implement it,
and ``tests/log_contract.py`` checks both against the same suite.

- ``append(events)`` appends a batch and returns one `Position` per event. An
  event's ``version`` must be its stream's last version plus one (versions are
  gap-free from 1); positions are gap-free per partition from 0. An event already in
  the log, the same stream and version with the same ``event_id``, is not
  written again: its existing position is returned (this makes replays after a crash
  idempotent). Any other mismatch is a conflict: nothing is written for that
  aggregate, the rest of the batch is, and `ConcurrencyError` says which aggregates,
  which version was expected and which the log has.
- When ``append`` returns, the batch is durable as the fsync policy promises.
- ``read_all(from_position, event_types=, since=)`` yields committed events as
  Arrow record batches in position order within each partition.
- A stream is an aggregate type and an aggregate id: two aggregates of different types
  may share an id and still have their own versions. Versions are per stream, and a
  stream is named by its key, ``stream_key(aggregate_type, aggregate_id)``, or, where
  the log holds one aggregate type only, by its bare id.
- ``read_stream(aggregate_id, from_version, aggregate_type=)`` is one stream's events,
  in version order, as an Arrow table; ``last_version`` its last version (0 if none).
  ``read_streams({stream key: from_version, ...})`` is several at once, in position
  order within each partition (so each stream's events are in version order).
- ``decode`` turns rows read back into `RecordedEvent` objects.
- ``watermarks()`` is the next position of every partition.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import pyarrow as pa

from store._model import NewEvent, Positions, RecordedEvent


class EventLog(Protocol):
    def append(self, events: Sequence[NewEvent]) -> Positions: ...

    def read_all(
        self,
        from_position: int | Mapping[int, int] = 0,
        *,
        event_types: Sequence[str] | None = None,
        since: int | None = None,
    ) -> Iterator[pa.RecordBatch]: ...

    def stream(self, aggregate_id: str, aggregate_type: str | None = None) -> str: ...

    def read_stream(
        self, aggregate_id: str, from_version: int = 1, *, aggregate_type: str | None = None
    ) -> pa.Table: ...

    def read_streams(self, wanted: Mapping[str, int]) -> pa.Table: ...

    def last_version(self, aggregate_id: str, *, aggregate_type: str | None = None) -> int: ...

    def decode(self, data: pa.Table | pa.RecordBatch) -> list[RecordedEvent]: ...

    def watermarks(self) -> dict[int, int]: ...

    def close(self) -> None: ...
