"""Least recently used: evict the entry whose last `get` is oldest.

One OrderedDict in recency order (least recent first): a hit is a lookup and a
`move_to_end`, both in C; an eviction is `popitem(last=False)`.

>>> cache = LRUCache(2)
>>> cache.put("a", 1), cache.put("b", 2), cache.get("a"), cache.put("c", 3)
(True, True, 1, True)
>>> cache.keys()  # "b" was the least recently used
['a', 'c']
"""

from __future__ import annotations

from collections import OrderedDict

from queries._cache._base import MISSING, DictCache, K, Missing, V


class LRUCache(DictCache[K, V]):
    """Least recently used first out."""

    policy = "lru"

    def _init_store(self) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._touch = self._data.move_to_end

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._data.get(key, MISSING)
        if value is MISSING:
            self.misses += 1
            return default
        try:  # noqa: SIM105 (contextlib.suppress costs a context manager per hit)
            self._touch(key)
        except KeyError:
            pass  # removed by another thread since: still the value that was there
        self.hits += 1
        return value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> bool:
        weight = self._weigh(value)
        if weight > self._byte_bound and self._too_big(key, weight):
            return False
        data, weights = self._data, self._weights
        if key in weights:
            return self._replace(data, key, value, weight)
        if self.bytes + weight > self._byte_bound:
            self._shrink(1, weight)
        elif len(data) >= self.max_entries:  # full by count: one out, inline (the common case)
            gone, held = data.popitem(last=False)
            self.bytes -= weights.pop(gone)
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(gone, held)
        data[key] = value
        weights[key] = weight
        self.bytes += weight
        return True

    def _shrink(self, entries: int, weight: int) -> None:
        """Evict least recent entries until `entries` more of `weight` bytes fit."""
        data = self._data
        max_entries, max_bytes = self.max_entries - entries, self._byte_bound - weight
        while data and (len(data) > max_entries or self.bytes > max_bytes):
            key, value = data.popitem(last=False)
            self._evicted(key, value)

    def _remove(self, key: K) -> V | Missing:
        value = self._data.pop(key, MISSING)
        if value is MISSING:
            return value
        self.bytes -= self._weights.pop(key)
        return value

    def peek(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(key, default)

    def clear(self) -> None:
        self._data.clear()
        self._weights.clear()
        self.bytes = 0

    def keys(self) -> list[K]:
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
