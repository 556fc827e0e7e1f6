"""A source over standard input: JSON lines or msgpack objects, not resumable.

It reads only when `select` says stdin is ready, so a quiet producer does not block
the worker: the rest of the flow (epochs, sinks) goes on while stdin is idle.
"""

from __future__ import annotations

import select
import sys
from collections.abc import Callable

from bytewax.inputs import FixedPartitionedSource

from connectors._batches import Format, RawBatch, check_batch_size, check_format
from connectors._framing import CHUNK_BYTES, framer_for
from connectors._stream import FramedPartition


def _stdin_reader() -> Callable[[], bytes | None]:
    stream = sys.stdin.buffer
    # read1: what is there, up to a chunk, with at most one system call.
    read1: Callable[[int], bytes] = getattr(stream, "read1", stream.read)
    try:
        fd = stream.fileno()
        select.select([fd], [], [], 0)
    except (OSError, ValueError):
        # Not a selectable descriptor (a test's in-memory stream, or Windows): block.
        return lambda: read1(CHUNK_BYTES)

    def read() -> bytes | None:
        ready, _, _ = select.select([fd], [], [], 0)
        return read1(CHUNK_BYTES) if ready else None

    return read


class _StdinPartition(FramedPartition[None]):
    def snapshot(self) -> None:
        return None


class StdinSource(FixedPartitionedSource[RawBatch, None]):
    """Records from standard input, framed as for the file sources.

    One partition, so one worker reads stdin. Offsets count bytes from the first one
    read. A pipe cannot be rewound, so a resumed flow does not re-read anything.
    """

    def __init__(self, format: Format = "jsonl", batch_size: int = 1000) -> None:
        self._format = check_format(format)
        self._batch_size = check_batch_size(batch_size)

    def list_parts(self) -> list[str]:
        return ["stdin"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _StdinPartition:
        framer = framer_for(self._format, 0)
        return _StdinPartition("stdin", self._format, framer, _stdin_reader(), self._batch_size)
