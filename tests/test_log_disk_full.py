"""A rotation the disk refuses at any of its steps, in process: the append fails with
the disk-full error, and the same open log goes on appending once space returns.

`test_reliability_disk.py` fills a (simulated or real) disk under whole writers; this
module aims the failure at each step of a rotation by itself, including those that do
not go through `os.write` (the index is written by Arrow, the directory is fsynced):
the end marker, the fsync that seals, the index, the directory's fsync, and the next
segment's creation. It also pins what closing promises when an fsync fails: the
partition locks are released all the same, so the process can open the log again.
"""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from log_events import all_events, bank_layout, bank_payload, new_event, segments

from store import (
    ArrowLog,
    Fsync,
    LogConfig,
    NewEvent,
    StorageFullError,
    StoreError,
    translate_os_error,
    verify_log,
)
from store.disk import EOS, SegmentFiles, SegmentWriter

SEGMENT_BYTES = 8192
# Fsync.NEVER: the only fsyncs are a rotation's, so that one can be aimed at.
CONFIG = LogConfig(partitions=1, segment_bytes=SEGMENT_BYTES, fsync=Fsync.NEVER)
FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Refusal:
    """Fails the calls `aim` picks out with ENOSPC while `full`; otherwise calls through."""

    def __init__(
        self, real: Callable[..., Any], aim: Callable[..., bool], as_store: str = ""
    ) -> None:
        self.real = real
        self.aim = aim
        self.as_store = as_store  # raise it translated, as the real function would
        self.full = False
        self.refused = 0

    def __call__(self, *args: Any) -> Any:
        if self.full and self.aim(*args):
            self.refused += 1
            if self.as_store:
                raise translate_os_error(FULL, f"{self.as_store} {args[0]}")
            raise FULL
        return self.real(*args)


def batch(log: ArrowLog, n: int) -> list[NewEvent]:
    accounts = [f"acct-{(n * 3 + i) % 20}" for i in range(3)]
    return [
        new_event(a, log.last_version(a) + 1, bank_payload(log.last_version(a) + 1, n))
        for a in accounts
    ]


def always(*_: Any) -> bool:
    return True


# The partition's own module: a refusal aimed at one step of its rotation is patched
# where the rotation calls it (fault injection needs the step's name, not an import).
_PARTITION = importlib.import_module("store._partition")

# step: (module, function, the calls to refuse, how the error starts); write_index
# translates its OSError itself
STEPS: dict[str, tuple[Any, str, Callable[..., bool], str]] = {
    "end marker": (os, "write", lambda fd, data: bytes(data) == EOS, "sealing"),
    "sealing fsync": (os, "fdatasync", always, "fsync of"),
    "index": (_PARTITION, "write_index", always, "writing index"),
    "directory fsync": (_PARTITION, "fsync_dir", always, "sealing"),
    "next segment": (os, "replace", lambda a, b: str(a).endswith(".dir.tmp"), "creating segment"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_rotation_refused_at_any_step_leaves_the_same_log_appending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    module, name, aim, message = STEPS[step]
    refusal = Refusal(getattr(module, name), aim, message if name == "write_index" else "")
    monkeypatch.setattr(module, name, refusal)
    log = ArrowLog.open(tmp_path, bank_layout(), CONFIG)
    try:
        refusal.full = True  # for the aimed step, which only a rotation takes
        appended = 0
        while True:
            events = batch(log, appended)
            try:
                log.append(events)
            except StorageFullError as err:
                refused = err
                break
            appended += 1
            assert appended < 100, f"the {step} was never reached"
        assert refusal.refused == 1
        assert str(refused).startswith(message), refused
        assert "free space and retry" in str(refused)
        assert len(segments(tmp_path, 0)) == 1, "the failed rotation left a segment behind"
        # The refused append's batch was written before the rotation, so it is in the
        # log: the log still verifies, and appending those events again is recognised.
        assert len(all_events(log)) == 3 * (appended + 1)
        assert list(verify_log(tmp_path)) == []

        refusal.full = False  # space returns; the same open log goes on, and rotates
        again = log.append(events)
        assert [p.offset for p in again] == [3 * appended + i for i in range(3)]
        for n in range(appended + 1, appended + 30):
            log.append(batch(log, n))
    finally:
        log.close()
    assert len(segments(tmp_path, 0)) > 2, "the log did not rotate once space returned"
    assert list(verify_log(tmp_path)) == []
    with ArrowLog.open(tmp_path, bank_layout(), CONFIG) as reopened:
        assert not reopened.recoveries, reopened.recoveries  # nothing torn was left behind
        found = all_events(reopened)
        assert [e.position for e in found] == list(range(3 * (appended + 30)))


def test_closing_releases_every_partition_even_when_an_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = LogConfig(partitions=3, fsync=Fsync.NEVER)
    log = ArrowLog.open(tmp_path, bank_layout(), config)
    log.append([new_event(f"acct-{i}", 1, bank_payload(1, i)) for i in range(12)])
    broken = Refusal(os.fdatasync, always)
    broken.full = True
    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StorageFullError, match=r"fsync of \S*/log/0/"):
        log.close()
    assert broken.refused == 3, "after the first partition failed, the others were not closed"
    monkeypatch.undo()
    # Every partition's lock was released: this process opens the log again.
    with ArrowLog.open(tmp_path, bank_layout(), config) as again:
        assert len(all_events(again)) == 12


def test_a_closed_segment_writer_is_refused_clearly_and_never_touches_an_fd(
    tmp_path: Path,
) -> None:
    files = SegmentFiles(tmp_path, 0)
    writer = SegmentWriter.create(files, bank_layout())
    writer.close()
    writer.close()  # twice: no fd number closed again (it may belong to another file)
    with pytest.raises(StoreError, match="writer is closed; reopen the log"):
        writer.sync()
    with pytest.raises(StoreError, match="writer is closed; reopen the log"):
        writer.seal()
