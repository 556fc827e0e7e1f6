"""The data directory's layout: every path in it, named once.

A data directory holds the log and everything derived from it or kept beside it::

    DIR/app.json                       the application the directory belongs to
    DIR/log/manifest.json              the log's format and partition count
    DIR/log/<partition>/...            segments (see `store._segment`)
    DIR/snapshots/...                  aggregate snapshots
    DIR/decisions/<partition>/...      answers of batches that appended no event
    DIR/results/, DIR/dead-letter/     a flow's results and invalid records
    DIR/recovery/<input>/              a flow's progress through one input (bytewax)
    DIR/projections.duckdb             the materialized views
    DIR/projections.watermark          what the views have applied, for other processes
    DIR/projections.requests/          rebuilds asked of the process that keeps the views
    DIR/query-shapes.json              the query shapes a server was asked most
    DIR/metrics/                       a multi-process run's Prometheus files

Everything outside `store` asks a `DataDir` for a path instead of spelling it.

>>> data = DataDir("data")
>>> str(data.manifest), str(data.decisions(2))
('data/log/manifest.json', 'data/decisions/2')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DataDir:
    """The paths of one data directory (nothing is created or read by asking)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def __str__(self) -> str:
        return str(self.root)

    @property
    def app(self) -> Path:
        return self.root / "app.json"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def manifest(self) -> Path:
        return self.log / "manifest.json"

    def has_log(self) -> bool:
        """Whether a log was created here (its manifest exists)."""
        return self.manifest.exists()

    def partition(self, number: int) -> Path:
        return self.log / str(number)

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def decisions(self, partition: int) -> Path:
        return self.root / "decisions" / str(partition)

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def dead_letter(self) -> Path:
        return self.root / "dead-letter"

    @property
    def recovery(self) -> Path:
        return self.root / "recovery"

    @property
    def projections(self) -> Path:
        return self.root / "projections.duckdb"

    @property
    def published(self) -> Path:
        return self.root / "projections.watermark"

    @property
    def rebuild_requests(self) -> Path:
        return self.root / "projections.requests"

    @property
    def query_shapes(self) -> Path:
        return self.root / "query-shapes.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"
