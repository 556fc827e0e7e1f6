"""Following the log: keep the views current while a flow appends, in one process.

DuckDB allows one writer per database file, so exactly one follower maintains a data
directory's views however many bytewax workers or processes write the log. After each
round it publishes the positions every view has applied to DIR/projections.watermark
(a small JSON file, replaced atomically), which other processes read without opening
the database: the flow, to slow its intake when the views fall behind. Other processes ask it for a
rebuild through a file in DIR/projections.requests/ (`request_rebuild`); it builds the
new version beside the live one and swaps it in when caught up.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from queries._errors import QueryError
from queries._projections import Projections
from store import LogReader

WATERMARK_FILE = "projections.watermark"
REQUESTS_DIR = "projections.requests"


def request_rebuild(data_dir: Path, name: str) -> Path:
    """Ask the process that follows the log to rebuild view `name` beside the live one
    (the projections database has one writer, so another process cannot)."""
    requests = Path(data_dir) / REQUESTS_DIR
    requests.mkdir(exist_ok=True)
    path = requests / f"rebuild.{name}"
    path.write_text(name)
    return path


def _take_requests(projections: Projections, data_dir: Path) -> None:
    for path in sorted((Path(data_dir) / REQUESTS_DIR).glob("rebuild.*")):
        name = path.read_text()
        try:
            projections.rebuild(name)
        except QueryError as err:  # an unknown view: nothing to build
            path.with_suffix(".refused").write_text(str(err))
        path.unlink()


def publish_watermark(data_dir: Path, positions: dict[int, int]) -> None:
    path = Path(data_dir) / WATERMARK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"positions": positions, "at": time.time()}))
    os.replace(tmp, path)


def read_watermark(data_dir: Path) -> dict[int, int] | None:
    """The positions the views had applied when the follower last published, if any."""
    try:
        stored = json.loads((Path(data_dir) / WATERMARK_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return {int(p): int(v) for p, v in stored["positions"].items()}


def follow(
    projections: Projections,
    reader: LogReader,
    data_dir: Path,
    stop: threading.Event,
    *,
    poll: float = 0.05,
    max_events: int = 1_000_000,
    on_round: Callable[[int], None] | None = None,
) -> int:
    """Apply the log to the views as it grows until `stop` is set, then apply what was
    committed by then and return the rows applied in all."""
    total = 0
    first = True
    while True:
        stopping = stop.is_set()
        _take_requests(projections, data_dir)
        applied = projections.catch_up(reader, max_events=max_events)
        total += applied
        if applied or stopping or first:
            publish_watermark(data_dir, projections.watermark())
            first = False
        if on_round is not None:
            on_round(applied)
        if stopping:
            return total
        if not applied:
            stop.wait(poll)
