"""The read side: materialized views in DuckDB, maintained from the log, and the query
layer that answers SQL from them.

Its rooms: `_views` declares views (`View` SQL, or `PythonProjection`) and maintains them
(`Projections.open(DIR, views)` keeps them in DIR/projections.duckdb; `catch_up`/`follow`
apply the log to them); `_planner` plans a query onto the cheapest view or the log;
`_serving` answers it (`QueryLayer.open`, locally or over Arrow Flight by `FlightQueryServer`)
through its cache tiers; `_cache` holds the bounded caches every tier (and the write
side's aggregate cache) is built from: `make_cache` (LRU, LFU or ARC, bounded by entries
and bytes), `ResultStore` for results, optionally a `SharedResultCache`
(`RedisResultCache`) shared between processes.
"""

from queries._cache import (
    POLICIES,
    ARCCache,
    Cache,
    CacheStats,
    LFUCache,
    LRUCache,
    Policy,
    make_cache,
    untrack,
)
from queries._errors import (
    CircuitOpen,
    PoolExhausted,
    ProjectionsBusy,
    QueryError,
    QueryRefused,
    QueryTimeout,
    ViewDefinitionError,
)
from queries._guard import FORBIDDEN_FUNCTIONS, TABLE_FUNCTIONS, check_read_only, harden
from queries._planner import Plan, Planner
from queries._serving import (
    CacheConfig,
    ConnectionPool,
    FlightQueryClient,
    FlightQueryServer,
    PoolCollector,
    PoolStats,
    QueryLayer,
    QueryService,
    RedisResultCache,
    ResultStore,
    ServingConfig,
    SharedCacheError,
    SharedEntry,
    SharedResultCache,
)
from queries._tables import event_tables, quote, register_log
from queries._views import (
    MAINTENANCE_SECONDS,
    VIEW_EVENTS,
    Aggregation,
    Column,
    Declared,
    Lag,
    Projections,
    PublishedCollector,
    PythonProjection,
    View,
    ViewDef,
    ViewsCollector,
    follow,
    parse_view,
    published_positions,
    published_views,
    read_published,
    read_watermark,
    request_rebuild,
    view_lags,
)

__all__ = [
    "FORBIDDEN_FUNCTIONS",
    "POLICIES",
    "TABLE_FUNCTIONS",
    "MAINTENANCE_SECONDS",
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
    "quote",
    "published_positions",
    "published_views",
    "read_published",
    "read_watermark",
    "register_log",
    "request_rebuild",
    "untrack",
    "view_lags",
]
