"""Fuzzing the command flow: arbitrary bytes and structures among valid commands.

`test_parse.py` proves the parser never raises on arbitrary input; here the same kind of
input goes through the whole dataflow (bytewax's testing source and sink, the real
parse, shard, decide and durable append steps, a real log on disk), mixed with valid
commands, and:

- every record yields exactly one result, `accepted`, `rejected` or `invalid`;
- a record the parser refuses is `invalid` and a dead letter; the flow goes on;
- the valid commands get exactly the outcome the bank's decider gives them in input
  order, and the accepted ones' events are in the log, in order, once each.

`test_a_run_over_garbage_lines_answers_every_line` does the same through `cqrsflow run`
as a process, over a file of random lines.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from connectors import RawBatch
from flows import Command, DeadLetter, FlowConfig, Parser, Rejected, Result, command_flow
from flows.bank import ACCOUNT
from store import LogConfig, LogReader

PARSER = Parser(ACCOUNT)
ROOT = Path(__file__).resolve().parent.parent
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MINE = "ok-"  # the valid commands' ids and aggregates; garbage must not reuse them

# -- what is sent -------------------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
# Records with the envelope's keys and anything as values: the near misses.
near_misses = st.fixed_dictionaries(
    {
        "command_id": st.text(max_size=20) | values,
        "type": st.sampled_from(list(ACCOUNT.command_types)) | values,
        "aggregate_id": st.text(max_size=20) | values,
        "data": st.fixed_dictionaries({}, optional={"amount": values, "owner": values}) | values,
    },
    optional={"expected_version": values, "correlation_id": values, "extra": values},
)


def encode(doc: Any, fmt: str) -> bytes:
    try:
        return msgspec.json.encode(doc) if fmt == "jsonl" else msgspec.msgpack.encode(doc)
    except (TypeError, OverflowError, msgspec.EncodeError):  # NaN keys, bytes in JSON, ...
        return repr(doc).encode()


def garbage(fmt: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=120),
        values.map(lambda v: encode(v, fmt)),
        near_misses.map(lambda v: encode(v, fmt)),
    )


@st.composite
def valid_commands(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Commands over a few accounts: opens, deposits, withdrawals, closes, some with an
    expected version, so that the bank both accepts and rejects."""
    out = []
    for n in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["OpenAccount", "Deposit", "Withdraw", "CloseAccount"]))
        data: dict[str, Any] = {
            "OpenAccount": {"owner": "o", "overdraft_limit": draw(st.sampled_from([0, 5]))},
            "Deposit": {"amount": draw(st.integers(1, 9))},
            "Withdraw": {"amount": draw(st.integers(1, 9))},
            "CloseAccount": {},
        }[kind]
        doc: dict[str, Any] = {
            "command_id": f"{MINE}{n}",
            "type": kind,
            "aggregate_id": f"{MINE}acct-{draw(st.integers(0, 3))}",
            "data": data,
        }
        if draw(st.integers(0, 5)) == 0:
            doc["expected_version"] = draw(st.integers(0, 4))
        out.append(doc)
    return out


@st.composite
def inputs(draw: st.DrawFn, fmt: str) -> tuple[list[bytes], list[dict[str, Any]], list[int]]:
    """(records in input order, the valid commands among them, batch sizes)."""
    valid = draw(valid_commands())
    junk = draw(st.lists(garbage(fmt), max_size=30))
    records = [encode(c, fmt) for c in valid]
    for raw in junk:  # garbage anywhere; the valid commands keep their order
        records.insert(draw(st.integers(0, len(records))), raw)
    sizes = []
    left = len(records)
    while left:
        sizes.append(draw(st.integers(1, left)))
        left -= sizes[-1]
    return records, valid, sizes


# -- what must come out -------------------------------------------------------------------


def expected_outcomes(valid: list[dict[str, Any]]) -> dict[str, tuple[str, int | None]]:
    """Each valid command's status and version, deciding them in input order."""
    states: dict[str, tuple[Any, int]] = {}
    out: dict[str, tuple[str, int | None]] = {}
    for doc in valid:
        command = PARSER.parse(msgspec.json.encode(doc), "jsonl")
        assert isinstance(command, Command)
        state, version = states.get(command.aggregate_id, (ACCOUNT.initial, 0))
        if command.expected_version is not None and command.expected_version != version:
            out[command.command_id] = ("rejected", None)
            continue
        decision = ACCOUNT.decide(command.payload, state)
        if isinstance(decision, Rejected):
            out[command.command_id] = ("rejected", None)
            continue
        for event in decision:
            state = ACCOUNT.evolve(state, event)
        version += len(decision)
        states[command.aggregate_id] = (state, version)
        out[command.command_id] = ("accepted", version)
    return out


def run_flow(
    data: Path, records: list[bytes], sizes: list[int], fmt: str
) -> tuple[list[Result], list[DeadLetter]]:
    batches = []
    start = 0
    for size in sizes:
        chunk = records[start : start + size]
        batches.append(RawBatch("fuzz", fmt, chunk, list(range(start, start + size))))  # type: ignore[arg-type]
        start += size
    results: list[list[Result]] = []
    dead: list[list[DeadLetter]] = []
    flow = command_flow(
        ACCOUNT,
        TestingSource(batches),
        TestingSink(results),
        TestingSink(dead),
        FlowConfig(data, log=LogConfig(partitions=2)),
    )
    run_main(flow)  # type: ignore[no-untyped-call]
    return [r for rs in results for r in rs], [d for ds in dead for d in ds]


def check(records: list[bytes], valid: list[dict[str, Any]], sizes: list[int], fmt: str) -> None:
    parsed = [PARSER.parse(raw, fmt) for raw in records]
    # Garbage that happens to be a valid command is decided like any other; it must not
    # touch the accounts or ids of the commands whose outcome is predicted.
    for found in parsed:
        if isinstance(found, Command) and not found.command_id.startswith(MINE):
            assume(not found.aggregate_id.startswith(MINE))
    refused = sum(not isinstance(p, Command) for p in parsed)
    with tempfile.TemporaryDirectory() as d:
        results, dead = run_flow(Path(d), records, sizes, fmt)
        assert len(results) == len(records), "a record without exactly one result"
        assert all(r.status in ("accepted", "rejected", "invalid") for r in results)
        assert sum(r.status == "invalid" for r in results) == refused == len(dead)
        assert all(r.reason for r in results if r.status != "accepted")
        mine = {r.command_id: r for r in results if (r.command_id or "").startswith(MINE)}
        want = expected_outcomes(valid)
        assert {c: (r.status, r.version) for c, r in mine.items()} == want
        log = LogReader.open(d, ACCOUNT.layout())
        logged = [
            (e.aggregate_id, e.version, e.command_id)
            for b in log.read_all()
            for e in log.decode(b)
            if e.aggregate_id.startswith(MINE)
        ]
        accepted = {c for c, (status, _) in want.items() if status == "accepted"}
        assert sorted(c for *_, c in logged) == sorted(accepted)  # all there, once each
        for agg in {a for a, *_ in logged}:
            versions = sorted(v for a, v, _ in logged if a == agg)
            assert versions == list(range(1, len(versions) + 1))


@SETTINGS
@given(data=inputs("jsonl"))
def test_json_garbage_among_valid_commands_through_the_flow(
    data: tuple[list[bytes], list[dict[str, Any]], list[int]],
) -> None:
    check(*data, "jsonl")


@SETTINGS
@given(data=inputs("msgpack"))
def test_msgpack_garbage_among_valid_commands_through_the_flow(
    data: tuple[list[bytes], list[dict[str, Any]], list[int]],
) -> None:
    check(*data, "msgpack")


# -- the same, as a process ----------------------------------------------------------------


def test_a_run_over_garbage_lines_answers_every_line(tmp_path: Path) -> None:
    rng = random.Random(8)
    commands = tmp_path / "commands.jsonl"
    lines: list[bytes] = []
    sent: list[str] = []
    for n in range(3000):
        if rng.random() < 0.3:
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
            junk = junk.replace(b"\n", b" ").replace(b"\r", b" ")
            lines.append(junk if junk.strip() else b"x")
        else:
            doc = {"command_id": f"c{n}", "type": "OpenAccount", "aggregate_id": f"a{n % 500}"}
            doc["data"] = {"owner": "o"}
            lines.append(json.dumps(doc).encode())
            sent.append(f"c{n}")
    commands.write_bytes(b"\n".join(lines) + b"\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "flows.cli", "run", "bank", "--commands", str(commands)),
            *("--data", str(tmp_path / "d"), "--metrics-port", "-1"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    results = [
        json.loads(line)
        for path in (tmp_path / "d" / "results").glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    assert len(results) == len(lines)
    by_id = {r["command_id"]: r for r in results if r.get("command_id") in set(sent)}
    assert set(by_id) == set(sent)
    # The first open of each account is accepted, the later ones rejected: nothing lost.
    first = {}
    for c in sent:
        first.setdefault(f"a{int(c[1:]) % 500}", c)
    assert {c for c, r in by_id.items() if r["status"] == "accepted"} == set(first.values())
    invalid = sum(r["status"] == "invalid" for r in results)
    assert invalid == len(lines) - len(sent)
    print(f"{len(lines) - len(sent):,} garbage lines among {len(sent):,} commands, all answered")
