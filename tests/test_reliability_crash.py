"""The crash loop: `cqrsflow run` SIGKILLed at random moments, round after round, on the
same input, and what it must leave behind at the end.

Each round starts `cqrsflow run` (and with it the view follower, its child) on the same
generated bank workload and kills both with SIGKILL at a random moment: some rounds after
a random delay from the start (so during start-up, recovery or the first batches as
often as mid-run), others once a random number of results has been written. After the
last round a run goes to the end of the input. Then:

- `cqrsflow log verify` finds nothing wrong;
- every command acknowledged in any round (a whole result line: results are written only
  after their events are durable) has its events in the log exactly once, at the
  aggregate and version its result named, and every later answer to it is the same one;
- every aggregate's versions are gap-free from 1 and each partition's positions too;
- folding each account's events gives a state that keeps the bank's invariants;
- every view equals a rebuild from the log (a new projections database caught up from
  position 0) and its definition evaluated over the whole log;
- every command with a readable id was answered.

The seed is printed, so a failure can be replayed with CQRSFLOW_CRASH_SEED.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from view_data import assert_views_match_log, open_views, rows

from flows import MAX_RECORD_BYTES, Command, Shard, ShardConfig
from flows.bank import (
    ACCOUNT,
    VIEWS,
    AccountClosed,
    AccountOpened,
    Deposit,
    OpenAccount,
    Withdraw,
    layout,
)
from queries import Projections
from store import ArrowLog, Journal, LogConfig, LogReader, SnapshotStore

ROUNDS = 10
COMMANDS = 60_000  # enough that most rounds are still running when they are killed
ACCOUNTS = 1_000
STALL_GUARD_S = 120  # not a timing assertion: only so that a hung run fails the test
ROOT = Path(__file__).resolve().parent.parent


def cqrsflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=ROOT,
    )


def read_results(data: Path) -> list[dict[str, Any]]:
    """Every whole result line written so far (a line cut by the kill is no result)."""
    out = []
    for path in sorted((data / "results").glob("*.jsonl")):
        for line in path.read_bytes().split(b"\n"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def count_result_lines(data: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (data / "results").glob("*.jsonl"))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the view follower, and anything it started)."""
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for child in map(int, found):
        out += [child, *descendants(child)]
    return out


def kill_all(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the run and its follower, each wherever it is."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def one_round(argv: list[str], data: Path, rng: random.Random, rounds_left: int) -> bool:
    """Start a run and SIGKILL it at a random moment; whether it was killed in time."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + STALL_GUARD_S
        if rng.random() < 0.5:
            # By time: mostly in start-up, recovery and the first batches.
            kill_at = time.monotonic() + rng.uniform(0.05, 1.0)
            while time.monotonic() < kill_at and proc.poll() is None:
                time.sleep(0.005)
        else:
            # By progress: somewhere in this round's share of what is left to answer.
            answered = count_result_lines(data)
            wanted = answered + rng.randint(1, max((COMMANDS - answered) // rounds_left, 1))
            while proc.poll() is None and count_result_lines(data) < wanted:
                assert time.monotonic() < deadline, "the run stalled"
                time.sleep(0.005)
        killed = proc.poll() is None
        kill_all(proc)
        proc.wait()
        assert proc.stderr is not None
        errors = proc.stderr.read().decode(errors="replace")
        assert killed or proc.returncode == 0, errors
        return killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def sent_ids(commands: Path) -> set[str]:
    """The ids of the records a run can read one from (an oversize one is refused unread)."""
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
    return sent


def check_invariants(agg: str, events: list[tuple[int, str, str, Any]]) -> None:
    """The bank's invariants, over one account's events in version order."""
    payloads = [payload for *_, payload in events]
    assert isinstance(payloads[0], AccountOpened), f"{agg} does not start by being opened"
    assert not any(isinstance(p, AccountOpened) for p in payloads[1:]), f"{agg} opened twice"
    state = ACCOUNT.initial
    for i, payload in enumerate(payloads):
        if isinstance(payload, AccountClosed):
            assert state.balance == 0, f"{agg} closed at balance {state.balance}"
            assert i == len(payloads) - 1, f"{agg} took events after it closed"
        state = ACCOUNT.evolve(state, payload)
        assert state.balance >= -state.overdraft_limit, f"{agg} overdrawn at version {i + 1}"


def assert_views_equal_a_rebuild(data: Path, scratch: Path) -> None:
    """A new projections database, caught up from position 0, holds the same rows."""
    reader = LogReader.open(data)
    scratch.mkdir()
    rebuilt = Projections.open(scratch, VIEWS, layout(), reader=reader)
    live, _ = open_views(data)
    try:
        rebuilt.catch_up(reader)
        for view in VIEWS:
            sql = f'SELECT * FROM "{view.name}"'
            assert rows(live.con, sql) == rows(rebuilt.con, sql), view.name
    finally:
        rebuilt.close()
        live.close()


def test_run_killed_at_random_moments_round_after_round_keeps_every_promise(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CQRSFLOW_CRASH_SEED", random.randrange(1 << 32)))
    print(f"crash loop seed {seed} (replay with CQRSFLOW_CRASH_SEED={seed})")
    rng = random.Random(seed)
    commands = tmp_path / "commands.jsonl"
    done = cqrsflow(
        "generate", "bank", "--commands", str(COMMANDS), "--accounts", str(ACCOUNTS),
        "--invalid-rate", "0.01", "--seed", str(seed % 1000), "-o", str(commands),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "flows.cli", "run", "bank", "--commands", str(commands)]
    argv += ["--data", str(data), "--partitions", "2", "--metrics-port", "-1"]

    answers: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    kills = 0
    for round_ in range(ROUNDS):
        kills += one_round(argv, data, rng, ROUNDS - round_)
    assert kills >= ROUNDS // 2, (
        f"only {kills} of {ROUNDS} runs were killed: the test lost its point"
    )
    final = cqrsflow(*argv[3:])
    assert final.returncode == 0, final.stderr

    verified = cqrsflow("log", "verify", "--data", str(data))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    for r in read_results(data):
        answers[r["command_id"]].append(r)
    log = LogReader.open(data, ACCOUNT.layout())
    content: dict[str, list[tuple[int, str, str, Any]]] = collections.defaultdict(list)
    events = [e for b in log.read_all() for e in log.decode(b)]
    for part in range(log.partitions):
        mine = [e.position for e in events if e.partition == part]
        assert mine == list(range(len(mine))), f"partition {part} is not gap-free"
    for e in events:
        content[e.aggregate_id].append((e.version, e.event_type, e.command_id, e.payload))
    by_command: dict[str, list[tuple[str, int, str]]] = collections.defaultdict(list)
    for agg, history in content.items():
        history.sort(key=lambda h: h[0])
        assert [v for v, *_ in history] == list(range(1, len(history) + 1)), f"{agg}: gap"
        check_invariants(agg, history)
        for version, _, command_id, _ in history:
            by_command[command_id].append((agg, version, ""))
    positions = {(e.aggregate_id, e.version): f"{e.partition}:{e.position}" for e in events}

    # Exactly once: the bank decides one event per command.
    assert [c for c, found in by_command.items() if len(found) != 1] == []
    acknowledged = 0
    for command_id, results in answers.items():
        accepted = [r for r in results if r["status"] == "accepted"]
        if not accepted:
            continue
        acknowledged += 1
        first = accepted[0]
        [(agg, version, _)] = by_command.get(command_id, [("missing", 0, "")])
        assert (agg, version) == (first["aggregate_id"], first["version"]), command_id
        assert positions[agg, version] == first["position"], command_id
        # An acknowledged command is answered the same way every time it is read again.
        assert all(r == first for r in accepted), f"{command_id}: {results}"
    assert acknowledged == len(by_command), "an event in the log whose command got no answer"
    assert sent_ids(commands) <= answers.keys()
    # Every command is answered the same way each time: a rejection too, from the
    # decisions journal (before it, 0-192 per run flipped to accepted after a crash).
    flipped = [c for c, rs in answers.items() if c is not None and any(r != rs[0] for r in rs)]
    assert flipped == [], f"answered one way before a crash and another after: {flipped[:5]}"

    projections, reader = open_views(data)
    assert_views_match_log(projections, reader)
    projections.close()
    assert_views_equal_a_rebuild(data, tmp_path / "rebuilt")
    print(f"{kills} SIGKILLs survived, {acknowledged:,} acknowledged commands checked")


def test_a_rejected_command_stays_rejected_when_the_input_is_replayed(tmp_path: Path) -> None:
    """What a resumed run does with the commands between its checkpoint and the crash,
    on the real shard: the same commands again, answered from the log, the rejection
    from its batch's note, whether the shard's checkpoint was ahead of the input's or
    behind it."""
    config = LogConfig(partitions=1)
    commands = [
        Command("open", "acct-1", OpenAccount("ann"), None, None),
        Command("withdraw", "acct-1", Withdraw(5), None, None),  # rejected: balance 0
        Command("deposit", "acct-1", Deposit(10), None, None),
    ]
    clock = iter(range(10**6)).__next__

    def shard(log: ArrowLog) -> Shard:
        return Shard(
            ACCOUNT, log, 0, SnapshotStore(tmp_path / "s"), ShardConfig(), clock,
            decisions=Journal(tmp_path / "decisions"),
        )  # fmt: skip

    with ArrowLog.open(tmp_path, layout(), config) as log:
        first = shard(log).handle(commands)
    assert [r.status for r in first] == ["accepted", "rejected", "accepted"]
    with ArrowLog.open(tmp_path, layout(), config) as log:  # the checkpoint was ahead
        again = shard(log).handle(commands)
    assert again == first
    with ArrowLog.open(tmp_path, layout(), config) as log:
        resumed = shard(log)
        resumed.replay_from(0)  # the checkpoint was taken before these commands
        assert resumed.handle(commands) == first
