"""Each package's public API is the short list in its `__init__.__all__`; this pins it."""

from __future__ import annotations

import store


def test_store_exports() -> None:
    assert set(store.__all__) == {
        "ENVELOPE_NAMES",
        "ArrowLog",
        "ConcurrencyError",
        "CorruptionError",
        "DataDirError",
        "EventLog",
        "EventType",
        "Fsync",
        "Layout",
        "LockedError",
        "LogConfig",
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
        "fingerprint",
        "log_partitions",
        "log_table",
        "partition_of",
        "to_polars",
        "verify_log",
    }
    for name in store.__all__:
        assert getattr(store, name) is not None
