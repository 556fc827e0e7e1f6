"""File sources: JSON lines or concatenated msgpack, one partition per file, resumable.

A partition's snapshot is the byte offset of the first record it has not emitted, so a
resumed flow seeks there and reads on: nothing lost, nothing read twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from bytewax.inputs import FixedPartitionedSource

from connectors._batches import Format, RawBatch, check_batch_size
from connectors._errors import SourceError
from connectors._framing import CHUNK_BYTES, framer_for
from connectors._stream import FramedPartition


class _FilePartition(FramedPartition[int]):
    def __init__(self, path: Path, format: Format, batch_size: int, start: int) -> None:
        try:
            # Unbuffered: each read is one megabyte-sized system call, with no extra copy.
            self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        except OSError as err:
            raise SourceError(f"{path}: cannot read it ({err.strerror})") from err
        self._file.seek(start)
        super().__init__(str(path), format, framer_for(format, start), self._read_chunk, batch_size)

    def _read_chunk(self) -> bytes:
        return self._file.read(CHUNK_BYTES) or b""

    def snapshot(self) -> int:
        return self._framer.resume_offset

    def close(self) -> None:
        self._file.close()


class _FileSource(FixedPartitionedSource[RawBatch, int]):
    _format: ClassVar[Format]
    _suffixes: ClassVar[tuple[str, ...]]

    def __init__(self, path: Path, batch_size: int = 1000) -> None:
        if not path.exists():
            raise SourceError(
                f"{path}: no such file or directory (expected a {' or '.join(self._suffixes)} "
                "file, or a directory of them)"
            )
        self._path = path
        self._batch_size = check_batch_size(batch_size)

    def list_parts(self) -> list[str]:
        if self._path.is_dir():
            return sorted(
                p.name for p in self._path.iterdir() if p.suffix in self._suffixes and p.is_file()
            )
        return [self._path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        if self._path.is_dir():
            path = self._path / for_part
        elif for_part == self._path.name:
            path = self._path
        else:
            raise SourceError(
                f"partition {for_part!r} is not {self._path}: a flow resumes only "
                "from the same input file"
            )
        start = 0 if resume_state is None else resume_state
        return _FilePartition(path, self._format, self._batch_size, start)


class JsonLinesSource(_FileSource):
    """JSON lines from a file, or from each ``*.jsonl`` file of a directory.

    Blank lines are skipped and CRLF endings stripped; a last line without its
    newline is still a record. Lines are passed on as bytes, whatever their length or
    encoding: the parser judges them.
    """

    _format = "jsonl"
    _suffixes = (".jsonl",)


class MsgpackSource(_FileSource):
    """Concatenated msgpack objects from a file, or each msgpack file of a directory.

    A directory's msgpack files are its ``*.msgpack`` and ``*.mpk`` files. Each object is passed on as its own undecoded bytes. A corrupt stream ends with one
    record holding every byte from the first bad object on.
    """

    _format = "msgpack"
    _suffixes = (".msgpack", ".mpk")
