"""Adaptive replacement (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead
Replacement Cache", FAST 2003): recency and frequency, balanced by what was evicted.

Four lists, each least recent first: T1 holds entries used once since they came in, T2
entries used again; B1 and B2 are ghosts, the keys (no values) lately evicted from T1
and T2. `p` is T1's target share of the `max_entries` slots. A put of a key found in B1
means T1 was too small (p grows), of a key in B2 that T2 was (p shrinks); room is made
by evicting from T1 while it is over its target, else from T2.

A scan (keys used once, a view rebuild's lookups, a one-off large result) only ever
enters T1, so it evicts T1's own entries and leaves T2, the hot set, alone. Two
extensions keep that true when the cache is bounded by bytes as well as entries:

- a first-seen value may displace at most one entry of T2 (what the paper's ARC does
  when T1 is empty); if all of T1 plus one T2 entry would not make room for it, it is
  not stored (counted as an eviction) and its key becomes a B1 ghost, so a second put of
  it adapts p and admits it into T2;
- a value put again from a ghost list (proven reuse) may evict by p as the paper says.

>>> cache = ARCCache(3)
>>> for key in "ab":
...     _ = cache.put(key, key.upper()), cache.get(key)  # used twice: hot (T2)
>>> for key in "cdefgh":  # a scan of keys used once
...     _ = cache.put(key, key.upper())
>>> sorted(k for k in "ab" if k in cache)  # the hot set survived the scan
['a', 'b']
"""

from __future__ import annotations

from collections import OrderedDict

from queries._cache._base import MISSING, Cache, K, Missing, V


class ARCCache(Cache[K, V]):
    """Adaptive replacement: scan-resistant, self-tuning between recency and frequency."""

    policy = "arc"

    def _init_store(self) -> None:
        self._t1: OrderedDict[K, V] = OrderedDict()
        self._t2: OrderedDict[K, V] = OrderedDict()
        self._b1: OrderedDict[K, None] = OrderedDict()
        self._b2: OrderedDict[K, None] = OrderedDict()
        self._touch = self._t2.move_to_end
        self._t1_bytes = 0
        self.p = 0.0  # T1's target size, in entries

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._t2.get(key, MISSING)
        if value is not MISSING:
            self._touch(key)
            self.hits += 1
            return value  # type: ignore[return-value]
        value = self._t1.pop(key, MISSING)
        if value is MISSING:
            self.misses += 1
            return default
        self._t2[key] = value  # type: ignore[assignment]  # used again: frequent now
        self._t1_bytes -= self._weights[key]
        self.hits += 1
        return value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> bool:
        weight = self._weigh(value)
        if weight > self._byte_bound and self._too_big(key, weight):
            return False
        t1, t2, b1, b2, weights = self._t1, self._t2, self._b1, self._b2, self._weights
        old = weights.get(key)
        if old is not None:  # replaced where it stands: not a use
            if key in t1:
                t1[key] = value
                self._t1_bytes += weight - old
            else:
                t2[key] = value
            weights[key] = weight
            self.bytes += weight - old
            if self.bytes > self._byte_bound:
                self._make_room(0, 0, from_b2=False, fresh=False)
            return key in weights
        c = self.max_entries
        if key in b1:  # T1 was too small for it: grow T1's target
            self.p = min(float(c), self.p + max(len(b2) / len(b1), 1.0))
            del b1[key]
            self._make_room(1, weight, from_b2=False, fresh=False)
            t2[key] = value
        elif key in b2:  # T2 was too small for it: shrink T1's target
            self.p = max(0.0, self.p - max(len(b1) / len(b2), 1.0))
            del b2[key]
            self._make_room(1, weight, from_b2=True, fresh=False)
            t2[key] = value
        else:
            if len(t1) + len(b1) >= c:
                if len(t1) < c:
                    b1.popitem(last=False)
                else:  # T1 fills the cache: its oldest leaves without a ghost
                    gone, held = t1.popitem(last=False)
                    self._t1_bytes -= weights[gone]
                    self._evicted(gone, held)
            elif len(t1) + len(t2) + len(b1) + len(b2) >= 2 * c and b2:
                b2.popitem(last=False)
            over = self.bytes + weight > self._byte_bound
            if over and not self._admits(weight):
                b1[key] = None
                self.evictions += 1
                self._trim_ghosts()
                return False
            if over or len(t1) + len(t2) >= c:
                self._make_room(1, weight, from_b2=False, fresh=True)
            t1[key] = value
            self._t1_bytes += weight
        weights[key] = weight
        self.bytes += weight
        self._trim_ghosts()
        return True

    def _admits(self, weight: int) -> bool:
        """Whether all of T1 and at most one entry of T2 make room for `weight` bytes."""
        room = self._byte_bound - weight
        if self.bytes - self._t1_bytes <= room:
            return True
        t2 = self._t2
        if not t2:
            return False
        oldest = next(iter(t2))
        return self.bytes - self._t1_bytes - self._weights[oldest] <= room

    def _make_room(self, entries: int, weight: int, *, from_b2: bool, fresh: bool) -> None:
        """REPLACE of the paper, repeated until `entries` more of `weight` bytes fit.

        `from_b2`: the key being put was a B2 ghost; `fresh`: it was in no list, and may
        displace at most one entry of T2."""
        t1, t2, weights = self._t1, self._t2, self._weights
        max_entries, max_bytes = self.max_entries - entries, self._byte_bound - weight
        took_t2 = False
        while (t1 or t2) and (len(t1) + len(t2) > max_entries or self.bytes > max_bytes):
            n1 = len(t1)
            if n1 and (not t2 or n1 > self.p or (from_b2 and n1 == self.p) or (fresh and took_t2)):
                key, value = t1.popitem(last=False)
                self._t1_bytes -= weights[key]
                self._b1[key] = None
            else:
                key, value = t2.popitem(last=False)
                self._b2[key] = None
                took_t2 = True
            self._evicted(key, value)

    def _trim_ghosts(self) -> None:
        """|T1| + |B1| <= c and |T1| + |T2| + |B1| + |B2| <= 2c, as the paper keeps them."""
        c = self.max_entries
        t1, b1, b2 = self._t1, self._b1, self._b2
        while b1 and len(t1) + len(b1) > c:
            b1.popitem(last=False)
        while b2 and len(t1) + len(self._t2) + len(b1) + len(b2) > 2 * c:
            b2.popitem(last=False)

    def _remove(self, key: K) -> V | Missing:
        value = self._t2.pop(key, MISSING)
        if value is MISSING:
            value = self._t1.pop(key, MISSING)
            if value is MISSING:
                return value
            self._t1_bytes -= self._weights[key]
        self.bytes -= self._weights.pop(key)
        return value

    def peek(self, key: K, default: V | None = None) -> V | None:
        value = self._t2.get(key, MISSING)
        if value is MISSING:
            return self._t1.get(key, default)
        return value  # type: ignore[return-value]

    def clear(self) -> None:
        for part in (self._t1, self._t2, self._b1, self._b2, self._weights):
            part.clear()
        self._t1_bytes = 0
        self.bytes = 0
        self.p = 0.0

    def keys(self) -> list[K]:
        return [*self._t1, *self._t2]

    def lists(self) -> tuple[int, int, int, int]:
        """The sizes of T1, T2, B1 and B2 (for tests and the curious)."""
        return len(self._t1), len(self._t2), len(self._b1), len(self._b2)

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def __contains__(self, key: object) -> bool:
        return key in self._t2 or key in self._t1
