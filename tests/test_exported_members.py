"""Each package's public API is the short list in its `__init__.__all__`; this pins it,
and no module reaches into another package's private modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import connectors
import flows
import flows.bench
import flows.cli
import queries
import store
import store.disk

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("store", "queries", "connectors", "flows")


def test_store_exports() -> None:
    assert set(store.__all__) == {
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
    }
    for name in store.__all__:
        assert getattr(store, name) is not None


def test_store_disk_exports() -> None:
    assert set(store.disk.__all__) == {
        "ENTRY_SIZE",
        "EOS",
        "PREAMBLE_SIZE",
        "SealedIndex",
        "SegmentFiles",
        "SegmentReader",
        "SegmentWriter",
        "entry_offset",
        "list_segments",
        "read_entries",
        "write_index",
    }


def test_connectors_exports() -> None:
    assert set(connectors.__all__) == {
        "CHUNK_BYTES",
        "GROW",
        "SHRINK",
        "BatchSize",
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
        "FLOW_LOG",
        "MAX_RECORD_BYTES",
        "Aggregate",
        "App",
        "AppError",
        "Backpressure",
        "Command",
        "DeadLetter",
        "Decision",
        "DomainError",
        "FlowConfig",
        "FlowError",
        "Invalid",
        "Parser",
        "Rejected",
        "Result",
        "Shard",
        "ShardConfig",
        "Upcaster",
        "command_flow",
        "load_app",
    }
    for name in flows.__all__:
        assert getattr(flows, name) is not None


def test_flows_cli_and_bench_exports() -> None:
    assert "main" in flows.cli.__all__ and "parser" in flows.cli.__all__
    for module in (flows.cli, flows.bench):
        for name in module.__all__:
            assert getattr(module, name) is not None
    assert {"SUITES", "TARGETS", "Figure", "bench_all", "compare"} <= set(flows.bench.__all__)


def test_queries_exports() -> None:
    assert set(queries.__all__) == {
        "FORBIDDEN_FUNCTIONS",
        "MAINTENANCE_SECONDS",
        "POLICIES",
        "TABLE_FUNCTIONS",
        "VIEW_EVENTS",
        "ARCCache",
        "Aggregation",
        "Cache",
        "CacheConfig",
        "CacheStats",
        "CircuitOpen",
        "Column",
        "ConnectionPool",
        "Declared",
        "FlightQueryClient",
        "FlightQueryServer",
        "LFUCache",
        "LRUCache",
        "Lag",
        "Plan",
        "Planner",
        "Policy",
        "PoolCollector",
        "PoolExhausted",
        "PoolStats",
        "Projections",
        "ProjectionsBusy",
        "PublishedCollector",
        "PythonProjection",
        "QueryError",
        "QueryLayer",
        "QueryRefused",
        "QueryService",
        "QueryTimeout",
        "RedisResultCache",
        "ResultStore",
        "ServingConfig",
        "SharedCacheError",
        "SharedEntry",
        "SharedResultCache",
        "View",
        "ViewDef",
        "ViewDefinitionError",
        "ViewsCollector",
        "check_read_only",
        "event_tables",
        "follow",
        "harden",
        "make_cache",
        "parse_view",
        "published_positions",
        "published_views",
        "quote",
        "read_published",
        "read_watermark",
        "register_log",
        "request_rebuild",
        "untrack",
        "view_lags",
    }
    for name in queries.__all__:
        assert getattr(queries, name) is not None


# -- nothing reaches into another package's private modules -------------------------------


def private_reaches(importer: str, imported: str) -> bool:
    """Whether module `importer` may not import `imported`: a component of `imported`
    that starts with an underscore is private to the package above it, which `importer`
    must be inside of.

    >>> private_reaches("flows.cli._run", "flows._flow")
    False
    >>> private_reaches("flows.cli._run", "flows._flow._shard")
    True
    >>> private_reaches("flows.notebook", "queries._tables")
    True
    """
    parts = imported.split(".")
    for k in range(1, len(parts)):
        if parts[k].startswith("_") and not parts[k].startswith("__"):
            owner = ".".join(parts[:k])
            if importer != owner and not importer.startswith(owner + "."):
                return True
    return False


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(n, m) for n, m in found if m.split(".")[0] in PACKAGES]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == "tests":  # outside every package: public names only
        return "tests." + ".".join(parts[1:])
    return ".".join(parts)


SOURCES = sorted(p for pkg in (*PACKAGES, "tests") for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_packages_private_module(path: Path) -> None:
    importer = _module_name(path)
    leaks = [
        f"{path.relative_to(ROOT)}:{line}: {imported}"
        for line, imported in _imports(path)
        if private_reaches(importer, imported)
    ]
    assert not leaks, "imports of private modules (use the package's public names):\n" + (
        "\n".join(leaks)
    )
