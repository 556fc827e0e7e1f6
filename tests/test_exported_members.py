"""Each package's public API is the short list in its `__init__.__all__`; this pins it."""

from __future__ import annotations

import connectors
import flows
import queries
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
    }
    for name in store.__all__:
        assert getattr(store, name) is not None


def test_connectors_exports() -> None:
    assert set(connectors.__all__) == {
        "ConnectorError",
        "Format",
        "GeneratorSource",
        "JsonLinesSink",
        "JsonLinesSource",
        "LogTailSource",
        "MissingExtraError",
        "MsgpackSource",
        "RawBatch",
        "Record",
        "SinkError",
        "SourceError",
        "StdinSource",
        "kafka_source",
    }
    for name in connectors.__all__:
        assert getattr(connectors, name) is not None


def test_flows_exports() -> None:
    assert set(flows.__all__) == {
        "Aggregate",
        "Command",
        "DeadLetter",
        "Decision",
        "FlowConfig",
        "Invalid",
        "Parser",
        "Rejected",
        "Result",
        "ShardConfig",
        "command_flow",
    }
    for name in flows.__all__:
        assert getattr(flows, name) is not None


def test_queries_exports() -> None:
    assert set(queries.__all__) == {
        "ARCCache",
        "Aggregation",
        "Cache",
        "CacheConfig",
        "CacheStats",
        "CircuitOpen",
        "Column",
        "ConnectionPool",
        "FlightQueryClient",
        "FlightQueryServer",
        "LFUCache",
        "LRUCache",
        "Lag",
        "Plan",
        "Planner",
        "PoolExhausted",
        "PoolStats",
        "Projections",
        "ProjectionsBusy",
        "PythonProjection",
        "QueryError",
        "QueryLayer",
        "QueryRefused",
        "QueryService",
        "QueryTimeout",
        "RedisResultCache",
        "ResultStore",
        "SharedCacheError",
        "SharedResultCache",
        "View",
        "ViewDef",
        "ViewDefinitionError",
        "check_read_only",
        "event_tables",
        "follow",
        "harden",
        "make_cache",
        "parse_view",
        "read_watermark",
        "register_log",
    }
