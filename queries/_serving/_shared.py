"""The L3 result cache: answers shared between query processes, with their watermark.

Several `cqrsflow serve` processes over the same log can share what they computed: a
`SharedResultCache` keeps answers as bytes (an Arrow IPC stream) by key, and stores
beside each the *watermark* it was read at: the log position per partition that the
views it read had applied (or the log's, for an answer read from the log). A reader
serves a shared answer only if that watermark is at least its own bound (by default,
where its own views are now: the shared answer is then at least as fresh as what it
would compute itself), or, when the caller allows staleness, if it is recent enough.

`RedisResultCache` is the implementation, on Redis (redis-py): one ``SET key value PX
ttl`` per answer, one ``GET`` per lookup. Redis bounds its memory itself (run it with
``--maxmemory`` and an ``allkeys-lru`` or ``allkeys-lfu`` policy). The cache never
fails a query: an unreachable server is a miss, counted in `errors`, and is not asked
again for `retry_after` seconds.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from queries._cache import track, untrack
from queries._errors import QueryError

_FORMAT = 1
_HEADER = struct.Struct(">BI")  # format, header length


class SharedCacheError(QueryError):
    """The shared cache cannot be used as configured (no client library, no server)."""


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """A shared answer: its bytes, the watermark it was read at, when it was stored."""

    payload: bytes
    watermark: Mapping[int, int]  # partition -> next log position the read had applied
    stored_at: float  # seconds since the epoch (clocks of one host, or synchronised)

    def covers(self, bound: Mapping[int, int]) -> bool:
        """Whether it was read at or after `bound` in every partition."""
        return all(self.watermark.get(p, 0) >= pos for p, pos in bound.items())

    def encode(self) -> bytes:
        header: bytes = msgpack.packb([sorted(self.watermark.items()), self.stored_at])
        return _HEADER.pack(_FORMAT, len(header)) + header + self.payload

    @classmethod
    def decode(cls, data: bytes) -> SharedEntry | None:
        """The entry in `data`, None if it is not one this version wrote."""
        if len(data) < _HEADER.size:
            return None
        version, length = _HEADER.unpack_from(data)
        if version != _FORMAT:
            return None
        start = _HEADER.size
        watermark, stored_at = msgpack.unpackb(data[start : start + length])
        return cls(
            data[start + length :], {int(p): int(pos) for p, pos in watermark}, float(stored_at)
        )


def shared_key(namespace: str, sql: str, params: tuple[object, ...]) -> str:
    """The key of an answer: the rewritten statement (its tables name the views'
    versions) and its parameters, hashed, under `namespace`."""
    digest = hashlib.blake2b(repr((sql, params)).encode(), digest_size=16).hexdigest()
    return f"{namespace}:v{_FORMAT}:{digest}"


class SharedResultCache(ABC):
    """Answers shared between processes, as bytes with their watermark."""

    name = "shared"
    tier = "L3"

    def __init__(self, namespace: str = "cqrsflow:results") -> None:
        self.namespace = namespace  # the prefix of its keys
        self.hits = 0
        self.misses = 0
        self.stale = 0  # found, but older than the reader's bound
        self.errors = 0
        self.stores = 0

    @abstractmethod
    def fetch(self, key: str) -> SharedEntry | None:
        """The entry under `key`, None if absent or unreachable."""

    @abstractmethod
    def store(self, key: str, entry: SharedEntry, ttl: float) -> None:
        """Keep `entry` under `key` for `ttl` seconds (best effort)."""

    def get(
        self,
        key: str,
        at_least: Mapping[int, int],
        *,
        max_age: float | None = None,
        after: Mapping[int, int] | None = None,
    ) -> SharedEntry | None:
        """The entry under `key` if fresh enough for this reader: read at or after
        `at_least` (its own watermark), or, with `max_age`, stored at most that many
        seconds ago and read at or after `after`. Counts a hit or a miss."""
        entry = self.fetch(key)
        if entry is not None and (
            entry.covers(at_least)
            or (
                max_age is not None
                and time.time() - entry.stored_at <= max_age
                and entry.covers(after or {})
            )
        ):
            self.hits += 1
            return entry
        if entry is not None:
            self.stale += 1
        self.misses += 1
        return None

    def put(self, key: str, payload: bytes, watermark: Mapping[int, int], ttl: float) -> None:
        self.stores += 1
        self.store(key, SharedEntry(payload, dict(watermark), time.time()), ttl)

    # what the metrics read (`queries._cache_metrics.Tracked`)
    @property
    def evictions(self) -> int:
        return 0

    @property
    def bytes(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        untrack(self)


class RedisResultCache(SharedResultCache):
    """`SharedResultCache` on a Redis server (``redis://HOST:PORT/DB``).

    Entries, bytes and evictions reported to Prometheus are the Redis database's own
    (DBSIZE, ``used_memory``, ``evicted_keys``), read at most once a second.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "cqrsflow:results",
        timeout: float = 0.5,
        retry_after: float = 5.0,
        metrics: bool = True,
    ) -> None:
        super().__init__(namespace)
        try:
            import redis
        except ImportError:
            raise SharedCacheError(
                "the shared result cache needs the redis client: pip install 'cqrsflow[redis]'"
            ) from None
        self.url = url
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        try:
            self._client: Any = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except ValueError as err:
            raise SharedCacheError(
                f"--redis {url!r}: {err}; expected redis://HOST:PORT[/DB]"
            ) from None
        self._retry_after = retry_after
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._sizes = (0.0, 0, 0, 0)  # read at, keys, bytes, evictions
        if metrics:
            track(self)

    def ping(self) -> None:
        """Raise `SharedCacheError` unless the server answers."""
        try:
            self._client.ping()
        except self._errors as err:
            raise SharedCacheError(
                f"cannot reach Redis at {self.url}: {err}; start redis-server there, or "
                "serve without --redis"
            ) from None

    def _up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self._retry_after

    def fetch(self, key: str) -> SharedEntry | None:
        if not self._up():
            return None
        try:
            data = self._client.get(key)
        except self._errors:
            self._failed()
            return None
        return SharedEntry.decode(data) if data is not None else None

    def store(self, key: str, entry: SharedEntry, ttl: float) -> None:
        if not self._up():
            return
        try:
            self._client.set(key, entry.encode(), px=max(int(ttl * 1000), 1))
        except self._errors:
            self._failed()

    def _read_sizes(self) -> tuple[float, int, int, int]:
        with self._lock:
            at, keys, used, evicted = self._sizes
            if time.monotonic() - at < 1.0 or not self._up():
                return self._sizes
            try:
                keys = int(self._client.dbsize())
                info = self._client.info()
                used, evicted = int(info["used_memory"]), int(info["evicted_keys"])
            except self._errors:
                self._failed()
            self._sizes = (time.monotonic(), keys, used, evicted)
            return self._sizes

    @property
    def evictions(self) -> int:
        return self._read_sizes()[3]

    @property
    def bytes(self) -> int:
        return self._read_sizes()[2]

    def __len__(self) -> int:
        return self._read_sizes()[1]

    def close(self) -> None:
        super().close()
        self._client.close()
