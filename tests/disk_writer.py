"""A log writer for the disk-full tests; run it as a script, never import it.

``disk_writer.py fill DATA_DIR PARTITIONS SEGMENT_BYTES``
    Opens the log in DATA_DIR (Fsync.ALWAYS) and appends deterministic bank batches
    until an append raises. After each append that returns it prints one JSON line,
    ``{"acked": [[aggregate_id, version, command_id], ...]}``, the events the log
    acknowledged. When an append raises it prints ``{"error": class name, "message":
    ..., "attempted": [...]}`` (the events of the failed append) and exits 0.

``disk_writer.py inject ROOT PARTITIONS SEGMENT_BYTES whole|short BUDGET...``
    The same on a simulated disk, once per BUDGET (bytes), each in ``ROOT/<BUDGET>``:
    the writes the store makes through `os.write` to files there succeed until BUDGET
    bytes were written; the one that would cross it fails with ENOSPC (``whole``: as
    a file system that allocates whole pages does for small writes) or writes what
    fits and returns short (``short``: as one does for a write that spans blocks), and
    every later one fails with ENOSPC.
    Then the space "returns": the writer goes on appending with the same open log and
    prints ``{"continued": n}`` (appends that succeeded) or ``{"continued": n,
    "error": ..., "message": ...}``. Every line carries ``"budget"``.

It lives in ``tests/`` so that it imports `log_events` the same way the tests do.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from log_events import bank_layout, bank_payload, new_event

from store import ArrowLog, Fsync, LogConfig, NewEvent, StoreError

ACCOUNTS = [f"acct-{i}" for i in range(30)]
BATCH = 5
CONTINUE_APPENDS = 40  # after the space returns: enough to rotate segments again


class Disk:
    """A byte budget on the store's `os.write` calls into one directory."""

    def __init__(self, root: str, budget: int, short: bool) -> None:
        self.root = os.path.realpath(root)
        self.left = budget
        self.short = short
        self.full = True
        self._write: Callable[[int, Any], int] = os.write

    def install(self) -> None:
        os.write = self.write  # the store calls os.write by attribute, so this reaches it

    def write(self, fd: int, data: Any) -> int:
        if not self.full or not self._ours(fd):
            return self._write(fd, data)
        size = len(memoryview(data).cast("B"))
        if self.left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if size > self.left and not self.short:
            self.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if size > self.left:
            written = self._write(fd, memoryview(data).cast("B")[: self.left])
            self.left = 0
            return written
        self.left -= size
        return self._write(fd, data)

    def _ours(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)
        except OSError:
            return False


def batch(log: ArrowLog, n: int) -> list[NewEvent]:
    events = []
    for i in range(BATCH):
        agg = ACCOUNTS[(n * 7 + i) % len(ACCOUNTS)]
        version = log.last_version(agg) + 1 + sum(e.aggregate_id == agg for e in events)
        payload = bank_payload(version, n * BATCH + i)
        events.append(new_event(agg, version, payload, command_id=f"cmd-{n}-{i}"))
    return events


def acked(events: list[NewEvent]) -> list[list[object]]:
    return [[e.aggregate_id, e.version, e.command_id] for e in events]


def fill(
    data_dir: str, partitions: int, segment_bytes: int, budget: int | None, short: bool = False
) -> None:
    def say(doc: dict[str, object]) -> None:
        sys.stdout.write(json.dumps({**doc, "budget": budget}) + "\n")
        sys.stdout.flush()

    disk = Disk(data_dir, budget, short) if budget is not None else None
    if disk is not None:
        disk.install()
    config = LogConfig(partitions=partitions, segment_bytes=segment_bytes, fsync=Fsync.ALWAYS)
    log: ArrowLog | None = None
    n = 0
    try:
        log = ArrowLog.open(data_dir, bank_layout(), config)
        while True:
            events = batch(log, n)
            log.append(events)
            say({"acked": acked(events)})
            n += 1
    except StoreError as err:
        attempted = acked(events) if log is not None else []
        say({"error": type(err).__name__, "message": str(err), "attempted": attempted})
    if disk is None:
        return  # a real disk: the test gives the space back and reopens the log
    disk.full = False
    continued = 0
    try:
        if log is None:  # it was full before the log could even be created
            log = ArrowLog.open(data_dir, bank_layout(), config)
        for _ in range(CONTINUE_APPENDS):
            events = batch(log, n)
            log.append(events)
            say({"acked": acked(events)})
            continued += 1
            n += 1
        log.close()
    except Exception as err:  # what a caller would see, whatever it is
        attempted = acked(events) if log is not None else []
        say(
            {
                "continued": continued,
                "error": type(err).__name__,
                "message": str(err),
                "attempted": attempted,
            }
        )
        return
    say({"continued": continued})


def main(argv: list[str]) -> None:
    mode, data_dir, partitions, segment_bytes, *budgets = argv
    if mode == "fill":
        fill(data_dir, int(partitions), int(segment_bytes), None)
    elif mode == "inject":
        how, *budgets = budgets
        disk_write = os.write
        for budget in map(int, budgets):
            directory = os.path.join(data_dir, str(budget))
            fill(directory, int(partitions), int(segment_bytes), budget, how == "short")
            os.write = disk_write
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
