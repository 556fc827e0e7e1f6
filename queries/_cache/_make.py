"""Caches by configuration: `make_cache(policy, ...)` gives an LRU, LFU or ARC cache,
optionally guarded for threads and reported to Prometheus.

>>> cache = make_cache("arc", max_entries=2, name="doc", metrics=False)
>>> cache.put("k", "v"), cache.get("k"), cache.get("x"), cache.stats().hit_rate
(True, 'v', None, 0.5)
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from queries._cache._arc import ARCCache
from queries._cache._base import MISSING, POLICIES, Cache, K, Policy, Tier, V
from queries._cache._lfu import LFUCache
from queries._cache._lru import LRUCache
from queries._cache._metrics import track


class _Synchronized(Cache[K, V]):
    """Every method of the policy under one lock (a cache shared by threads); a
    policy whose hit is one atomic dict operation overrides `get` to skip it."""

    def _init_store(self) -> None:
        self._lock = threading.Lock()
        super()._init_store()  # type: ignore[safe-super]

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            return super().get(key, default)  # type: ignore[safe-super]

    def put(self, key: K, value: V) -> bool:
        with self._lock:
            return super().put(key, value)  # type: ignore[safe-super]

    def pop(self, key: K, default: V | None = None) -> V | None:
        # `pop`, not `_remove`: the policies call `_remove` with the lock already held
        with self._lock:
            return super().pop(key, default)

    def peek(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            return super().peek(key, default)  # type: ignore[safe-super]

    def clear(self) -> None:
        with self._lock:
            super().clear()  # type: ignore[safe-super]

    def keys(self) -> list[K]:
        with self._lock:
            return super().keys()  # type: ignore[safe-super]


class SyncLRUCache(_Synchronized[K, V], LRUCache[K, V]):
    """LRU for threads. A hit is a lookup and a `move_to_end`, each atomic under the
    GIL (for keys hashed and compared in C: str, int, tuples of them), so `get` takes
    no lock; a key removed between the two is a miss."""

    def get(self, key: K, default: V | None = None) -> V | None:
        return LRUCache.get(self, key, default)


class SyncLFUCache(_Synchronized[K, V], LFUCache[K, V]):
    """LFU for threads: a hit moves its key between buckets, under the lock."""


class SyncARCCache(_Synchronized[K, V], ARCCache[K, V]):
    """ARC for threads. A hit in T2 (the hot set) is a lookup and a `move_to_end`, each
    atomic under the GIL, and takes no lock; a hit in T1 moves the entry to T2 under it."""

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._t2.get(key, MISSING)
        if value is not MISSING:
            try:  # noqa: SIM105 (contextlib.suppress costs a context manager per hit)
                self._touch(key)
            except KeyError:
                pass  # removed since: the value looked up is still what was there
            self.hits += 1
            return value  # type: ignore[return-value]
        if key not in self._t1:  # a miss needs no lock either
            self.misses += 1
            return default
        with self._lock:
            return ARCCache.get(self, key, default)


_CLASSES: dict[tuple[str, bool], type[Cache]] = {  # type: ignore[type-arg]
    ("lru", False): LRUCache,
    ("lfu", False): LFUCache,
    ("arc", False): ARCCache,
    ("lru", True): SyncLRUCache,
    ("lfu", True): SyncLFUCache,
    ("arc", True): SyncARCCache,
}


def make_cache(
    policy: Policy,
    max_entries: int,
    max_bytes: int | None = None,
    *,
    weigh: Callable[[V], int] | None = None,
    name: str = "cache",
    tier: Tier = "L1",
    on_evict: Callable[[K, V], None] | None = None,
    threadsafe: bool = False,
    metrics: bool = True,
) -> Cache[K, V]:
    """A cache of `policy` ("lru", "lfu" or "arc") bounded by `max_entries` and, if
    given, `max_bytes` (as weighed by `weigh`, default `default_weigh`).

    `threadsafe` guards every method with a lock (about 0.1 µs a call): for a cache
    that several threads use. With `metrics` its counts are exported to Prometheus as
    ``cqrsflow_cache_*{cache=name, tier=tier}`` (see `queries._cache_metrics`).
    """
    if policy not in POLICIES:
        raise ValueError(
            f"cache {name!r}: unknown policy {policy!r}; expected one of {', '.join(POLICIES)}"
        )
    cache: Cache[K, V] = _CLASSES[policy, threadsafe](
        max_entries, max_bytes, weigh=weigh, name=name, tier=tier, on_evict=on_evict
    )
    if metrics:
        track(cache)
    return cache
