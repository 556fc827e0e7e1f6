"""The event log: a partitioned, memory-mapped Apache Arrow IPC store.

Open it with `ArrowLog.open(DIR, Layout.from_classes({...}))`, read it from anywhere
with `LogReader.open(DIR)`. `MemoryLog` is the same contract in memory. `DataDir` names
every path of a data directory; `store.disk` is the segments' on-disk format, for tools
and tests that inspect (or damage) segment files.
"""

from store._contract import EventLog
from store._datadir import DataDir
from store._errors import (
    ConcurrencyError,
    CorruptionError,
    DataDirError,
    LockedError,
    SchemaError,
    StorageFullError,
    StoreError,
    VersionConflict,
    translate_os_error,
)
from store._frames import concat, log_table, to_polars
from store._journal import Journal
from store._layout import ENVELOPE_NAMES, EventType, Layout, PayloadField, Upcaster
from store._log import ArrowLog, LogReader, check_writable, log_partitions, partition_of
from store._memory import MemoryLog
from store._metrics import LogDiskCollector
from store._model import (
    Fsync,
    LogConfig,
    NewEvent,
    Position,
    Positions,
    RecordedEvent,
    latest_positions,
)
from store._segment import Recovery
from store._snapshots import Snapshot, SnapshotPolicy, SnapshotStore, fingerprint
from store._streams import split_stream, stream_key
from store._verify import SegmentStats, segment_stats, verify_log

__all__ = [
    "ENVELOPE_NAMES",
    "ArrowLog",
    "ConcurrencyError",
    "CorruptionError",
    "DataDir",
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
    "SegmentStats",
    "Snapshot",
    "SnapshotPolicy",
    "SnapshotStore",
    "StorageFullError",
    "StoreError",
    "Upcaster",
    "VersionConflict",
    "check_writable",
    "concat",
    "fingerprint",
    "latest_positions",
    "log_partitions",
    "log_table",
    "partition_of",
    "segment_stats",
    "split_stream",
    "stream_key",
    "to_polars",
    "translate_os_error",
    "verify_log",
]
