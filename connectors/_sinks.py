"""A sink that appends JSON lines, one file per worker: results and dead letters."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors._errors import ConnectorError, SinkError

# What the encoder writes as one JSON object per line.
Record = msgspec.Struct | dict[str, Any]
# Generic, so that a sink of Results is a `Sink[list[Result]]` where a flow asks for one.
R = TypeVar("R", bound=Record)


class _JsonLinesPartition(StatelessSinkPartition[list[R]], Generic[R]):
    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 (closed by close())
            self._end_torn_line()
        except OSError as err:
            raise ConnectorError(f"{path}: cannot open it for appending ({err.strerror})") from err
        self._encoder = msgspec.json.Encoder()

    def _end_torn_line(self) -> None:
        """A line cut short by a crash or a full disk stays a line of its own: without
        the newline, the first record appended now would join it and be lost with it."""
        size = self._file.seek(0, 2)
        if size:
            with open(self._path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._file.write(b"\n")
                    self._file.flush()

    def write_batch(self, items: list[list[R]]) -> None:
        records = [record for batch in items for record in batch]
        if not records:
            return
        # One buffer and one write for every record bytewax handed over at once.
        data = self._encoder.encode_lines(records)
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as err:
            raise SinkError(
                f"{self._path}: cannot append {len(records):,} record(s) ({err.strerror}); "
                + (
                    "the disk is full: free space and run again, a run resumes where it stopped"
                    if err.errno in (errno.ENOSPC, errno.EDQUOT)
                    else "check the path and its file system, then run again"
                )
            ) from None  # the message says it all: a command line shows it as one line

    def close(self) -> None:
        # What could not be written was reported by write_batch; closing (which flushes
        # the rest of the buffer) must not raise it again over the first report.
        with contextlib.suppress(OSError):
            self._file.close()


class JsonLinesSink(DynamicSink[list[R]], Generic[R]):
    """Appends each batch of records to ``DIRECTORY/<prefix>-<worker index>.jsonl``.

    Each item is a list of records (msgspec Structs or dicts), written one JSON
    line each. Workers write their own files, so they never contend for one.
    """

    def __init__(self, directory: Path, prefix: str) -> None:
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix {prefix!r}: expected a file name prefix, without '/'")
        self._directory = directory
        self._prefix = prefix

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonLinesPartition[R]:
        return _JsonLinesPartition(self._directory / f"{self._prefix}-{worker_index}.jsonl")
