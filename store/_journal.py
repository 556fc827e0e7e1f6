"""A small durable journal beside the log: checksummed msgpack records, in generations.

The command flow keeps here what the event log cannot hold: the answers to commands
that appended nothing (rejections) when their batch appended nothing either (otherwise
they go in that batch's note), so that a command sent again, even after a crash, gets
the answer it got the first time.

Each generation is one file, ``<generation>.journal``, of frames: length and CRC-32
(little-endian u32 each), then the msgpack record. A frame cut short by a crash, or
failing its CRC, ends the file: the tail of the newest file is cut when it is opened.
`rotate` starts a new generation and deletes all but the one before it, so the journal
holds two generations at most, as its user's memory of them does.

A record is found again by its location, ``(generation << 40) + offset``: an int,
which its user keeps instead of the record.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from store._errors import translate_os_error
from store._segment import fsync_dir, write_whole

_FRAME = struct.Struct("<II")  # length, CRC-32 of the record's bytes
_OFFSET_BITS = 40


class Journal:
    """Append records, make them durable, find them again by location."""

    def __init__(self, directory: Path, *, sync: bool = True):
        self.directory = directory
        self._sync = sync
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder().decode
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise translate_os_error(err, f"creating {directory}") from err
        found = sorted(int(p.stem) for p in directory.glob("*.journal") if p.stem.isdigit())
        self.generations = found[-2:] or [0]
        for old in found[:-2]:
            self._path(old).unlink(missing_ok=True)
        self._fd = -1
        self._size = 0
        self._open(self.generations[-1])

    def _path(self, generation: int) -> Path:
        return self.directory / f"{generation}.journal"

    def _open(self, generation: int) -> None:
        path = self._path(generation)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            whole = sum(len(frame) for _, frame in _frames(path))
            if os.fstat(fd).st_size != whole:
                os.ftruncate(fd, whole)  # a torn tail: its answers were never given
                os.fsync(fd)
            fsync_dir(self.directory)
        except OSError as err:
            raise translate_os_error(err, f"opening the journal {path}") from err
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size = fd, whole

    def records(self) -> Iterator[tuple[int, int, Any]]:
        """Every record: its generation, its location and itself, oldest first."""
        for generation in self.generations:
            base = generation << _OFFSET_BITS
            for offset, frame in _frames(self._path(generation)):
                yield generation, base + offset, self._decode(frame[_FRAME.size :])

    def append(self, records: Sequence[Any]) -> list[int]:
        """Write the records, not yet durable (see `sync`); their locations."""
        base = (self.generations[-1] << _OFFSET_BITS) + self._size
        frames, locations, size = [], [], 0
        for record in records:
            raw = self._encode(record)
            locations.append(base + size)
            frames.append(_FRAME.pack(len(raw), zlib.crc32(raw)) + raw)
            size += _FRAME.size + len(raw)
        try:
            write_whole(self._fd, b"".join(frames))
        except OSError as err:
            os.ftruncate(self._fd, self._size)  # nothing half-written stays behind
            raise translate_os_error(err, f"appending to the journal {self.directory}") from err
        self._size += size
        return locations

    def sync(self) -> None:
        if self._sync:
            try:
                os.fdatasync(self._fd)
            except OSError as err:
                raise translate_os_error(err, f"fsync of the journal {self.directory}") from err

    def read(self, location: int) -> Any:
        """The record at `location` (from `append` or `records`)."""
        generation, offset = location >> _OFFSET_BITS, location & ((1 << _OFFSET_BITS) - 1)
        with open(self._path(generation), "rb") as f:
            f.seek(offset)
            length, _ = _FRAME.unpack(f.read(_FRAME.size))
            return self._decode(f.read(length))

    def rotate(self) -> None:
        """Start a new generation; keep only the one before it."""
        new = self.generations[-1] + 1
        self._open(new)
        for old in self.generations[:-1]:
            self._path(old).unlink(missing_ok=True)
        self.generations = [self.generations[-1], new]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _frames(path: Path) -> Iterator[tuple[int, bytes]]:
    """The whole, intact frames of a journal file with their offsets; up to the first
    that is not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        end = offset + _FRAME.size + length
        if end > len(data) or zlib.crc32(data[offset + _FRAME.size : end]) != crc:
            return
        yield offset, data[offset:end]
        offset = end
