"""The command dataflow: in process with bytewax's testing source and sink, and as
`cqrsflow run` in real processes, including SIGKILL in the middle of a run."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from view_data import assert_views_match_log, open_views

from connectors import RawBatch
from flows import MAX_RECORD_BYTES, DeadLetter, FlowConfig, Result, command_flow
from flows.bank import ACCOUNT
from store import ArrowLog, LogConfig, LogReader, verify_log


def record(command_id: str, kind: str, agg: str, **data: Any) -> bytes:
    doc = {"command_id": command_id, "type": kind, "aggregate_id": agg, "data": data}
    return msgspec.json.encode(doc)


def batch(*records: bytes) -> RawBatch:
    return RawBatch("test", "jsonl", list(records), list(range(len(records))))


def run_in_process(tmp_path: Path, *batches: RawBatch) -> tuple[list[Result], list[DeadLetter]]:
    results: list[list[Result]] = []
    dead: list[list[DeadLetter]] = []
    flow = command_flow(
        ACCOUNT,
        TestingSource(list(batches)),
        TestingSink(results),
        TestingSink(dead),
        FlowConfig(tmp_path, log=LogConfig(partitions=2)),
    )
    run_main(flow)
    return [r for rs in results for r in rs], [d for ds in dead for d in ds]


def test_commands_become_events_and_results(tmp_path: Path) -> None:
    results, dead = run_in_process(
        tmp_path,
        batch(
            record("c1", "OpenAccount", "a", owner="ann", overdraft_limit=10),
            record("c2", "Deposit", "a", amount=5),
            record("c3", "OpenAccount", "b", owner="bob"),
        ),
        batch(
            record("c4", "Withdraw", "a", amount=16),  # 5 - 16 < -10
            record("c5", "Withdraw", "a", amount=15),
            record("c6", "Deposit", "nobody", amount=1),
        ),
    )
    by_id = {r.command_id: r for r in results}
    assert len(results) == 6 and dead == []
    assert [by_id[c].status for c in ("c1", "c2", "c3", "c4", "c5", "c6")] == [
        "accepted",
        "accepted",
        "accepted",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert (by_id["c5"].version, by_id["c5"].events) == (3, ["Withdrawn"])
    assert by_id["c6"].reason == "the account is not open"
    log = LogReader.open(tmp_path, ACCOUNT.layout())
    history = log.decode(log.read_stream("a"))
    assert [e.command_id for e in history] == ["c1", "c2", "c5"]
    assert f"{history[-1].partition}:{history[-1].position}" == by_id["c5"].position
    assert ACCOUNT.fold(e.payload for e in history).balance == -10


def test_bad_records_are_invalid_results_and_dead_letters_and_the_flow_goes_on(
    tmp_path: Path,
) -> None:
    bad = [
        b'{"command_id": "x1", "type": "Deposit", "aggregate_id": "a", "data": {"amount": "ten"}}',
        b'{"command_id": "x2", "type": "Transfer", "aggregate_id": "a", "data": {}}',
        b'{"command_id": "x3", "type": "Deposit"',
        b"\xff\xfe\x00 binary garbage",
        b'{"command_id": "x5", "type": "OpenAccount", "aggregate_id": "a", "data": {"owner": "'
        + b"x" * 70_000
        + b'"}}',
        b"[" * 5000,
    ]
    good = [record("g1", "OpenAccount", "a", owner="ann"), record("g2", "Deposit", "a", amount=3)]
    results, dead = run_in_process(
        tmp_path, batch(bad[0], good[0], *bad[1:4]), batch(*bad[4:], good[1])
    )
    invalid = [r for r in results if r.status == "invalid"]
    assert len(invalid) == len(bad) == len(dead)
    assert {r.command_id for r in results if r.status == "accepted"} == {"g1", "g2"}
    reasons = {r.command_id: r.reason for r in invalid}
    assert reasons["x1"] == "data.amount: Expected `int`, got `str` ('ten')"
    assert "Transfer" in (reasons["x2"] or "")
    assert all(d.reason for d in dead) and {d.source for d in dead} == {"test"}


def cqrsflow(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        **kwargs,
    )


def generate(
    path: Path, commands: int, accounts: int, invalid_rate: float = 0.0, seed: int = 7
) -> None:
    done = cqrsflow(
        "generate", "bank", "--commands", str(commands), "--accounts", str(accounts),
        "--invalid-rate", str(invalid_rate), "--seed", str(seed), "-o", str(path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def read_results(data: Path) -> list[dict[str, Any]]:
    """Every whole result line written so far (a line cut by a crash is not a result)."""
    out = []
    for path in sorted((data / "results").glob("*.jsonl")):
        for line in path.read_bytes().split(b"\n"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def log_content(data: Path) -> dict[str, list[tuple[Any, ...]]]:
    log = LogReader.open(data, ACCOUNT.layout())
    content: dict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
    for e in (e for b in log.read_all() for e in log.decode(b)):
        content[e.aggregate_id].append((e.version, e.event_type, e.command_id, e.payload))
    return {agg: sorted(events) for agg, events in content.items()}


def test_run_decides_every_command_once_and_resumes_after_the_end(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    generate(commands, 3000, 200, invalid_rate=0.02)
    done = cqrsflow("run", "bank", "--commands", str(commands), "--data", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    results = read_results(tmp_path / "d")
    assert len(results) == 3000
    statuses = collections.Counter(r["status"] for r in results)
    assert statuses["invalid"] > 0 and statuses["rejected"] > 0 and statuses["accepted"] > 2000
    assert f"{statuses['accepted']:,} accepted" in done.stdout
    assert list(verify_log(tmp_path / "d")) == []
    again = cqrsflow("run", "bank", "--commands", str(commands), "--data", str(tmp_path / "d"))
    assert again.returncode == 0 and "no new commands" in again.stdout
    assert len(read_results(tmp_path / "d")) == 3000
    # another input on the same data directory is a new run, not a resume of the first
    more = tmp_path / "more.jsonl"
    generate(more, 500, 200)
    other = cqrsflow("run", "bank", "--commands", str(more), "--data", str(tmp_path / "d"))
    assert other.returncode == 0, other.stderr
    assert len(read_results(tmp_path / "d")) == 3500
    # new commands (other ids) on the same accounts are decided and appended as any
    # others: the log's events of the first input are not a crashed run to replay
    logged = sum(LogReader.open(tmp_path / "d").watermarks().values())
    new = tmp_path / "new.jsonl"
    generate(new, 500, 200, seed=8)
    third = cqrsflow("run", "bank", "--commands", str(new), "--data", str(tmp_path / "d"))
    assert third.returncode == 0, third.stderr
    accepted = sum(r["status"] == "accepted" for r in read_results(tmp_path / "d")[3500:])
    assert accepted > 100
    assert sum(LogReader.open(tmp_path / "d").watermarks().values()) == logged + accepted


def test_two_processes_write_the_same_events_as_one(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    generate(commands, 4000, 300)
    one = cqrsflow("run", "bank", "--commands", str(commands), "--data", str(tmp_path / "one"))
    two = cqrsflow(
        "run", "bank", "--commands", str(commands), "--data", str(tmp_path / "two"),
        "--processes", "2",
    )  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert log_content(tmp_path / "one") == log_content(tmp_path / "two")
    assert len(log_content(tmp_path / "one")) == 300
    # one follower maintained the views however many processes wrote the log
    for data in (tmp_path / "one", tmp_path / "two"):
        projections, reader = open_views(data)
        assert projections.lag(reader)["balances"].events == 0
        assert_views_match_log(projections, reader)
        projections.close()


def wait_for_results(data: Path, at_least: int, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(read_results(data)) >= at_least:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_mid_run_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path, seed: int
) -> None:
    commands = tmp_path / "commands.jsonl"
    generate(commands, 60_000, 2_000, invalid_rate=0.01)
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "flows.cli", "run", "bank", "--commands", str(commands)]
    argv += ["--data", str(data), "--partitions", "2"]
    acknowledged: dict[str, dict[str, Any]] = {}
    kills = 0
    for round_ in range(3):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = (round_ + 1) * (5_000 + 3_000 * seed)
        if wait_for_results(data, target, proc) and proc.poll() is None:
            # The run and its view follower die together, each wherever it was.
            for pid in [*children(proc.pid), proc.pid]:
                os.kill(pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        for r in read_results(data):
            if r["status"] == "accepted":
                acknowledged.setdefault(r["command_id"], r)
    assert kills >= 1, "the run finished before it could be killed"
    final = cqrsflow("run", "bank", "--commands", str(commands), "--data", str(data))
    assert final.returncode == 0, final.stderr
    assert list(verify_log(data)) == []

    content = log_content(data)
    by_command: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for agg, events in content.items():
        assert [v for v, *_ in events] == list(range(1, len(events) + 1)), agg  # gap-free
        for version, _, command_id, _ in events:
            by_command[command_id].append((agg, version))
    # every acknowledged command's events are in the log, exactly once, where it said
    for command_id, result in acknowledged.items():
        found = by_command.get(command_id)
        assert found is not None, f"acknowledged {command_id} is not in the log"
        assert len(found) == len(result["events"]) == 1
        assert found[0] == (result["aggregate_id"], result["version"])
    # nothing appended twice: one command, one event (the bank decides one per command)
    assert all(len(v) == 1 for v in by_command.values())
    # every command with a readable id got an answer (an oversize record is refused
    # unread); the bank's invariant holds
    answered = {r["command_id"] for r in read_results(data)}
    sent = set()
    for line in commands.read_bytes().splitlines():
        if len(line) > MAX_RECORD_BYTES:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("command_id"), str):
            sent.add(doc["command_id"])
    assert len(sent) > 50_000 and sent <= answered
    for events in content.values():
        state = ACCOUNT.fold(payload for *_, payload in events)
        assert state.balance >= -state.overdraft_limit
    # the views resumed from their checkpoints and equal their definitions over the log
    projections, reader = open_views(data)
    assert_views_match_log(projections, reader)
    projections.close()


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in found]


def test_bytewax_run_finds_the_bank_flow_configured_by_the_environment(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    generate(commands, 500, 50)
    env = {**os.environ, "CQRSFLOW_COMMANDS": str(commands), "CQRSFLOW_DATA": str(tmp_path / "d")}
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.bank:flow"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_results(tmp_path / "d")) == 500
    missing = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.bank:flow"],
        env={k: v for k, v in env.items() if k != "CQRSFLOW_DATA"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert missing.returncode != 0 and "CQRSFLOW_DATA" in missing.stderr


def test_a_run_on_a_log_another_process_writes_fails_with_one_line(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    generate(commands, 100, 10)
    data = tmp_path / "d"
    holder = ArrowLog.open(data, ACCOUNT.layout(), LogConfig(partitions=2))
    try:
        done = cqrsflow("run", "bank", "--commands", str(commands), "--data", str(data))
    finally:
        holder.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"cqrsflow: partition 0 in {data / 'log'} is already open for writing by another "
        f"process (pid {os.getpid()}); stop it first, or open the log read-only"
    ]
    assert cqrsflow("run", "bank", "--commands", str(commands), "--data", str(data)).returncode == 0
