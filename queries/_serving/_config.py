"""How a query layer caches: each tier's policy and bounds, in one value.

>>> CacheConfig(result_policy="lfu").result_policy
'lfu'
>>> CacheConfig(hot_policy="fifo")
Traceback (most recent call last):
...
ValueError: CacheConfig.hot_policy: unknown policy 'fifo'; expected one of lru, lfu, arc
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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
