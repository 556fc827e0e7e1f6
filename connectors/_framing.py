"""Cutting a byte stream into complete records: JSON lines or msgpack objects.

A framer is fed chunks as they are read, cut anywhere, and hands out complete
records with the offset each starts at. It keeps the incomplete tail for the next
chunk or the end of the stream, so a reader can ask it where to resume from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from itertools import accumulate

import msgpack

from connectors._batches import Format, check_format

# Big reads: the per-call cost of a read and a split is paid per megabyte, not per line.
CHUNK_BYTES = 1 << 20


class Framer(ABC):
    """Records cut so far and not yet taken; subclasses do the cutting."""

    def __init__(self, start: int) -> None:
        self._records: list[bytes] = []
        self._offsets: list[int] = []
        self._head = 0  # records before it were taken
        self._tail_offset = start  # where the bytes not yet cut into records begin

    @abstractmethod
    def feed(self, chunk: bytes) -> None:
        """Add the next bytes of the stream."""

    @abstractmethod
    def finish(self) -> None:
        """The stream ended: whatever is left becomes a last record."""

    @property
    def pending(self) -> int:
        """How many complete records wait to be taken."""
        return len(self._records) - self._head

    @property
    def resume_offset(self) -> int:
        """Where reading must restart so that no record is lost or repeated."""
        if self._head < len(self._offsets):
            return self._offsets[self._head]
        return self._tail_offset

    def take(self, limit: int) -> tuple[list[bytes], list[int]]:
        """Up to `limit` records, oldest first, with their offsets."""
        end = self._head + limit
        records = self._records[self._head : end]
        offsets = self._offsets[self._head : end]
        self._head += len(records)
        return records, offsets

    def _add(self, records: list[bytes], offsets: list[int]) -> None:
        if self._head:
            # Drop what was taken, so the lists hold at most a batch plus a chunk's records.
            del self._records[: self._head], self._offsets[: self._head]
            self._head = 0
        self._records += records
        self._offsets += offsets


class LineFramer(Framer):
    """JSON lines: split on LF, drop a CR before it, skip blank lines.

    >>> f = LineFramer(start=0)
    >>> f.feed(b'{"a": 1}\\r\\n\\n  \\n{"b"')
    >>> f.pending, f.resume_offset
    (1, 0)
    >>> f.feed(b": 2}")
    >>> f.finish()
    >>> f.take(10)
    ([b'{"a": 1}', b'{"b": 2}'], [0, 14])
    """

    def __init__(self, start: int) -> None:
        super().__init__(start)
        # Pieces of the line being read; a very long line is joined once, when it ends.
        self._partial: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self._partial.append(chunk)
            return
        lines = chunk.split(b"\n")
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
        starts = list(accumulate((len(line) + 1 for line in lines[:-1]), initial=self._tail_offset))
        self._partial = [lines[-1]] if lines[-1] else []
        self._tail_offset = starts[-1]
        complete = lines[:-1]
        del starts[-1]
        if b"\r" in chunk or complete[0].endswith(b"\r"):
            complete = [line[:-1] if line.endswith(b"\r") else line for line in complete]
        # Checked in C first: blank lines are rare, so the filter in Python seldom runs.
        if not all(complete) or any(map(bytes.isspace, complete)):
            keep = [i for i, line in enumerate(complete) if line and not line.isspace()]
            complete = [complete[i] for i in keep]
            starts = [starts[i] for i in keep]
        self._add(complete, starts)

    def finish(self) -> None:
        if not self._partial:
            return
        line = b"".join(self._partial)
        self._partial = []
        start = self._tail_offset
        self._tail_offset += len(line)
        if line.endswith(b"\r"):
            line = line[:-1]
        if line and not line.isspace():
            self._add([line], [start])


class MsgpackFramer(Framer):
    """Concatenated msgpack objects, each passed on as its own bytes.

    The unpacker only skips over objects (it builds none) to learn where each ends.
    msgpack has no resynchronisation point, so once the stream is corrupt everything
    from the bad object to the end becomes one last record, for the parser to refuse.

    >>> f = MsgpackFramer(start=0)
    >>> f.feed(msgpack.packb({"a": 1}) + msgpack.packb([1, 2])[:1])
    >>> f.feed(msgpack.packb([1, 2])[1:] + b"\\xc1junk")
    >>> f.finish()
    >>> f.take(10)
    ([b'\\x81\\xa1a\\x01', b'\\x92\\x01\\x02', b'\\xc1junk'], [0, 4, 7])
    """

    def __init__(self, start: int) -> None:
        super().__init__(start)
        self._unpacker = msgpack.Unpacker()
        self._origin = start  # the unpacker's tell() counts from here
        self._pieces: list[bytes] = []  # the bytes from the tail offset on
        self._corrupt = False

    def feed(self, chunk: bytes) -> None:
        self._pieces.append(chunk)
        if self._corrupt:
            return
        ends: list[int] = []
        try:
            self._unpacker.feed(chunk)
            while True:
                try:
                    self._unpacker.skip()
                except msgpack.OutOfData:
                    break
                ends.append(self._origin + self._unpacker.tell())
        except (msgpack.UnpackException, ValueError):
            # FormatError, StackError, a length past the limits or BufferFull: no
            # object can be found after this point. The objects before it are sound.
            self._corrupt = True
        if ends:
            self._cut(ends)

    def _cut(self, ends: list[int]) -> None:
        data = b"".join(self._pieces)
        base = self._tail_offset
        starts = [base, *ends[:-1]]
        self._add([data[s - base : e - base] for s, e in zip(starts, ends, strict=True)], starts)
        rest = data[ends[-1] - base :]
        self._pieces = [rest] if rest else []
        self._tail_offset = ends[-1]

    def finish(self) -> None:
        # A corrupt stream, or one cut short inside an object.
        if self._pieces:
            rest = b"".join(self._pieces)
            self._pieces = []
            self._add([rest], [self._tail_offset])
            self._tail_offset += len(rest)


def framer_for(format: Format, start: int) -> Framer:
    """A framer for `format`, for a stream read from byte `start` on."""
    return LineFramer(start) if check_format(format) == "jsonl" else MsgpackFramer(start)
