"""The planner's cost model: seconds per unit of work for each way of answering, learnt.

A way of answering is one of three kinds: a scan of the log (work: its events), a scan
of a view (its rows), an indexed lookup in a view (the keys looked up). Its estimate is
a fixed cost per statement plus its work times the kind's seconds per unit, which start
from measured defaults and follow the run times actually observed.

>>> model = CostModel()
>>> model.estimate("view lookup", 2) == _FIXED_SECONDS + 2 * 50e-6
True
>>> model.observe("view lookup", 2, 0.01)  # 5 ms a key, believed 50 µs: far off
True
>>> model.seconds_per_unit()["view lookup"] > 50e-6
True
>>> model.observe("view scan", 4, 0.0001)  # all fixed overhead: says nothing per row
False
"""

from __future__ import annotations

import threading
from typing import Literal

Kind = Literal["log scan", "view scan", "view lookup"]

# Seconds per unit of estimated work, before any run was measured: a DuckDB scan of the
# log costs about 10 ns per event, of a narrower view table less, and an indexed lookup
# about 50 µs per key (measured on a 2-core machine).
_DEFAULT_SECONDS: dict[Kind, float] = {
    "log scan": 10e-9,
    "view scan": 5e-9,
    "view lookup": 50e-6,
}
_FIXED_SECONDS = 200e-6  # any statement: binding, planning inside DuckDB


class CostModel:
    """Estimated seconds of a kind of work, corrected by observed runs; thread-safe."""

    def __init__(self) -> None:
        self._seconds: dict[Kind, float] = dict(_DEFAULT_SECONDS)
        self._lock = threading.Lock()

    def estimate(self, kind: Kind, work: float) -> float:
        """Seconds to run a statement doing `work` units of `kind`."""
        return _FIXED_SECONDS + work * self._seconds[kind]

    def observe(self, kind: Kind, work: float, seconds: float) -> bool:
        """Learn from a run of `work` units of `kind` that took `seconds`; whether the
        estimate it was planned by was far off (more than 4 times, either way)."""
        # Only runs dominated by their work say anything about the cost per unit; a
        # 4-row table's run time is all fixed overhead.
        if work <= 0 or seconds < 4 * _FIXED_SECONDS:
            return False
        default = _DEFAULT_SECONDS[kind]
        # Kept within ten times the default either way: one outlying run must not move
        # the estimate arbitrarily far.
        per_unit = min(max(seconds / work, default / 10), default * 10)
        with self._lock:
            believed = self._seconds[kind]
            self._seconds[kind] = 0.8 * believed + 0.2 * per_unit
        off = per_unit / believed if believed else 1.0
        return off > 4 or off < 0.25

    def seconds_per_unit(self) -> dict[Kind, float]:
        """What each kind of work is believed to cost per unit now."""
        with self._lock:
            return dict(self._seconds)
