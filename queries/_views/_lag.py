"""How far views are behind the log: one computation for `projections list`, the
metrics, readiness and the planner's staleness bound."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from store import LogReader


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a view is behind the log: events not applied yet, and the age of the
    oldest of them in seconds (0 when caught up)."""

    events: int
    seconds: float


def written_at(reader: LogReader, partition: int, position: int) -> float:
    """When the event at `position` was written (seconds since the epoch)."""
    for batch in reader.partition(partition).batches(position):
        return float(batch.column("timestamp")[0].value) / 1e6
    return time.time()


def view_lags(reader: LogReader, applied: Mapping[str, Mapping[int, int]]) -> dict[str, Lag]:
    """Each view's lag, from its next positions per partition, against the log now."""
    reader.refresh()
    end = reader.watermarks()
    now = time.time()
    lags = {}
    for view, positions in applied.items():
        behind = {p: positions.get(p, 0) for p in end if positions.get(p, 0) < end[p]}
        oldest = [written_at(reader, p, at) for p, at in behind.items()]
        lags[view] = Lag(
            sum(end[p] - at for p, at in behind.items()),
            max(0.0, now - min(oldest)) if oldest else 0.0,
        )
    return lags
