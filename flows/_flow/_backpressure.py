"""Backpressure: the flow slows its intake while the views are far behind the log.

The view follower publishes the positions it has applied (DIR/projections.watermark).
A shard about to decide a batch compares them with its partition's end of log; while
the views are more than `max_lag` events behind, it waits for them, in short sleeps,
instead of letting the log (and the follower's next batches) run away. A follower that
has stopped publishing (gone, or never started) does not hold the flow up.
"""

from __future__ import annotations

import time
from pathlib import Path

from flows._flow._metrics import THROTTLED, THROTTLED_SECONDS
from queries import published_positions, read_published

_CHECK_EVERY = 0.1  # seconds between reads of the published positions
_STALE_AFTER = 30.0  # seconds without a report after which a follower is taken as gone
_NAP = 0.01


class Backpressure:
    def __init__(self, data_dir: Path, max_lag: int) -> None:
        self._data_dir = Path(data_dir)
        self._max_lag = max_lag
        self._applied: dict[int, int] | None = None
        self._checked = 0.0

    def _refresh(self, now: float) -> None:
        self._checked = now
        published = read_published(self._data_dir)
        if published is None or time.time() - float(published["at"]) > _STALE_AFTER:
            self._applied = None
        else:
            self._applied = published_positions(published)

    def _behind(self, partition: int, end: int) -> bool:
        now = time.monotonic()
        if now - self._checked >= _CHECK_EVERY:
            self._refresh(now)
        if self._applied is None:
            return False
        return end - self._applied.get(partition, 0) > self._max_lag

    def wait(self, partition: int, end: int) -> None:
        """Return once the views are within `max_lag` events of `end` in `partition`."""
        if self._max_lag <= 0 or not self._behind(partition, end):
            return
        started = time.monotonic()
        THROTTLED.set(1)
        try:
            while self._behind(partition, end):
                time.sleep(_NAP)
        finally:
            THROTTLED.set(0)
            THROTTLED_SECONDS.inc(time.monotonic() - started)
