"""A source that follows the event log: one partition per log partition, resumable.

Each partition emits the log's own Arrow record batches (no per-event objects) and
snapshots the next position to read, so a resumed flow picks up exactly where it was.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from store import LogReader

# A start past any position: `read_all` reads every partition, and a partition that
# another bytewax partition follows must yield nothing here.
_SKIP = sys.maxsize


class _TailPartition(StatefulSourcePartition[pa.RecordBatch, int]):
    def __init__(
        self, data_dir: Path, partition: int, start: int, poll: timedelta, stop_at_end: bool
    ) -> None:
        self._reader = LogReader.open(data_dir)
        self._partition = partition
        self._next = start
        self._poll = poll
        self._stop_at_end = stop_at_end
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._awake: datetime | None = None

    def next_batch(self) -> list[pa.RecordBatch]:
        self._awake = None
        if self._batches is None:
            # Refresh only once caught up: while batches remain, the reader has them.
            self._reader.refresh()
            starts = dict.fromkeys(range(self._reader.partitions), _SKIP)
            starts[self._partition] = self._next
            self._batches = self._reader.read_all(starts)
        batch = next(self._batches, None)
        if batch is None:
            self._batches = None
            if self._stop_at_end:
                raise StopIteration
            self._awake = datetime.now(UTC) + self._poll
            return []
        self._next = batch.column("position")[-1].as_py() + 1
        return [batch]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next


class LogTailSource(FixedPartitionedSource[pa.RecordBatch, int]):
    """Follows the log in `data_dir`, emitting its Arrow record batches as they commit.

    `from_positions` gives a start per log partition (0 when absent); a resumed flow
    starts from its snapshots instead. It never ends, polling every `poll_interval`
    seconds when caught up, unless `stop_at_end` is set: then each partition ends once
    it has emitted everything committed (for tests and one-off catch-ups).
    """

    def __init__(
        self,
        data_dir: Path,
        from_positions: dict[int, int] | None = None,
        poll_interval: float = 0.05,
        *,
        stop_at_end: bool = False,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(
                f"poll_interval={poll_interval}: expected a positive number of seconds"
            )
        self._data_dir = data_dir
        self._from = dict(from_positions or {})
        self._poll = timedelta(seconds=poll_interval)
        self._stop_at_end = stop_at_end

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(LogReader.open(self._data_dir).partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TailPartition:
        partition = int(for_part)
        start = self._from.get(partition, 0) if resume_state is None else resume_state
        return _TailPartition(self._data_dir, partition, start, self._poll, self._stop_at_end)
