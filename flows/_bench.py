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
from typing import Literal

from rich.console import Console
from rich.table import Table


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


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit.endswith("/s"):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


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
            target = ("≥ " if f.better == "higher" else "≤ ") + _fmt(f.target, f.unit)
        ratio = ""
        if f.ratio is not None:
            ratio = f"{f.ratio:.2f}x" + (f" (≥ {f.ratio_target}x)" if f.ratio_target else "")
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[f.met]
        table.add_row(
            f.name,
            _fmt(f.value, f.unit),
            f.unit,
            target,
            f.baseline_name or "",
            _fmt(f.baseline, f.unit),
            ratio,
            met,
        )
    console.print(table)


def to_json(figures: Sequence[Figure]) -> str:
    return json.dumps({"machine": machine(), "figures": [f.to_json() for f in figures]}, indent=2)
