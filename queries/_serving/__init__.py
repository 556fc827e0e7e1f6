"""Serving queries: the query layer (`QueryLayer`: guard, plan, cache tiers, execute on a
bounded pool of DuckDB connections), its configuration (`ServingConfig`, its caches'
`CacheConfig`), and Arrow Flight."""

from queries._serving._config import CacheConfig, ServingConfig
from queries._serving._flight import FlightQueryClient, FlightQueryServer, QueryService
from queries._serving._metrics import PoolCollector
from queries._serving._pool import ConnectionPool, PoolStats
from queries._serving._results import ResultStore
from queries._serving._service import QueryLayer
from queries._serving._shared import (
    RedisResultCache,
    SharedCacheError,
    SharedEntry,
    SharedResultCache,
)

__all__ = [
    "CacheConfig",
    "ConnectionPool",
    "FlightQueryClient",
    "FlightQueryServer",
    "PoolCollector",
    "PoolStats",
    "QueryLayer",
    "QueryService",
    "RedisResultCache",
    "ResultStore",
    "ServingConfig",
    "SharedCacheError",
    "SharedEntry",
    "SharedResultCache",
]
