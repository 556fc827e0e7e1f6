"""A source over records already in memory, optionally paced to a rate (demos, benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors._batches import Format, RawBatch, check_batch_size, check_format


class _GeneratorPartition(StatefulSourcePartition[RawBatch, None]):
    def __init__(self, source: GeneratorSource, records: Iterator[bytes]) -> None:
        self._source = source
        self._records = records
        self._emitted = 0
        self._started: float | None = None  # time.perf_counter() when record 0 arrived

    def next_batch(self) -> list[RawBatch]:
        size = self._source.batch_size
        rate = self._source.rate
        if rate is not None:
            # Record k arrives at start + k / rate, as from a client sending steadily;
            # a batch takes what has arrived by now (as a socket read would), so under
            # load batches grow and when idle each record goes on its own.
            now = time.perf_counter()
            if self._started is None:
                self._started = self._source.started = now
            arrived = int((now - self._started) * rate) + 1
            size = min(size, arrived - self._emitted)
            if size <= 0:
                return []
        records = list(islice(self._records, size))
        if not records:
            raise StopIteration
        offsets = list(range(self._emitted, self._emitted + len(records)))
        self._emitted += len(records)
        return [RawBatch("generator", self._source.format, records, offsets)]

    def next_awake(self) -> datetime | None:
        if self._source.rate is None or self._started is None:
            return None
        # When the next record arrives.
        due = self._started + self._emitted / self._source.rate
        return datetime.now(UTC) + timedelta(seconds=max(0.0, due - time.perf_counter()))

    def snapshot(self) -> None:
        return None


class GeneratorSource(FixedPartitionedSource[RawBatch, None]):
    """Batches of the given records, offsets numbering them from 0.

    With `rate` (records per second) the records arrive as from a client sending
    steadily: record k at `started` + k / `rate`, `started` being the
    `time.perf_counter()` at which the first was read (for measuring latency). Each
    batch takes the records that have arrived, up to `batch_size`. One partition; not
    resumable (an iterator cannot be rewound).
    """

    def __init__(
        self,
        records: Iterable[bytes],
        format: Format = "jsonl",
        batch_size: int = 1000,
        rate: float | None = None,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate={rate}: expected a positive number of records per second")
        self._records = records
        self.format = check_format(format)
        self.batch_size = check_batch_size(batch_size)
        self.rate = rate
        self.started: float | None = None

    def list_parts(self) -> list[str]:
        return ["generator"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _GeneratorPartition:
        return _GeneratorPartition(self, iter(self._records))
