"""What every cache of cqrsflow is: a bounded map with a replacement policy and counts.

A `Cache` holds at most `max_entries` entries and at most `max_bytes` bytes, as weighed
by its `weigh` callable when an entry is put (the default is a cheap estimate: an Arrow
table's or array's `nbytes`, a bytes object's length, else `sys.getsizeof`). The
policies (`LRUCache`, `LFUCache`, `ARCCache`) differ only in what they evict.

`get` is the hot path (a query served from cache, an aggregate found in memory): a dict
lookup plus the policy's O(1) bookkeeping, counted in plain ints. Prometheus sees the
counts when it scrapes (`queries._cache_metrics`), never per lookup.

Semantics shared by the policies (pinned by tests/test_cache_conformance.py):

- `get(k)` counts a hit or a miss and marks `k` used; `peek(k)` / `cache[k]` / `k in
  cache` do neither.
- `put(k, v)` of a new key makes room first (evicting in policy order) and then inserts,
  so the new entry is always held afterwards, unless it weighs more than `max_bytes`
  on its own (then nothing is stored and any old value of `k` is dropped). ARC may also
  decline a first-seen value that could only be made room for by flushing its frequent
  list (see `ARCCache`). `put` of a key already held replaces the value where it stands:
  it does not count as a use, so write-through updates do not make an entry look hot.
- `pop(k)` removes without counting an eviction; evictions (capacity) call `on_evict`.
- Not thread-safe: a cache shared by threads is made with ``threadsafe=True``
  (`make_cache`), which guards every method with a lock.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Generic, Literal, TypeVar

import pyarrow as pa

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Policy = Literal["lru", "lfu", "arc"]
POLICIES: tuple[Policy, ...] = ("lru", "lfu", "arc")
Tier = Literal["L1", "L2", "L3"]

# What holding one more entry costs besides its value: the dict slots of the policy's
# structures and of the weight table (measured with sys.getsizeof on CPython 3.11).
ENTRY_OVERHEAD = 120


_ARROW = (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)
_BYTES = (bytes, bytearray, memoryview)


def _arrow_size(value: object) -> int:
    return int(value.nbytes) + ENTRY_OVERHEAD  # type: ignore[attr-defined]


def _bytes_size(value: object) -> int:
    return len(value) + ENTRY_OVERHEAD  # type: ignore[arg-type]


def _object_size(value: object) -> int:
    return sys.getsizeof(value) + ENTRY_OVERHEAD


# type -> how to size it: isinstance against Arrow's classes costs ~0.4 µs a call,
# a dict lookup by type a tenth of that.
_SIZERS: dict[type, Callable[[object], int]] = {}


def default_weigh(value: object) -> int:
    """A cheap size estimate: `nbytes` of Arrow data, the length of bytes, else the
    object's own size (`sys.getsizeof`, not following references); plus the entry's
    own overhead."""
    kind = type(value)
    sizer = _SIZERS.get(kind)
    if sizer is None:
        if issubclass(kind, _ARROW):
            sizer = _arrow_size
        elif issubclass(kind, _BYTES):
            sizer = _bytes_size
        else:
            sizer = _object_size
        _SIZERS[kind] = sizer
    return sizer(value)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A cache's counts at one moment."""

    name: str
    tier: str
    policy: str
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int | None

    @property
    def hit_rate(self) -> float | None:
        """Hits over lookups, None before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


class Cache(ABC, Generic[K, V]):
    """A bounded map with a replacement policy; see the module's docstring."""

    policy: ClassVar[Policy]

    def __init__(
        self,
        max_entries: int,
        max_bytes: int | None = None,
        *,
        weigh: Callable[[V], int] | None = None,
        name: str = "cache",
        tier: Tier = "L1",
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(
                f"cache {name!r}: max_entries must be an integer >= 1, got {max_entries!r}"
            )
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(
                f"cache {name!r}: max_bytes must be an integer >= 1 or None (no byte "
                f"bound), got {max_bytes!r}"
            )
        self.name = name
        self.tier = tier
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # sys.maxsize stands for "no bound" so the checks stay one int comparison.
        self._byte_bound = sys.maxsize if max_bytes is None else max_bytes
        self._weigh: Callable[[V], int] = weigh if weigh is not None else default_weigh
        self._on_evict = on_evict
        self._weights: dict[K, int] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.bytes = 0
        self._init_store()

    @abstractmethod
    def _init_store(self) -> None:
        """Set up the policy's own structures (called once by `__init__`)."""

    # -- the map ---------------------------------------------------------------------

    @abstractmethod
    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of `key` (marked used, a hit counted), or `default` (a miss)."""

    @abstractmethod
    def put(self, key: K, value: V) -> bool:
        """Store `value` under `key`, evicting by policy to make room; whether it is held."""

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove `key` (not counted as an eviction); its value, or `default`."""
        value = self._remove(key)
        return default if value is MISSING else value  # type: ignore[return-value]

    @abstractmethod
    def _remove(self, key: K) -> V | Missing:
        """Remove `key` if held; its value, or the sentinel."""

    @abstractmethod
    def peek(self, key: K, default: V | None = None) -> V | None:
        """The value of `key` without counting or marking it used."""

    @abstractmethod
    def clear(self) -> None:
        """Drop every entry (and the policy's history); the counts stay."""

    @abstractmethod
    def keys(self) -> list[K]:
        """The keys held, a snapshot, the next to be evicted first (roughly, for LFU and
        ARC: the order their policy would consider them in)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    def __getitem__(self, key: K) -> V:
        """Like `peek`, raising KeyError for a key not held."""
        value = self.peek(key, MISSING)  # type: ignore[arg-type]
        if value is MISSING:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def items(self) -> list[tuple[K, V]]:
        """(key, value) pairs held, a snapshot in `keys()` order."""
        found = ((k, self.peek(k, MISSING)) for k in self.keys())  # type: ignore[arg-type]
        return [(k, v) for k, v in found if v is not MISSING]  # type: ignore[misc]

    def count_stale(self) -> None:
        """The value the last `get` returned turned out unusable (too old for its
        owner): count that lookup as a miss, not a hit."""
        self.hits -= 1
        self.misses += 1

    def weight(self, key: K) -> int | None:
        """The bytes `key` was weighed at, None if not held."""
        return self._weights.get(key)

    def stats(self) -> CacheStats:
        return CacheStats(
            self.name,
            self.tier,
            self.policy,
            self.hits,
            self.misses,
            self.evictions,
            len(self),
            self.bytes,
            self.max_entries,
            self.max_bytes,
        )

    def __repr__(self) -> str:
        bound = f", max_bytes={self.max_bytes}" if self.max_bytes is not None else ""
        return (
            f"{type(self).__name__}({self.name!r}, {len(self)}/{self.max_entries} entries"
            f"{bound}, {self.bytes} bytes)"
        )

    # -- shared bookkeeping --------------------------------------------------------

    def _too_big(self, key: K, weight: int) -> bool:
        """A value heavier than the whole byte bound is not stored (counted evicted)."""
        if weight <= self._byte_bound:
            return False
        self._remove(key)
        self.evictions += 1
        return True

    def _evicted(self, key: K, value: V) -> None:
        self.bytes -= self._weights.pop(key)
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict(key, value)


class Missing:
    """The sentinel for "no value": None is a value a cache may hold."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING = Missing()


class DictCache(Cache[K, V]):
    """A policy that keeps its values in one dict and evicts with `_shrink`."""

    @abstractmethod
    def _shrink(self, entries: int, weight: int) -> None:
        """Evict until `entries` more entries and `weight` more bytes fit."""

    def _replace(self, data: dict[K, V], key: K, value: V, weight: int) -> bool:
        """Replace a held key's value where it stands (not a use); whether it is still
        held once the byte bound is enforced again."""
        data[key] = value
        self.bytes += weight - self._weights[key]
        self._weights[key] = weight
        if self.bytes > self._byte_bound:
            self._shrink(0, 0)
        return key in data
