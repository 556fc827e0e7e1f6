"""The event log: a partitioned, memory-mapped Apache Arrow IPC store.

Open it with `ArrowLog.open(DIR, Layout.from_classes({...}))`, read it from anywhere
with `LogReader.open(DIR)`. `MemoryLog` is the same contract in memory.
"""

from store._contract import EventLog
from store._errors import (
    ConcurrencyError,
    CorruptionError,
    DataDirError,
    LockedError,
    SchemaError,
    StorageFullError,
    StoreError,
    VersionConflict,
)
from store._frames import log_table, to_polars
from store._journal import Journal
from store._layout import ENVELOPE_NAMES, EventType, Layout, PayloadField
from store._log import ArrowLog, LogReader, check_writable, log_partitions, partition_of
from store._memory import MemoryLog
from store._metrics import LogDiskCollector
from store._model import Fsync, LogConfig, NewEvent, Position, Positions, RecordedEvent
from store._segment import Recovery
from store._snapshots import Snapshot, SnapshotPolicy, SnapshotStore, fingerprint
from store._verify import verify_log

__all__ = [
    "ENVELOPE_NAMES",
    "ArrowLog",
    "ConcurrencyError",
    "CorruptionError",
    "DataDirError",
    "EventLog",
    "EventType",
    "Fsync",
    "Journal",
    "Layout",
    "LockedError",
    "LogConfig",
    "LogDiskCollector",
    "LogReader",
    "MemoryLog",
    "NewEvent",
    "PayloadField",
    "Position",
    "Positions",
    "RecordedEvent",
    "Recovery",
    "SchemaError",
    "Snapshot",
    "SnapshotPolicy",
    "SnapshotStore",
    "StorageFullError",
    "StoreError",
    "VersionConflict",
    "check_writable",
    "fingerprint",
    "log_partitions",
    "log_table",
    "partition_of",
    "to_polars",
    "verify_log",
]
