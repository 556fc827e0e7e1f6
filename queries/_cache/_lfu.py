"""Least frequently used: evict the entry with the fewest `get`s, the least recent of
those first.

O(1) per operation (Shah, Mitra & Matani, "An O(1) algorithm for implementing the LFU
cache eviction scheme", 2010): entries sit in one bucket per use count, each bucket in
recency order, and the smallest non-empty count is kept at hand. A hit moves its key
from bucket n to bucket n + 1; an eviction pops the oldest key of the smallest bucket.
A new entry starts at count 1, so entries seen once (a scan) go before any that were
used again.

>>> cache = LFUCache(2)
>>> cache.put("a", 1), cache.put("b", 2), cache.get("a"), cache.get("a"), cache.get("b")
(True, True, 1, 1, 2)
>>> cache.put("c", 3), cache.keys()  # "b" (used once) went before "a" (twice)
(True, ['c', 'a'])
"""

from __future__ import annotations

from collections import OrderedDict

from queries._cache._base import MISSING, DictCache, K, Missing, V


class LFUCache(DictCache[K, V]):
    """Fewest uses first out; ties broken by recency."""

    policy = "lfu"

    def _init_store(self) -> None:
        self._data: dict[K, V] = {}
        self._count: dict[K, int] = {}
        # use count -> the keys with that count, least recent first
        self._buckets: dict[int, OrderedDict[K, None]] = {}
        self._least = 0  # the smallest count with a non-empty bucket (0: empty cache)

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._data.get(key, MISSING)
        if value is MISSING:
            self.misses += 1
            return default
        counts, buckets = self._count, self._buckets
        n = counts[key]
        bucket = buckets[n]
        del bucket[key]
        if not bucket:
            del buckets[n]
            if self._least == n:
                self._least = n + 1
        up = buckets.get(n + 1)
        if up is None:
            up = buckets[n + 1] = OrderedDict()
        up[key] = None
        counts[key] = n + 1
        self.hits += 1
        return value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> bool:
        weight = self._weigh(value)
        if weight > self._byte_bound and self._too_big(key, weight):
            return False
        data, weights = self._data, self._weights
        if key in weights:
            return self._replace(data, key, value, weight)
        if len(data) >= self.max_entries or self.bytes + weight > self._byte_bound:
            self._shrink(1, weight)
        data[key] = value
        weights[key] = weight
        self.bytes += weight
        self._count[key] = 1
        ones = self._buckets.get(1)
        if ones is None:
            ones = self._buckets[1] = OrderedDict()
        ones[key] = None
        self._least = 1
        return True

    def _shrink(self, entries: int, weight: int) -> None:
        """Evict the least used entries until `entries` more of `weight` bytes fit."""
        data, buckets = self._data, self._buckets
        max_entries, max_bytes = self.max_entries - entries, self._byte_bound - weight
        while data and (len(data) > max_entries or self.bytes > max_bytes):
            bucket = buckets[self._least]
            key, _ = bucket.popitem(last=False)
            if not bucket:
                del buckets[self._least]
                self._least = min(buckets) if buckets else 0
            del self._count[key]
            self._evicted(key, data.pop(key))

    def _remove(self, key: K) -> V | Missing:
        value = self._data.pop(key, MISSING)
        if value is MISSING:
            return value
        self.bytes -= self._weights.pop(key)
        n = self._count.pop(key)
        bucket = self._buckets[n]
        del bucket[key]
        if not bucket:
            del self._buckets[n]
            if self._least == n:
                self._least = min(self._buckets) if self._buckets else 0
        return value

    def peek(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def use_count(self, key: K) -> int:
        """How many times `key` was used since it was put (1 + its hits), 0 if not held."""
        return self._count.get(key, 0)

    def clear(self) -> None:
        self._data.clear()
        self._count.clear()
        self._buckets.clear()
        self._weights.clear()
        self._least = 0
        self.bytes = 0

    def keys(self) -> list[K]:
        return [k for n in sorted(self._buckets) for k in self._buckets[n]]

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
