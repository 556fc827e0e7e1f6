"""A bytewax input partition that reads a byte stream, frames it and emits RawBatches."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from bytewax.inputs import StatefulSourcePartition

from connectors._batches import Format, RawBatch
from connectors._framing import Framer

S = TypeVar("S")

# A chunk of the stream; b"" at its end; None when nothing can be read yet without blocking.
Read = Callable[[], bytes | None]

# How long to wait before polling again a stream that had nothing to read (stdin).
IDLE_POLL = timedelta(milliseconds=10)


class FramedPartition(StatefulSourcePartition[RawBatch, S], Generic[S]):
    """Emits at most one RawBatch of up to `batch_size` records per call."""

    def __init__(
        self, source: str, format: Format, framer: Framer, read: Read, batch_size: int
    ) -> None:
        self._source = source
        self._format = format
        self._framer = framer
        self._read = read
        self._batch_size = batch_size
        self._ended = False
        self._awake: datetime | None = None

    def next_batch(self) -> list[RawBatch]:
        self._awake = None
        framer = self._framer
        while framer.pending < self._batch_size and not self._ended:
            chunk = self._read()
            if chunk is None:
                if not framer.pending:
                    self._awake = datetime.now(UTC) + IDLE_POLL
                break
            if chunk:
                framer.feed(chunk)
            else:
                framer.finish()
                self._ended = True
        if not framer.pending:
            if self._ended:
                raise StopIteration
            return []
        records, offsets = framer.take(self._batch_size)
        return [RawBatch(self._source, self._format, records, offsets)]

    def next_awake(self) -> datetime | None:
        return self._awake

    @abstractmethod
    def snapshot(self) -> S: ...
