"""Aggregate snapshots: a state at a version, so rehydration skips old events.

One file per aggregate under ``DIR/snapshots/<2 hex>/<blake2b of the id>.snap``:
magic, format, CRC-32, then msgpack ``[aggregate_id, version, fingerprint, state]``.
Snapshots are derived data (the log can always rebuild them), so they are replaced
atomically but not fsynced: a torn or damaged file fails its CRC and is ignored. A
snapshot whose fingerprint differs from the caller's (the state's class changed) is
discarded rather than misread.
"""

from __future__ import annotations

import hashlib
import os
import struct
import typing
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from store._errors import translate_os_error
from store._records import is_record_class, record_fields

_MAGIC = b"CQSS"
_HEADER = struct.Struct("<4sII")  # magic, format, crc32 of the body
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    aggregate_id: str
    version: int
    state: Any


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """Take a snapshot each time an aggregate's version crosses a multiple of `every`."""

    every: int = 100

    def due(self, before: int, after: int) -> bool:
        return after // self.every > before // self.every


def fingerprint(state_type: type) -> str:
    """A short hash of a state class's shape: field names and types, recursively.

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class Account:
    ...     balance: int
    >>> len(fingerprint(Account))
    16
    """
    return hashlib.blake2b(_shape(state_type).encode(), digest_size=8).hexdigest()


def _shape(tp: Any) -> str:
    if is_record_class(tp):
        inner = ",".join(f"{name}:{_shape(t)}" for name, t in record_fields(tp))
        return f"{tp.__qualname__}({inner})"
    args = typing.get_args(tp)
    if args:
        return f"{typing.get_origin(tp)}[{','.join(_shape(a) for a in args)}]"
    return getattr(tp, "__qualname__", repr(tp))


class SnapshotStore:
    """Save and load snapshots in `DIR/snapshots`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.discarded = 0  # stale or damaged snapshots seen by `load`

    def _path(self, aggregate_id: str) -> Path:
        digest = hashlib.blake2b(aggregate_id.encode(), digest_size=16).hexdigest()
        return self.directory / digest[:2] / f"{digest}.snap"

    def save(self, aggregate_id: str, version: int, state: Any, fingerprint: str) -> None:
        body = msgpack.packb([aggregate_id, version, fingerprint, state])
        path = self._path(aggregate_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(_HEADER.pack(_MAGIC, _FORMAT, zlib.crc32(body)))
                f.write(body)
            os.replace(tmp, path)
        except OSError as err:
            raise translate_os_error(err, f"saving snapshot of {aggregate_id!r}") from err

    def load(self, aggregate_id: str, fingerprint: str) -> Snapshot | None:
        """The latest snapshot of the aggregate, or None if there is none usable."""
        try:
            raw = self._path(aggregate_id).read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < _HEADER.size:
            self.discarded += 1
            return None
        magic, fmt, crc = _HEADER.unpack_from(raw)
        body = memoryview(raw)[_HEADER.size :]
        if magic != _MAGIC or fmt != _FORMAT or zlib.crc32(body) != crc:
            self.discarded += 1
            return None
        agg, version, found_fingerprint, state = msgpack.unpackb(body)
        if agg != aggregate_id or found_fingerprint != fingerprint:
            self.discarded += 1
            return None
        return Snapshot(agg, version, state)
