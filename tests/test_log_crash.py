"""A real crash test: a writer process killed with SIGKILL mid-stream, again and again.

`crash_writer.py` appends bank-like batches with `Fsync.ALWAYS` and 64 KiB
segments (so segments rotate while it runs) and prints every acknowledged batch.
The test kills it after a random number of acknowledgements, at whatever point of
its loop it has reached by then, and checks the log it leaves behind: every
acknowledged event is there, at the position it was acknowledged with, nothing is
duplicated or missing in between, and `verify_log` finds nothing wrong. Then a new
writer continues on the same directory, and the cycle repeats.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from log_events import all_events, bank_layout

from store import ArrowLog, Fsync, LogConfig, LogReader, RecordedEvent, verify_log

WRITER = Path(__file__).with_name("crash_writer.py")
SEGMENT_BYTES = 64 * 1024
PARTITIONS = 2
ROUNDS = 8
STALL_GUARD_S = 120  # not a timing assertion: only so that a hung writer fails the test


def start_writer(data_dir: Path, seed: int, stderr: Path) -> subprocess.Popen[bytes]:
    with open(stderr, "wb") as err:
        return subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                "append",
                str(data_dir),
                str(seed),
                str(PARTITIONS),
                str(SEGMENT_BYTES),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
        )


def read_lines(proc: subprocess.Popen[bytes], wanted: int, stderr: Path) -> bytes:
    """Read until `wanted` complete lines arrived; the bytes read so far."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    while out.count(b"\n") < wanted:
        ready, _, _ = select.select([fd], [], [], STALL_GUARD_S)
        if not ready:
            proc.kill()
            proc.wait()
            pytest.fail(f"the writer stalled:\n{stderr.read_text()}")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            proc.wait()
            pytest.fail(f"the writer exited by itself ({proc.returncode}):\n{stderr.read_text()}")
        out += chunk
    return out


def kill_after(proc: subprocess.Popen[bytes], wanted: int, stderr: Path) -> list[list[Any]]:
    """Kill the writer once `wanted` batches were acknowledged; every acknowledged event."""
    assert proc.stdout is not None
    out = read_lines(proc, wanted, stderr)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out += proc.stdout.read()  # acknowledged between our last read and the kill
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, stderr.read_text()
    complete = out.split(b"\n")[:-1]  # a line cut short by the kill is not parsed
    assert len(complete) >= wanted
    return [event for line in complete for event in json.loads(line)]


# (aggregate, version) -> (event id, partition, offset), as the writers acknowledged them
Acked = dict[tuple[str, int], tuple[str, int, int]]


def check_log(events: list[RecordedEvent], acked: Acked) -> None:
    """Nothing lost that was acknowledged, nothing duplicated, nothing out of order."""
    for p in range(PARTITIONS):
        positions = [e.position for e in events if e.partition == p]
        assert positions == list(range(len(positions))), f"partition {p} is not gap-free"
    keys = Counter((e.aggregate_id, e.version) for e in events)
    assert [k for k, n in keys.items() if n > 1] == [], "duplicated (aggregate, version)"
    by_aggregate: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_aggregate[e.aggregate_id].append(e.version)
    for agg, versions in by_aggregate.items():
        assert sorted(versions) == list(range(1, len(versions) + 1)), f"{agg}: versions {versions}"
    found = {(e.aggregate_id, e.version): (e.event_id.hex, e.partition, e.position) for e in events}
    missing = {k: v for k, v in acked.items() if found.get(k) != v}
    assert missing == {}, f"{len(missing)} acknowledged events missing or changed"


def test_a_writer_killed_at_random_moments_loses_no_acknowledged_event(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    print(f"random seed {seed}")  # shown if the test fails
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acked: Acked = {}
    rotations = 0
    for round_ in range(ROUNDS):
        stderr = tmp_path / f"writer-{round_}.err"
        proc = start_writer(data_dir, rng.randrange(1 << 30), stderr)
        try:
            wanted = rng.randint(5, 200)
            for agg, version, event_id, partition, offset in kill_after(proc, wanted, stderr):
                assert (agg, version) not in acked, f"{agg} version {version} acknowledged twice"
                acked[agg, version] = (event_id, partition, offset)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

        # A reader on the crashed log, before anything recovered it, sees it all.
        reader = LogReader.open(data_dir, bank_layout())
        check_log(all_events(reader), acked)

        config = LogConfig(partitions=PARTITIONS, segment_bytes=SEGMENT_BYTES, fsync=Fsync.ALWAYS)
        with ArrowLog.open(data_dir, bank_layout(), config) as log:
            events = all_events(log)
            check_log(events, acked)
            for agg in {e.aggregate_id for e in events}:
                mine = [e for e in events if e.aggregate_id == agg]
                assert log.decode(log.read_stream(agg)) == mine
                assert log.last_version(agg) == len(mine)
        assert list(verify_log(data_dir)) == []
        rotations = sum(
            len(list((data_dir / "log" / str(p)).glob("*.arrows"))) - 1 for p in range(PARTITIONS)
        )
    assert len(acked) > 0
    assert rotations > 0, "the writers never rotated a segment: the test lost its point"
