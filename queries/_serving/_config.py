"""How a query layer serves: its pool, timeouts and warming (`ServingConfig`), and how
it caches, each tier's policy and bounds (`CacheConfig`), in frozen values.

>>> CacheConfig(result_policy="lfu").result_policy
'lfu'
>>> CacheConfig(hot_policy="fifo")
Traceback (most recent call last):
...
ValueError: CacheConfig.hot_policy: unknown policy 'fifo'; expected one of lru, lfu, arc
>>> ServingConfig(pool_size=2, caches=CacheConfig(ttl=5.0)).caches.ttl
5.0
>>> ServingConfig(wait_timeout=0)
Traceback (most recent call last):
...
ValueError: ServingConfig.wait_timeout: expected seconds > 0, got 0
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from queries._cache import POLICIES, Policy
from queries._serving._results import COMPRESS_FROM, Compression


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The query layer's caches (policies: "lru", "lfu", "arc").

    - plan cache (L1): plans by query shape;
    - hot rows (L1): answers of key lookups on a view, by query text, until a batch
      changes their key;
    - results (L2): other answers, compressed from `compress_from` bytes (None: never);
    - `ttl`: the longest any answer is served, whatever else says it is fresh.
    """

    plan_policy: Policy = "lru"
    plan_entries: int = 1024
    hot_policy: Policy = "arc"
    hot_entries: int = 65_536
    hot_bytes: int = 64 * 2**20
    result_policy: Policy = "arc"
    result_entries: int = 4096
    result_bytes: int = 256 * 2**20
    compression: Compression | None = "lz4"
    compress_from: int = COMPRESS_FROM
    ttl: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_policy") and value not in POLICIES:
                raise ValueError(
                    f"CacheConfig.{f.name}: unknown policy {value!r}; expected one of "
                    f"{', '.join(POLICIES)}"
                )
            if f.name.endswith(("_entries", "_bytes")) and (
                not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"CacheConfig.{f.name}: expected an integer >= 1, got {value!r}")
        if self.compression not in (None, "lz4", "zstd"):
            raise ValueError(
                f"CacheConfig.compression: expected 'lz4', 'zstd' or None, got {self.compression!r}"
            )
        if self.ttl <= 0:
            raise ValueError(f"CacheConfig.ttl: expected seconds > 0, got {self.ttl!r}")


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """How a query layer serves (`QueryLayer.open`).

    - `pool_size` DuckDB connections answer at once, each query interrupted after
      `query_timeout` seconds;
    - a read-your-writes query waits up to `wait_timeout` seconds for the views (unless
      it gives its own timeout);
    - `caches`: the policies and bounds of its caches;
    - `shapes`: a JSON file where the most frequent query shapes are kept across
      restarts (saved on close); `warm`: on open, re-run the examples of that many of
      them, starting none after `warm_seconds`.
    """

    pool_size: int = 4
    query_timeout: float = 30.0
    wait_timeout: float = 10.0
    caches: CacheConfig = field(default_factory=CacheConfig)
    shapes: Path | None = None
    warm: int = 0
    warm_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise ValueError(
                f"ServingConfig.pool_size: expected an integer >= 1, got {self.pool_size!r}"
            )
        for name in ("query_timeout", "wait_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"ServingConfig.{name}: expected seconds > 0, got {getattr(self, name)!r}"
                )
        if not isinstance(self.warm, int) or self.warm < 0:
            raise ValueError(f"ServingConfig.warm: expected an integer >= 0, got {self.warm!r}")
        if self.warm_seconds < 0:
            raise ValueError(
                f"ServingConfig.warm_seconds: expected seconds >= 0, got {self.warm_seconds!r}"
            )
