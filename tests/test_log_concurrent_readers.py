"""One `LogReader` shared by threads while the log grows: what `cqrsflow serve` does (its
follower thread refreshes the reader the query threads scan).

Every thread refreshes and scans the same reader while a writer appends small batches
and rotates small segments. Each scan must be a consistent prefix of the log: no error
(a refresh half-published used to raise IndexError), positions gap-free from 0 with
no event twice (two refreshes of one segment used to both add the same entries), and
never fewer events than a scan before it in the same thread.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from log_events import bank_layout, bank_payload, new_event

from store import ArrowLog, Fsync, LogConfig, LogReader

PARTITIONS = 2
APPENDS = 200
READERS = 4


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Let threads switch every few bytecodes, so that the interleavings a race needs
    come within a few hundred appends instead of now and then."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def scan(reader: LogReader) -> dict[int, list[int]]:
    """Each partition's positions, as one scan of the shared reader sees them."""
    found: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for p in range(PARTITIONS):
        for batch in reader.partition(p).batches(0):
            found[p].extend(batch.column("position").to_pylist())
    return found


def test_threads_sharing_a_reader_see_consistent_prefixes_while_the_log_grows(
    tmp_path: Path, switch_often: None
) -> None:
    config = LogConfig(partitions=PARTITIONS, segment_bytes=16_384, fsync=Fsync.NEVER)
    log = ArrowLog.open(tmp_path, bank_layout(), config)
    log.append([new_event("acct-0", 1, bank_payload(1, 0))])
    shared = LogReader.open(tmp_path, bank_layout())
    done = threading.Event()
    failures: list[BaseException] = []
    scans = [0] * READERS

    def read(me: int) -> None:
        seen = dict.fromkeys(range(PARTITIONS), 0)
        try:
            while not done.is_set() or scans[me] == 0:
                shared.refresh()
                for p, positions in scan(shared).items():
                    assert positions == list(range(len(positions))), f"partition {p}"
                    assert len(positions) >= seen[p], f"partition {p} went backwards"
                    seen[p] = len(positions)
                scans[me] += 1
        except BaseException as err:  # reported by the test's thread
            failures.append(err)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    try:
        for n in range(1, APPENDS):
            accounts = [f"acct-{(n + i) % 40}" for i in range(3)]
            log.append(
                [new_event(a, log.last_version(a) + 1, bank_payload(2, n)) for a in accounts]
            )
    finally:
        done.set()
        for t in threads:
            t.join()
        log.close()
    assert failures == [], failures[0]
    assert min(scans) > 0
    shared.refresh()
    final = scan(shared)
    assert sum(len(v) for v in final.values()) == 1 + 3 * (APPENDS - 1)
    segments = [len(shared.partition(p).segments) for p in range(PARTITIONS)]
    assert min(segments) > 2, f"the test meant to rotate segments: {segments}"
