"""The log contract, run over the in-memory spec and the Arrow log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from log_contract import LAYOUT, LogContract, history

from store import ArrowLog, EventLog, Fsync, LogConfig, LogReader, MemoryLog


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


class TestArrowLogFsyncInterval(TestArrowLog):
    def make_log(self, path: Path, partitions: int) -> EventLog:
        config = LogConfig(partitions=partitions, fsync=Fsync.INTERVAL, fsync_interval_ms=50)
        return ArrowLog.open(path, LAYOUT, config)


class TestArrowLogFsyncNever(TestArrowLog):
    def make_log(self, path: Path, partitions: int) -> EventLog:
        return ArrowLog.open(path, LAYOUT, LogConfig(partitions=partitions, fsync=Fsync.NEVER))


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


def test_busy_aggregates_read_the_same_from_hot_streams(tmp_path: Path) -> None:
    """An aggregate with many events per sealed segment is read from its clustered
    copy; what comes back must equal the in-memory spec, from any version."""
    spec = MemoryLog(LAYOUT)
    with ArrowLog.open(tmp_path, LAYOUT, LogConfig(segment_bytes=64 * 1024)) as log:
        versions = {"busy": 0, **{f"quiet-{i}": 0 for i in range(50)}}
        for round_ in range(40):
            batch = []
            for agg in ["busy"] * 20 + [f"quiet-{(round_ + i) % 50}" for i in range(5)]:
                versions[agg] += 1
                v = versions[agg]
                batch.append(history(agg, 1)[0] if v == 1 else history(agg, 1, start=v)[0])
            log.append(batch)
            spec.append(batch)
        hot_files = list((tmp_path / "log" / "0").glob("*.hot"))
        assert hot_files, "expected the busy aggregate to have hot streams"
        for start in (1, 2, 63, 64, 65, 300, 799, 800, 801):
            assert log.decode(log.read_stream("busy", start)) == spec.decode(
                spec.read_stream("busy", start)
            )
        assert log.decode(log.read_stream("quiet-7")) == spec.decode(spec.read_stream("quiet-7"))
        wanted = {"busy": 70, "quiet-7": 1, "quiet-8": 3, "quiet-49": 1}
        assert log.decode(log.read_streams(wanted)) == spec.decode(spec.read_streams(wanted))
