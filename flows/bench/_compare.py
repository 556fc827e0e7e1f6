"""`cqrsflow bench compare OLD.json NEW.json`: which figures got worse, and by how much.

Figures are matched by name. Absolute figures drift from one machine (or one busy
afternoon) to the next, while a ratio to a baseline measured alongside drifts much
less, so a figure with a ratio in both files is judged on its ratio, and only a
figure without one on its value. Either way "worse" follows the figure's direction:
a lower rate, a higher latency, a smaller ratio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from flows.bench._harness import BenchUsageError, fmt


class CompareError(BenchUsageError):
    """A file that is not a `cqrsflow bench` JSON report, or a bad threshold."""


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    basis: Literal["ratio", "value"]
    unit: str  # of the value; "x" for a ratio
    old: float
    new: float
    worse_by: float  # a fraction: 0.25 = 25% worse; negative = better

    def regressed(self, threshold: float) -> bool:
        return self.worse_by > threshold


def parse_threshold(text: str) -> float:
    """`10%` or `0.1` -> 0.1.

    >>> parse_threshold("10%"), parse_threshold("0.05")
    (0.1, 0.05)
    """
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise CompareError(
            f"--threshold {text}: expected a percentage like 10% or a fraction like 0.1"
        )
    return value


def load_figures(path: Path) -> dict[str, dict[str, Any]]:
    """Figures by name from `bench all --json` (sections) or `bench SUITE --json`."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompareError(f"{path}: not JSON ({err})") from None
    if isinstance(doc, dict) and isinstance(doc.get("sections"), dict):
        figures = [f for section in doc["sections"].values() for f in section]
    elif isinstance(doc, dict) and isinstance(doc.get("figures"), list):
        figures = doc["figures"]
    else:
        raise CompareError(
            f"{path}: not a cqrsflow bench report (expected the JSON of `cqrsflow bench "
            "all --json PATH` or `cqrsflow bench SUITE --json`)"
        )
    out = {}
    for f in figures:
        if not isinstance(f, dict) or not {"name", "value", "better"} <= f.keys():
            raise CompareError(f"{path}: a figure without name, value and better: {f!r:.200}")
        out[f["name"]] = f
    return out


def _worse_by(old: float, new: float, better: str) -> float:
    if better == "higher":
        return 1 - new / old
    return new / old - 1


def change(old: dict[str, Any], new: dict[str, Any]) -> Change | None:
    """How one figure moved, on its ratio where both runs have one; None if it cannot
    be judged (no value, or a zero to divide by)."""
    if old.get("ratio") and new.get("ratio") is not None:
        # Ratios are oriented so that higher is better (see `Figure.ratio`).
        worse = _worse_by(old["ratio"], new["ratio"], "higher")
        return Change(old["name"], "ratio", "x", old["ratio"], new["ratio"], worse)
    if not old.get("value") or new.get("value") is None:
        return None
    worse = _worse_by(old["value"], new["value"], old["better"])
    return Change(old["name"], "value", old.get("unit", ""), old["value"], new["value"], worse)


@dataclass(frozen=True, slots=True)
class Comparison:
    changes: list[Change]
    only_old: list[str]
    only_new: list[str]
    threshold: float

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regressed(self.threshold)]


def compare(old_path: Path, new_path: Path, threshold: float) -> Comparison:
    old, new = load_figures(old_path), load_figures(new_path)
    changes = [c for name in old if name in new if (c := change(old[name], new[name]))]
    return Comparison(
        changes,
        only_old=[n for n in old if n not in new],
        only_new=[n for n in new if n not in old],
        threshold=threshold,
    )


def render_comparison(result: Comparison, console: Console) -> None:
    worse = sorted(result.regressions, key=lambda c: -c.worse_by)
    by_ratio = sum(c.basis == "ratio" for c in result.changes)
    console.print(
        f"{len(result.changes)} figures compared ({by_ratio} on their ratio to a baseline, "
        f"{len(result.changes) - by_ratio} on their value); {len(worse)} got worse by more "
        f"than {result.threshold:.0%}",
        highlight=False,
    )
    if worse:
        table = Table(title="worse than the threshold", title_justify="left")
        for col in ("figure", "judged on", "old", "new", "unit", "worse by"):
            table.add_column(col, justify="left" if col in ("figure", "judged on") else "right")
        for c in worse:
            table.add_row(
                c.name, c.basis, fmt(c.old, c.unit), fmt(c.new, c.unit), c.unit, f"{c.worse_by:.0%}"
            )
        console.print(table)
    for label, names in (("only in OLD", result.only_old), ("only in NEW", result.only_new)):
        for name in names:
            console.print(f"[dim]{label}, not compared:[/] {name}", highlight=False)
