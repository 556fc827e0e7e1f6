"""The command flow's Prometheus metrics (names and meanings: docs/metrics.md).

Updated once per batch. A batch's commands share one latency (they entered and left
together), so `observe_many` records it for all of them at the cost of one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

COMMANDS = Counter("cqrsflow_commands", "Commands answered", ["type", "outcome"])
LATENCY = Histogram(
    "cqrsflow_command_latency_seconds",
    "From a command's batch entering the flow to its durable result",
    buckets=_LATENCY,
)
# The aggregate cache reports as every cache does (`cqrsflow_cache_*{cache="aggregate-N"}`,
# from its own counts, published off the hot path by `queries.make_cache`).
REHYDRATIONS = Counter("cqrsflow_rehydrations", "Cold aggregates read back from the log")
BATCH_SIZE = Gauge(
    "cqrsflow_batch_size", "Commands in the latest batch", multiprocess_mode="livemax"
)
THROTTLED = Gauge(
    "cqrsflow_intake_throttled",
    "1 while intake is slowed because the views are behind",
    multiprocess_mode="livemax",
)
THROTTLED_SECONDS = Counter("cqrsflow_intake_throttled_seconds", "Time intake spent slowed")


def observe_many(histogram: Histogram, value: float, n: int) -> None:
    """`histogram.observe(value)` n times, at the cost of one.

    prometheus-client keeps a count per bucket (made cumulative when collected) and a
    sum; this adds to both as n observations would.
    """
    if n <= 0:
        return
    bounds = histogram._upper_bounds
    histogram._buckets[bisect_left(bounds, value)].inc(n)
    histogram._sum.inc(value * n)


# `labels()` costs microseconds a call and runs for every batch: keep the children.
_COMMANDS_BY: dict[tuple[str, str], Any] = {}


def count_commands(types: Iterable[type | str], outcomes: Iterable[str]) -> None:
    """Count commands by type (a payload class or a name) and outcome. Classes are
    tallied as they come, at C speed, and named once per distinct key."""
    for (kind, outcome), n in Tally(zip(types, outcomes, strict=True)).items():
        key = (kind if isinstance(kind, str) else kind.__name__, outcome)
        child = _COMMANDS_BY.get(key)
        if child is None:
            child = _COMMANDS_BY[key] = COMMANDS.labels(type=key[0], outcome=key[1])
        child.inc(n)
