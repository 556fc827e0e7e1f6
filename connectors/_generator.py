"""A source over records already in memory, optionally paced to a rate (demos, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors._batches import Format, RawBatch, check_batch_size, check_format


def paced_batch_size(batch_size: int, rate: float | None) -> int:
    """Records per batch: at a low rate, small batches, so records trickle in.

    >>> paced_batch_size(1000, None), paced_batch_size(1000, 50_000), paced_batch_size(1000, 5)
    (1000, 500, 1)
    """
    if rate is None:
        return batch_size
    return max(1, int(min(batch_size, rate / 100)))


class _GeneratorPartition(StatefulSourcePartition[RawBatch, None]):
    def __init__(
        self, records: Iterator[bytes], format: Format, batch_size: int, rate: float | None
    ) -> None:
        self._records = records
        self._format: Format = format
        self._batch_size = batch_size
        self._rate = rate
        self._emitted = 0
        self._started: datetime | None = None

    def next_batch(self) -> list[RawBatch]:
        records = list(islice(self._records, self._batch_size))
        if not records:
            raise StopIteration
        offsets = list(range(self._emitted, self._emitted + len(records)))
        self._emitted += len(records)
        return [RawBatch("generator", self._format, records, offsets)]

    def next_awake(self) -> datetime | None:
        if self._rate is None:
            return None
        if self._started is None:
            self._started = datetime.now(UTC)
        # Due when the records so far are owed, counted from the start: a late batch is
        # followed by an early one, so the long-run rate holds and no error accumulates.
        return self._started + timedelta(seconds=self._emitted / self._rate)

    def snapshot(self) -> None:
        return None


class GeneratorSource(FixedPartitionedSource[RawBatch, None]):
    """Batches of the given records, offsets numbering them from 0.

    With `rate` (records per second) batches are paced so that the long-run rate is
    `rate`. One partition; not resumable (an iterator cannot be rewound).
    """

    def __init__(
        self,
        records: Iterable[bytes],
        format: Format = "json",
        batch_size: int = 1000,
        rate: float | None = None,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate={rate}: expected a positive number of records per second")
        self._records = records
        self._format = check_format(format)
        self._batch_size = paced_batch_size(check_batch_size(batch_size), rate)
        self._rate = rate

    def list_parts(self) -> list[str]:
        return ["generator"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _GeneratorPartition:
        return _GeneratorPartition(iter(self._records), self._format, self._batch_size, self._rate)
