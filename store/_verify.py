"""Whole-log verification and statistics, for `cqrsflow log verify|stats`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from store._errors import CorruptionError
from store._log import log_dir, read_manifest
from store._partition import list_segments
from store._segment import SegmentFiles, SegmentReader


@dataclass(frozen=True, slots=True)
class SegmentStats:
    partition: int
    path: str
    first_position: int
    events: int
    batches: int
    bytes: int
    sealed: bool


def _segments(data_dir: str | Path) -> Iterator[tuple[int, SegmentReader]]:
    root = log_dir(data_dir)
    manifest = read_manifest(root)
    if manifest is None:
        return
    for p in range(manifest["partitions"]):
        directory = root / str(p)
        if not directory.exists():
            continue
        firsts = list_segments(directory)
        for i, first in enumerate(firsts):
            seg = SegmentReader(SegmentFiles(directory, first))
            seg.sealed = i < len(firsts) - 1
            yield p, seg


def verify_log(data_dir: str | Path) -> Iterator[CorruptionError]:
    """Every problem in every segment, each with its file and byte offset."""
    for _, seg in _segments(data_dir):
        yield from seg.verify()


def segment_stats(data_dir: str | Path) -> list[SegmentStats]:
    out = []
    for p, seg in _segments(data_dir):
        seg.refresh()
        out.append(
            SegmentStats(
                p,
                str(seg.files.data),
                seg.files.first_position,
                seg.rows,
                len(seg.entries),
                seg.files.data.stat().st_size + seg.files.dir.stat().st_size,
                seg.sealed,
            )
        )
    return out
