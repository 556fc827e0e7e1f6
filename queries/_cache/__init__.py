"""Bounded caches with a replacement policy: the query layer's tiers and the write side's
aggregate states both use them.

`make_cache(policy, ...)` gives an LRU, LFU or ARC cache (`Cache`), bounded by entries and
bytes, optionally guarded for threads, and tracked for Prometheus (`cqrsflow_cache_*`,
published from the caches' own counts by `track`, never per lookup).
"""

from queries._cache._arc import ARCCache
from queries._cache._base import ENTRY_OVERHEAD, POLICIES, Cache, CacheStats, Policy, Tier
from queries._cache._lfu import LFUCache
from queries._cache._lru import LRUCache
from queries._cache._make import make_cache
from queries._cache._metrics import on_publish, track, untrack

__all__ = [
    "ARCCache",
    "ENTRY_OVERHEAD",
    "POLICIES",
    "Cache",
    "CacheStats",
    "LFUCache",
    "LRUCache",
    "Policy",
    "Tier",
    "make_cache",
    "on_publish",
    "track",
    "untrack",
]
