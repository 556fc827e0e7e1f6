"""A sink that appends JSON lines, one file per worker: results and dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors._errors import ConnectorError

# What the encoder writes as one JSON object per line.
Record = msgspec.Struct | dict[str, Any]
# Generic, so that a sink of Results is a `Sink[list[Result]]` where a flow asks for one.
R = TypeVar("R", bound=Record)


class _JsonLinesPartition(StatelessSinkPartition[list[R]], Generic[R]):
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 (closed by close())
        except OSError as err:
            raise ConnectorError(f"{path}: cannot open it for appending ({err.strerror})") from err
        self._encoder = msgspec.json.Encoder()

    def write_batch(self, items: list[list[R]]) -> None:
        records = [record for batch in items for record in batch]
        if records:
            # One buffer and one write for every record bytewax handed over at once.
            self._file.write(self._encoder.encode_lines(records))
            self._file.flush()

    def close(self) -> None:
        self._file.flush()
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
