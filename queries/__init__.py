"""The read side: materialized views in DuckDB, maintained from the log, and the query
layer that answers SQL from them.

Declare views with `View` (SQL) or `PythonProjection`; `Projections.open(DIR, views)`
keeps them in DIR/projections.duckdb, `catch_up`/`follow` applies the log to them, and
`QueryLayer` answers SQL from the cheapest view (or the log), locally or served over
Arrow Flight by `FlightQueryServer`, through its caches: `make_cache` (LRU, LFU or ARC,
bounded by entries and bytes) for plans and hot rows, `ResultStore` for results, and
optionally a `SharedResultCache` (`RedisResultCache`) shared between processes.
"""

from queries._cache import make_cache
from queries._cache_arc import ARCCache
from queries._cache_base import Cache, CacheStats
from queries._cache_config import CacheConfig
from queries._cache_lfu import LFUCache
from queries._cache_lru import LRUCache
from queries._cache_results import ResultStore
from queries._cache_shared import RedisResultCache, SharedCacheError, SharedResultCache
from queries._errors import (
    CircuitOpen,
    PoolExhausted,
    ProjectionsBusy,
    QueryError,
    QueryRefused,
    QueryTimeout,
    ViewDefinitionError,
)
from queries._flight import FlightQueryClient, FlightQueryServer, QueryService
from queries._follow import follow, read_watermark
from queries._guard import check_read_only, harden
from queries._lag import Lag
from queries._planner import Plan, Planner
from queries._pool import ConnectionPool, PoolStats
from queries._projections import Projections, PythonProjection, View
from queries._service import QueryLayer
from queries._tables import event_tables, register_log
from queries._viewdef import Aggregation, Column, ViewDef, parse_view

__all__ = [
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
]
