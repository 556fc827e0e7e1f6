"""The log contract, run over the in-memory spec and the Arrow log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from log_contract import LAYOUT, LogContract, history

from store import ArrowLog, EventLog, LogConfig, LogReader, MemoryLog


class TestMemoryLog(LogContract):
    def make_log(self, path: Path, partitions: int) -> EventLog:
        return MemoryLog(LAYOUT, partitions)


class TestMemoryLogPartitioned(TestMemoryLog):
    partitions = 3


class TestArrowLog(LogContract):
    # Small segments, so that the suite crosses segment rotations and sealed indexes.
    def make_log(self, path: Path, partitions: int) -> EventLog:
        return ArrowLog.open(path, LAYOUT, LogConfig(partitions=partitions, segment_bytes=4096))


class TestArrowLogPartitioned(TestArrowLog):
    partitions = 3


class TestArrowLogLargeSegments(TestArrowLog):
    def make_log(self, path: Path, partitions: int) -> EventLog:
        return ArrowLog.open(path, LAYOUT, LogConfig(partitions=partitions))


def test_reopened_log_reads_what_was_written(tmp_path: Path) -> None:
    events = [e for agg in ("a", "b", "c") for e in history(agg, 30)]
    with ArrowLog.open(tmp_path, LAYOUT, LogConfig(partitions=2, segment_bytes=4096)) as log:
        for i in range(0, len(events), 7):
            log.append(events[i : i + 7])
        written = [log.decode(log.read_stream(a)) for a in ("a", "b", "c")]
    with ArrowLog.open(tmp_path, LAYOUT) as log:
        assert [log.decode(log.read_stream(a)) for a in ("a", "b", "c")] == written
        assert log.recoveries == []
        assert log.last_version("b") == 30
    reader = LogReader.open(tmp_path, LAYOUT)
    assert [reader.decode(reader.read_stream(a)) for a in ("a", "b", "c")] == written


def test_reader_sees_appends_after_refresh(tmp_path: Path) -> None:
    with ArrowLog.open(tmp_path, LAYOUT, LogConfig(segment_bytes=4096)) as log:
        log.append(history("a", 3))
        reader = LogReader.open(tmp_path, LAYOUT)
        assert reader.watermarks() == {0: 3}
        log.append(history("a", 40, start=4))
        assert reader.watermarks() == {0: 3}  # a snapshot until refreshed
        reader.refresh()
        assert reader.watermarks() == {0: 43}
        assert reader.last_version("a") == 43
        got: list[Any] = [e.version for e in reader.decode(reader.read_stream("a", 40))]
        assert got == [40, 41, 42, 43]
