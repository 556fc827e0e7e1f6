"""The store's exceptions: one root, and every OS/Arrow error translated here.

StoreError
 ├── ConcurrencyError      an append whose versions do not follow the log
 ├── LockedError           a second writer on a partition
 ├── CorruptionError       a checksum or structure mismatch, with file and offset
 ├── DataDirError          a data directory this version cannot read
 ├── SchemaError           an event class the log cannot lay out
 └── StorageFullError      the disk is full; the log stays readable
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from store._streams import aggregate_id_of, aggregate_type_of


class StoreError(Exception):
    """Root of every error raised by `store`."""


@dataclass(frozen=True, slots=True)
class VersionConflict:
    """One stream whose appended events did not follow its last version. `stream` is
    its key (see `store.stream_key`): its aggregate's id and type."""

    stream: str
    expected: int
    actual: int

    @property
    def aggregate_id(self) -> str:
        return aggregate_id_of(self.stream)

    @property
    def aggregate_type(self) -> str:
        return aggregate_type_of(self.stream)

    def __str__(self) -> str:
        return (
            f"aggregate {self.aggregate_id!r} ({self.aggregate_type}): expected version "
            f"{self.expected} to follow, but the log is at version {self.actual}"
        )


class ConcurrencyError(StoreError):
    """Some aggregates' events did not follow the log; nothing was written for those.

    The events of every other aggregate in the batch were appended: their
    positions are in `appended`, in the order they were given, with `None` for
    the events of conflicting aggregates.
    """

    def __init__(self, conflicts: Sequence[VersionConflict], appended: Sequence[object]):
        self.conflicts = tuple(conflicts)
        self.appended = appended
        shown = "; ".join(str(c) for c in self.conflicts[:5])
        more = f" (and {len(self.conflicts) - 5} more)" if len(self.conflicts) > 5 else ""
        super().__init__(f"version conflict: {shown}{more}")


class LockedError(StoreError):
    """Another process holds the writer lock of a partition."""


class CorruptionError(StoreError):
    """A segment's bytes do not match their checksum or structure."""

    def __init__(self, path: str, offset: int, reason: str):
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path} at byte {offset}: {reason}")


class DataDirError(StoreError):
    """A data directory this version of cqrsflow cannot read or write."""


class SchemaError(StoreError):
    """An event class whose fields cannot be laid out as log columns."""


class StorageFullError(StoreError):
    """The disk filled up during an append; the log stays readable.

    Part of that append may be in the log (the partitions written before the one that
    failed, or a batch written just before a rotation failed): appending the same
    events again is safe, as the log recognises those it already holds by event id.
    """


def translate_os_error(err: OSError, what: str) -> StoreError:
    """The one place an OSError becomes a StoreError with the fix in its message."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(
            f"{what}: the disk is full ({err.strerror}); free space and retry the same "
            "events (the log keeps no event twice); the log is still readable"
        )
    return StoreError(f"{what}: {err.strerror or err}")
