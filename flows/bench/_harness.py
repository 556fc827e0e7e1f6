"""The benchmark harness: medians of interleaved runs, targets, baselines and ratios.

Machines here are noisy, so every figure is the median of several runs, and where
DESIGN.md gives a ratio the baseline runs interleaved with ours in the same process
(baseline, ours, baseline, ours, ...) so that both see the same machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rich.console import Console
from rich.table import Table


class BenchUsageError(Exception):
    """Bad input to a bench command (a threshold, a report file, a duration): exit 2."""


class SuiteUnavailable(Exception):
    """A suite that cannot run here (what it compares with is not installed): reported in
    one line, and `bench all` goes on with the others."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure with its target and, if any, its baseline."""

    name: str
    unit: str
    runs: tuple[float, ...]
    better: Literal["higher", "lower"]
    target: float | None = None
    baseline_name: str | None = None
    baseline_runs: tuple[float, ...] = ()
    ratio_target: float | None = None

    @property
    def value(self) -> float:
        return statistics.median(self.runs)

    @property
    def baseline(self) -> float | None:
        return statistics.median(self.baseline_runs) if self.baseline_runs else None

    @property
    def ratio(self) -> float | None:
        """Ours over the baseline, oriented so that > 1 means we are better."""
        base = self.baseline
        if base is None or base == 0 or self.value == 0:
            return None
        return self.value / base if self.better == "higher" else base / self.value

    @property
    def met(self) -> bool | None:
        checks = []
        if self.target is not None:
            ok = self.value >= self.target if self.better == "higher" else self.value <= self.target
            checks.append(ok)
        if self.ratio_target is not None and self.ratio is not None:
            checks.append(self.ratio >= self.ratio_target)
        return all(checks) if checks else None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Figure:
        """The figure `to_json` wrote (its derived fields are computed again)."""
        return cls(
            doc["name"],
            doc["unit"],
            tuple(doc["runs"]),
            doc["better"],
            doc.get("target"),
            doc.get("baseline_name"),
            tuple(doc.get("baseline_runs") or ()),
            doc.get("ratio_target"),
        )

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc.update(value=self.value, baseline=self.baseline, ratio=self.ratio, met=self.met)
        return doc


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def interleaved(
    runs: int, ours: Callable[[], float], baseline: Callable[[], float] | None = None
) -> tuple[list[float], list[float]]:
    """Run baseline and ours alternately; each callable returns its own figure."""
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(runs):
        if baseline is not None:
            theirs.append(baseline())
        mine.append(ours())
    return mine, theirs


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank: always a measured value.

    >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5)
    3.0
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# The percentiles of every latency table: P99.9 needs a thousand samples to mean anything.
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("p99.9", 0.999))


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit.endswith("/s"):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def fmt_ratio(ratio: float | None, target: float | None = None) -> str:
    """A ratio to a baseline, with the ratio wanted if there is one: three significant
    digits, so that a ratio far below 1 does not show as 0.00x.

    >>> fmt_ratio(0.004381), fmt_ratio(0.84, 0.7), fmt_ratio(2800.7, 100.0)
    ('0.00438x', '0.84x (≥ 0.7x)', '2,801x (≥ 100x)')
    """
    if ratio is None:
        return ""
    text = f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.3g}x"
    return text + (f" (≥ {target:g}x)" if target is not None else "")


def wide(console: Console) -> Console:
    """`console`, or when it writes to a file or a pipe (80 columns by default) one as
    wide as a table needs, so that figure names are not wrapped into tall rows."""
    if console.is_terminal:
        return console
    return Console(file=console.file, width=max(console.width, 200), soft_wrap=True)


def render(title: str, figures: Sequence[Figure], console: Console) -> None:
    table = Table(title=title, title_justify="left")
    for col in (
        "figure",
        "median",
        "unit",
        "target",
        "baseline",
        "baseline median",
        "ratio",
        "met",
    ):
        table.add_column(col, justify="right" if col not in ("figure", "baseline") else "left")
    for f in figures:
        target = ""
        if f.target is not None:
            target = ("≥ " if f.better == "higher" else "≤ ") + fmt(f.target, f.unit)
        ratio = fmt_ratio(f.ratio, f.ratio_target)
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[f.met]
        table.add_row(
            f.name,
            fmt(f.value, f.unit),
            f.unit,
            target,
            f.baseline_name or "",
            fmt(f.baseline, f.unit),
            ratio,
            met,
        )
    console.print(table)


def to_json(figures: Sequence[Figure]) -> str:
    return json.dumps({"machine": machine(), "figures": [f.to_json() for f in figures]}, indent=2)
