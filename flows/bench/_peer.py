"""The peer a Python user would pick instead: the `eventsourcing` library with SQLite.

The bank is written in that library's own idiom: an `Aggregate` subclass whose
`@event` methods both record and apply events, an `Application` whose methods are the
commands, and its SQLite recorder (``PERSISTENCE_MODULE=eventsourcing.sqlite``) in WAL
mode with SQLite's ``synchronous=FULL``, so each command's transaction is fsynced
before it returns: durable, like ours. It is given its fastest single-process
configuration: an aggregate cache as large as the workload, without the per-get
fast-forward query (one writer, as in our flow), and no deep copy out of the cache
(the commands validate before they record, so a rejection never dirties a cached
aggregate).

The workload is the generated bank workload `bench commands` runs, at the peer's
size (`Scale.peer_commands`, twenty commands per account, the same generator and
seed): about 3,000 durable commands a second would make the full size take minutes.
Our side is `bench commands`' own figure, measured in the same run; a rate per command
that does not depend on the workload's length once it is past warming up. Replay is
every account rebuilt from the store by a new application with no cache, against our
log of the same commands read back to event objects and folded by the bank's `evolve`.

Installed through the optional dependency group ``bench``; without it `bench_peer`
raises `PeerMissing`, which `bench all` reports as a skipped figure.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from flows import bank
from flows._flow import FLOW_LOG, FlowConfig
from flows._progress import Report
from flows._workload import bank_commands
from flows.bank import ACCOUNT
from flows.bench._harness import Figure, SuiteUnavailable, interleaved, rate, timed
from flows.bench._store import Scale
from store import LogReader

PEER = "eventsourcing"


class PeerMissing(SuiteUnavailable):
    """The peer library is not installed: the figure is skipped, saying how to get it."""


def peer_version() -> str | None:
    if importlib.util.find_spec(PEER) is None:
        return None
    from importlib.metadata import version

    return version(PEER)


def _bank_app() -> tuple[type[Any], type[Exception]]:
    """The bank in eventsourcing's idiom, defined on first use (the import is optional)."""
    from eventsourcing.application import AggregateNotFoundError, Application
    from eventsourcing.domain import Aggregate, event

    class Rejected(Exception):
        pass

    class Account(Aggregate):
        @staticmethod
        def create_id(account: str) -> UUID:
            return uuid5(NAMESPACE_URL, f"/accounts/{account}")

        @event("Opened")
        def __init__(self, account: str, owner: str, overdraft_limit: int) -> None:
            self.owner = owner
            self.overdraft_limit = overdraft_limit
            self.balance = 0
            self.closed = False

        def deposit(self, amount: int) -> None:
            self._check_open()
            self._deposited(amount)

        def withdraw(self, amount: int) -> None:
            self._check_open()
            if self.balance - amount < -self.overdraft_limit:
                raise Rejected("insufficient funds")
            self._withdrawn(amount)

        def close(self) -> None:
            self._check_open()
            if self.balance != 0:
                raise Rejected("the balance must be zero to close the account")
            self._closed()

        def _check_open(self) -> None:
            if self.closed:
                raise Rejected("the account is closed")

        # The decorated methods run again on replay: they only apply, never check.
        @event("Deposited")
        def _deposited(self, amount: int) -> None:
            self.balance += amount

        @event("Withdrawn")
        def _withdrawn(self, amount: int) -> None:
            self.balance -= amount

        @event("Closed")
        def _closed(self) -> None:
            self.closed = True

    class Bank(Application[UUID]):
        def open_account(self, account: str, owner: str, overdraft_limit: int = 0) -> None:
            if Account.create_id(account) in self.repository:
                raise Rejected("the account is already open")
            self.save(Account(account, owner, overdraft_limit))

        def _account(self, account: str) -> Any:
            try:
                return self.repository.get(Account.create_id(account))
            except AggregateNotFoundError:
                raise Rejected("the account is not open") from None

        def deposit(self, account: str, amount: int) -> None:
            acct = self._account(account)
            acct.deposit(amount)
            self.save(acct)

        def withdraw(self, account: str, amount: int) -> None:
            acct = self._account(account)
            acct.withdraw(amount)
            self.save(acct)

        def close_account(self, account: str) -> None:
            acct = self._account(account)
            acct.close()
            self.save(acct)

        def replay(self, accounts: list[str]) -> int:
            """Rebuild every account from its stored events; how many events that read."""
            return sum(self._account(a).version for a in accounts)

    return Bank, Rejected


def peer_env(db: Path, cache: int) -> dict[str, str]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db)}
    if cache:
        env |= {
            "AGGREGATE_CACHE_MAXSIZE": str(cache),
            "AGGREGATE_CACHE_FASTFORWARD": "n",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
        }
    return env


def run_peer(app: Any, rejected: type[Exception], records: list[dict[str, Any]]) -> int:
    """Every command through the peer application; how many it accepted."""
    accepted = 0
    for r in records:
        account, data = r["aggregate_id"], r["data"]
        try:
            match r["type"]:
                case "OpenAccount":
                    app.open_account(account, data["owner"], data.get("overdraft_limit", 0))
                case "Deposit":
                    app.deposit(account, data["amount"])
                case "Withdraw":
                    app.withdraw(account, data["amount"])
                case "CloseAccount":
                    app.close_account(account)
        except rejected:
            continue
        accepted += 1
    return accepted


def _synchronous(db: Path) -> str:
    """SQLite's `synchronous` setting as the peer's connections get it: FULL fsyncs
    the write-ahead log at every commit."""
    con = sqlite3.connect(db)
    try:
        level = int(con.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        con.close()
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))


def _run_ours(records: list[bytes], data: Path) -> float:
    from bytewax.testing import TestingSink, run_main

    from connectors import GeneratorSource
    from flows._flow import command_flow

    """Commands/s of our command flow over `records` into a new log at `data`."""
    results: list[Any] = []
    flow = command_flow(
        ACCOUNT,
        GeneratorSource(records),
        TestingSink(results),
        TestingSink([]),
        FlowConfig(data, log=replace(FLOW_LOG, partitions=1)),
    )
    seconds = timed(lambda: run_main(flow))  # type: ignore[no-untyped-call]
    answered = sum(len(r) for r in results)
    assert answered == len(records), (answered, len(records))
    return rate(len(records), seconds)


def _replay_ours(data: Path) -> tuple[float, int]:
    """Events/s reading our log back to event objects and folding them by `evolve`:
    every account rebuilt, as the peer's replay does."""
    reader = LogReader.open(data, bank.layout())
    states: dict[str, Any] = {}
    events = 0

    def run() -> None:
        nonlocal events
        initial, evolve = ACCOUNT.initial, ACCOUNT.evolve
        for batch in reader.read_all():
            for e in reader.decode(batch):
                states[e.aggregate_id] = evolve(states.get(e.aggregate_id, initial), e.payload)
                events += 1

    seconds = timed(run)
    return rate(events, seconds), events


def _encoded(records: list[dict[str, Any] | bytes]) -> list[bytes]:
    encode = msgspec.json.Encoder().encode
    return [r if isinstance(r, bytes) else encode(r) for r in records]


def bench_peer(
    scale: Scale,
    workdir: Path,
    progress: Report,
    ours_commands: tuple[float, ...] | None = None,
) -> list[Figure]:
    """The peer's commands/s and replay events/s beside ours, on the bank workload.

    `ours_commands`: our commands/s runs as `bench commands` measured them in the same
    run (`bench all` passes them); without them, measured here the same way.
    """
    from flows._flow import tune_gc

    version = peer_version()
    if version is None:
        raise PeerMissing(
            f"the {PEER} library is not installed; install it with "
            '`pip install -e ".[bench]"` to compare with it'
        )
    n = scale.peer_commands
    records = [r for r in bank_commands(n, max(n // 20, 1)) if isinstance(r, dict)]
    if ours_commands is None:
        ours_records = _encoded(list(bank_commands(scale.write_events, scale.write_events // 20)))
        progress(f"{len(ours_records):,} commands through our flow")
        tune_gc()
        mine, _ = interleaved(
            scale.runs, lambda: _run_ours(ours_records, Path(tempfile.mkdtemp(dir=workdir)))
        )
        ours_commands = tuple(mine)

    bank_app, rejected = _bank_app()
    accounts = sorted({str(r["aggregate_id"]) for r in records})
    last_db: list[Path] = []
    accepted: list[int] = []

    def commands() -> float:
        db = Path(tempfile.mkdtemp(dir=workdir)) / "bank.sqlite"
        app = bank_app(env=peer_env(db, cache=len(accounts)))
        try:
            seconds = timed(lambda: accepted.append(run_peer(app, rejected, records)))
        finally:
            app.close()
        last_db[:] = [db]
        return rate(len(records), seconds)

    progress(f"{PEER} {version} with SQLite: {n:,} bank commands")
    theirs, _ = interleaved(scale.runs, commands)
    assert len(set(accepted)) == 1, accepted  # every run decided alike
    sync = _synchronous(last_db[0])

    progress(f"the same {n:,} commands through our flow, for its log")
    ours_log = Path(tempfile.mkdtemp(dir=workdir))
    _run_ours(_encoded(list(records)), ours_log)
    replayed: list[int] = []
    ours_replayed: list[int] = []

    def replay() -> float:
        app = bank_app(env=peer_env(last_db[0], cache=0))
        try:
            opened = [a for a in accounts if not a.startswith("acct-unknown")]
            seconds = timed(lambda: replayed.append(app.replay(opened)))
        finally:
            app.close()
        return rate(replayed[-1], seconds)

    def ours_replay() -> float:
        events_per_second, events = _replay_ours(ours_log)
        ours_replayed.append(events)
        return events_per_second

    progress(f"{PEER}: every account replayed vs ours")
    mine_replay, theirs_replay = interleaved(scale.runs, ours_replay, replay)
    # Both decided the same commands alike: the same events to replay.
    assert replayed[-1] == ours_replayed[-1] == accepted[-1], (replayed, ours_replayed, accepted)
    peer = f"{PEER} {version}, SQLite (WAL, synchronous={sync})"
    return [
        Figure(
            "peer: commands end to end vs eventsourcing",
            "commands/s",
            ours_commands,
            "higher",
            baseline_name=f"{peer}, {n:,} commands of the same workload, durable",
            baseline_runs=tuple(theirs),
            ratio_target=100.0,
        ),
        Figure(
            "peer: replay (events read and applied) vs eventsourcing",
            "events/s",
            tuple(mine_replay),
            "higher",
            baseline_name=f"{peer}, every account rebuilt, no cache",
            baseline_runs=tuple(theirs_replay),
        ),
    ]
