"""A full disk: the append fails with a clear error, the log stays readable, and once space
returns the log opens, verifies and takes appends again.

Two disks fill up here. A real one: a tmpfs of a few hundred KiB that the test mounts
(it needs root with CAP_SYS_ADMIN; without, those tests are skipped), under the store
and under a whole `cqrsflow run`. And a simulated one, so that the failure lands
everywhere the store writes, deterministically: `disk_writer.py` (a real process)
gives the store's `os.write` calls a byte budget, and the write that would cross it
fails with ENOSPC, whole or short.

The store may keep part of the append that failed (a multi-partition append whose
first partitions were written, a batch written just before a rotation that failed):
what it must never do is lose an acknowledged event, or be unreadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from log_events import Deposited as LogDeposited
from log_events import all_events, bank_layout, new_event
from view_data import assert_views_match_log, bank_events, write_log

from connectors import JsonLinesSink, SinkError
from flows import Result
from flows.bank import VIEWS, layout
from queries import Projections, QueryError
from store import ArrowLog, Fsync, LogConfig, LogReader, verify_log
from store.disk import ENTRY_SIZE

WRITER = Path(__file__).with_name("disk_writer.py")
ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 2
SEGMENT_BYTES = 8192  # small, so that the disk fills during rotations as well as appends
# Budgets from "full before the log exists" to several rotations in, at uneven steps so
# that they land at different points of the write sequence.
BUDGETS = list(range(1, 40_000, 1499))
FULL = "the disk is full"

Key = tuple[str, int]


@dataclass
class Outcome:
    """What one writer saw: the events acknowledged, and how the disk refused it."""

    acked: dict[Key, str] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    attempted: dict[Key, str] = field(default_factory=dict)
    continued: dict[str, Any] | None = None


def outcomes(stdout: str) -> dict[int | None, Outcome]:
    found: dict[int | None, Outcome] = {}
    for line in stdout.splitlines():
        doc = json.loads(line)
        out = found.setdefault(doc["budget"], Outcome())
        if "acked" in doc:
            for agg, version, command_id in doc["acked"]:
                assert (agg, version) not in out.acked, f"{agg} v{version} acknowledged twice"
                out.acked[agg, version] = command_id
        elif "continued" in doc:
            out.continued = doc
            out.attempted.update({(a, v): c for a, v, c in doc.get("attempted", [])})
        else:
            out.error = doc
            out.attempted.update({(a, v): c for a, v, c in doc["attempted"]})
    return found


def writer(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(WRITER), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def check_refusal(out: Outcome) -> None:
    """The append failed with the store's disk-full error, naming the file and the fix."""
    assert out.error["error"] == "StorageFullError", out.error
    message = out.error["message"]
    assert FULL in message and "free space and retry" in message, message
    assert "/log/" in message, f"the message names no file: {message}"


def check_log(data: Path, out: Outcome) -> None:
    """Readable and intact: every acknowledged event, nothing but the failed append's
    besides, positions and versions gap-free."""
    assert list(verify_log(data)) == []
    events = all_events(LogReader.open(data, bank_layout()))
    found = {(e.aggregate_id, e.version): e.command_id for e in events}
    missing = {k: v for k, v in out.acked.items() if found.get(k) != v}
    assert missing == {}, f"{len(missing)} acknowledged events lost"
    extra = {k: v for k, v in found.items() if k not in out.acked}
    assert extra.items() <= out.attempted.items(), "events in the log nobody appended"
    for p in range(PARTITIONS):
        positions = [e.position for e in events if e.partition == p]
        assert positions == list(range(len(positions))), f"partition {p} has a gap"
    for agg in {a for a, _ in found}:
        versions = sorted(v for a, v in found if a == agg)
        assert versions == list(range(1, len(versions) + 1)), f"{agg}: {versions}"


def reopen_and_continue(data: Path) -> None:
    """A new writer opens the log, and an append to every account reads back."""
    config = LogConfig(partitions=PARTITIONS, segment_bytes=SEGMENT_BYTES, fsync=Fsync.ALWAYS)
    with ArrowLog.open(data, bank_layout(), config) as log:
        before = len(all_events(log))
        accounts = sorted({e.aggregate_id for e in all_events(log)}) or ["acct-new"]
        more = [
            new_event(a, log.last_version(a) + 1, LogDeposited(7, "after the disk filled"))
            for a in accounts
            if log.last_version(a) > 0
        ]
        if more:
            log.append(more)
        assert len(all_events(log)) == before + len(more)
    assert list(verify_log(data)) == []


# -- a simulated disk: the failure at every kind of write ----------------------------------


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int | None, Outcome]]:
    """One writer process per module: a log filled up at every budget, then given space."""
    root = tmp_path_factory.mktemp("filled")
    how = ["inject", str(root), str(PARTITIONS), str(SEGMENT_BYTES), "whole"]
    return root, outcomes(writer(*how, *map(str, BUDGETS)))


def test_a_full_disk_fails_the_append_clearly_and_the_log_reopens_and_goes_on(
    filled: tuple[Path, dict[int | None, Outcome]],
) -> None:
    tmp_path, found = filled
    assert sorted(found) == BUDGETS  # type: ignore[type-var]
    where = set()
    for budget, out in found.items():
        check_refusal(out)
        where.add(out.error["message"].split(" /")[0])
        # As the writer left it: full, then (once space returned) maybe appended more.
        check_log(tmp_path / str(budget), out)
        reopen_and_continue(tmp_path / str(budget))
    # The budgets did reach the different writes: a segment's creation (the log's
    # first, and in a rotation after batches were acknowledged) and a batch's.
    assert {"creating segment", "appending to"} <= where, where
    assert any(out.acked and "creating segment" in out.error["message"] for out in found.values())


def test_the_same_open_log_goes_on_once_space_returns(
    filled: tuple[Path, dict[int | None, Outcome]],
) -> None:
    _, found = filled
    stuck = {
        b: out.continued
        for b, out in found.items()
        if out.continued != {"continued": 40, "budget": b}
    }
    assert stuck == {}


def test_a_short_write_is_a_full_disk_too(tmp_path: Path) -> None:
    how = ["inject", str(tmp_path), str(PARTITIONS), str(SEGMENT_BYTES), "short"]
    found = outcomes(writer(*how, *map(str, BUDGETS)))
    where = set()
    for budget, out in found.items():
        check_refusal(out)
        where.add(out.error["message"].split(" /")[0])
        # Nothing torn was left in place: the log verifies, and the same open log
        # (its files cut back to the last whole batch) goes on once space returns.
        check_log(tmp_path / str(budget), out)
        assert out.continued == {"continued": 40, "budget": budget}, out.continued
        reopen_and_continue(tmp_path / str(budget))
    # Short writes landed in a segment's header, a batch and a directory entry.
    assert {"creating segment", "appending to"} <= where, where
    messages = [out.error["message"] for out in found.values()]
    assert any(f"of {ENTRY_SIZE} bytes" in m for m in messages), "no directory entry cut short"


# -- a real disk: a small tmpfs -------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, kib: int) -> Iterator[Path]:
    """A tmpfs of `kib` KiB mounted at `where`; skips the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {mounted.stderr}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def grow(where: Path, kib: int) -> None:
    """Space returns: the same file system, larger."""
    subprocess.run(["mount", "-o", f"remount,size={kib}k", str(where)], check=True)


@pytest.mark.parametrize("kib", [48, 100, 160, 240])
def test_a_log_on_a_small_filesystem_that_fills_up(tmp_path: Path, kib: int) -> None:
    with tmpfs(tmp_path / "disk", kib) as disk:
        data = disk / "data"
        [out] = outcomes(writer("fill", str(data), str(PARTITIONS), str(SEGMENT_BYTES))).values()
        check_refusal(out)
        assert out.acked, "the disk was full before the first append: the test lost its point"
        check_log(data, out)  # still full: readable as it is
        grow(disk, 4096)
        check_log(data, out)
        reopen_and_continue(data)


def cqrsflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )


def test_a_run_whose_disk_fills_up_stops_with_one_line_and_resumes_once_space_returns(
    tmp_path: Path,
) -> None:
    commands = tmp_path / "commands.jsonl"
    generated = cqrsflow(
        "generate", "bank", "--commands", "20000", "--accounts", "500", "-o", str(commands)
    )
    assert generated.returncode == 0, generated.stderr
    with tmpfs(tmp_path / "disk", 1536) as disk:
        data = disk / "data"
        argv = ["run", "bank", "--commands", str(commands), "--data", str(data)]
        argv += ["--partitions", "2", "--metrics-port", "-1"]
        full = cqrsflow(*argv)
        assert full.returncode == 1, full.stdout + full.stderr
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("cqrsflow: "), full.stderr
        assert "No space left on device" in last or FULL in last, last
        # One line naming the file and the fix, from the run and from its views'
        # follower alike: no traceback (a failed commit's rollback used to hide the
        # disk-full error behind "no transaction is active").
        assert str(data) in last and "free space and" in last, last
        assert "Traceback" not in full.stderr, full.stderr
        assert list(verify_log(data)) == []  # readable and intact while still full

        grow(disk, 64 * 1024)
        again = cqrsflow(*argv)
        assert again.returncode == 0, again.stderr
        verified = cqrsflow("log", "verify", "--data", str(data))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        results: dict[str, list[dict[str, Any]]] = {}
        for path in (data / "results").glob("*.jsonl"):
            for line in path.read_bytes().split(b"\n"):
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    results.setdefault(doc["command_id"], []).append(doc)
        assert len(results) == 20_000, "a command went unanswered"
        log = LogReader.open(data)
        in_log = [c for b in log.read_all() for c in b.column("command_id").to_pylist()]
        assert len(in_log) == len(set(in_log)), "a command's event was appended twice"
        accepted = {c for c, rs in results.items() if any(r["status"] == "accepted" for r in rs)}
        assert accepted == set(in_log)


def test_views_on_a_full_disk_fail_with_the_disk_full_error_and_resume_once_space_returns(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"  # the log on a roomy disk, the views' database on a full one
    write_log(log, bank_events(3, accounts=2000, events=10_000))
    reader = LogReader.open(log)
    with tmpfs(tmp_path / "disk", 64) as disk:
        projections = Projections.open(disk, VIEWS, layout(), reader=reader)
        try:
            with pytest.raises(QueryError) as refused:
                projections.catch_up(reader)
            # The commit's own error, not "no transaction is active" from the rollback
            # after it, in one line with the fix.
            message = str(refused.value)
            assert message.startswith("the views could not be written, the disk is full")
            assert "projections.duckdb" in message and "free space and run again" in message
            assert "no transaction" not in message and not getattr(refused.value, "__notes__", [])
            grow(disk, 64 * 1024)
            projections.catch_up(reader)  # from the checkpoints the failed commit left
            assert_views_match_log(projections, reader)
        finally:
            projections.close()


# -- the results sink ----------------------------------------------------------------------


def test_a_results_sink_on_a_full_device_fails_with_one_clear_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs Linux's /dev/full, a device every write to fails with ENOSPC")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results-0.jsonl").symlink_to("/dev/full")
    part = JsonLinesSink[Result](tmp_path / "results", "results").build("out", 0, 1)
    with pytest.raises(SinkError) as refused:
        part.write_batch([[Result("c1", "accepted", "acct-1", 1, "0:0", ["Deposited"])]])
    part.close()
    message = str(refused.value)
    assert isinstance(refused.value, OSError)  # reported in one line by the command line
    assert str(tmp_path / "results" / "results-0.jsonl") in message, message
    assert "the disk is full" in message and "run again" in message, message


def test_a_result_line_torn_by_a_full_disk_does_not_swallow_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "results" / "results-0.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"command_id":"c1","status":"accepted"}\n{"command_id":"c2","sta')
    part = JsonLinesSink[Result](tmp_path / "results", "results").build("out", 0, 1)
    part.write_batch([[Result("c3", "rejected", "acct-1", reason="no")]])
    part.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b'{"command_id":"c2","sta'  # still torn, and alone
    assert json.loads(lines[2])["command_id"] == "c3"
