"""Which query shapes are asked most, kept across restarts, to warm the caches with.

The query layer counts each query text it answers (a dict increment, on the hot path
too); `ShapeCounts` folds the texts into shapes (`shape_of`: the text with its
literals taken out), keeps one example text per shape, and saves them as JSON on close
(``DIR/query-shapes.json``). A layer that starts with warming on re-runs the examples
of the most frequent shapes (each shape's most asked text), within a time budget: their
plans are cached and their answers computed before the first client asks.

Counts from earlier runs are halved each time they are saved again, so shapes nobody
asks any more fade out.

>>> counts = ShapeCounts()
>>> for account in ("a", "b", "a"):  # one shape; its example: the text asked most
...     counts.seen(f"SELECT * FROM balances WHERE account = '{account}'")
>>> counts.seen("SELECT count(*) FROM events")
>>> [(s.count, s.example) for s in counts.top(2)]
[(3, "SELECT * FROM balances WHERE account = 'a'"), (1, 'SELECT count(*) FROM events')]
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from queries._planner import shape_of

_FORMAT = 1
_KEEP = 1_000  # shapes saved
_FOLD_AT = 50_000  # distinct texts counted before they are folded into shapes


@dataclass(slots=True)
class Shape:
    shape: str
    count: float
    example: str  # the text of this shape asked most (in one fold: the layer's counts)
    example_count: float = 0.0


class ShapeCounts:
    """Query texts counted, folded into shapes; saved to and loaded from JSON."""

    def __init__(self) -> None:
        # the layer increments this directly (`texts[sql] += 1`: a defaultdict)
        self.texts: defaultdict[str, int] = defaultdict(int)
        self._shapes: dict[str, Shape] = {}
        self._lock = threading.Lock()

    def seen(self, sql: str) -> None:
        self.texts[sql] += 1
        self.fold_if_full()

    def fold_if_full(self) -> None:
        """Fold once `_FOLD_AT` distinct texts were counted (the layer counts directly
        into `texts` on its hot path, and calls this on its slow one)."""
        if len(self.texts) > _FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move the counted texts into their shapes."""
        with self._lock:
            texts, self.texts = self.texts, defaultdict(int)
            for sql, n in list(texts.items()):
                if n <= 0:
                    continue  # only warming ran it
                key = shape_of(sql)
                shape = self._shapes.get(key)
                if shape is None:
                    self._shapes[key] = Shape(key, n, sql, n)
                    continue
                shape.count += n
                if n >= shape.example_count:  # re-running the likeliest text warms most
                    shape.example, shape.example_count = sql, n

    def top(self, n: int) -> list[Shape]:
        """The `n` most frequent shapes, most frequent first."""
        self.fold()
        with self._lock:
            ranked = sorted(self._shapes.values(), key=lambda s: -s.count)
        return ranked[:n]

    def load(self, path: Path, *, decay: float = 0.5) -> None:
        """Add the counts saved in `path` (times `decay`); a missing, unreadable or
        foreign file adds nothing: warming is an optimisation, never a failure."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            saved = doc["shapes"] if doc.get("format") == _FORMAT else []
            loaded = [Shape(str(s["shape"]), float(s["count"]), str(s["example"])) for s in saved]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return
        with self._lock:
            for shape in loaded:
                held = self._shapes.get(shape.shape)
                if held is None:
                    shape.count *= decay
                    self._shapes[shape.shape] = shape
                else:
                    held.count += shape.count * decay

    def save(self, path: Path) -> None:
        """Write the most frequent shapes to `path` atomically (a temporary file renamed)."""
        doc = {
            "format": _FORMAT,
            "shapes": [
                {"shape": s.shape, "count": s.count, "example": s.example} for s in self.top(_KEEP)
            ],
        }
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        os.replace(temporary, path)
