"""The decide step of one shard, on a real log: results, durability, idempotency, cache."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from flows import Aggregate, Command, Shard, ShardConfig
from flows.bank import ACCOUNT, CloseAccount, Deposit, Deposited, OpenAccount, Withdraw
from store import ArrowLog, Journal, LogConfig, LogReader, SnapshotStore, stream_key

ticks = itertools.count(1_700_000_000_000_000)


def shard(path: Path, config: ShardConfig | None = None, aggregate: Any = ACCOUNT) -> Shard:
    log = ArrowLog.open(path, aggregate.layout(), LogConfig(partitions=1))
    return Shard(
        aggregate,
        log,
        0,
        SnapshotStore(path / "snapshots"),
        config or ShardConfig(),
        ticks.__next__,
        decisions=Journal(path / "decisions"),
    )


def cmd(command_id: str, agg: str, payload: Any, expected_version: int | None = None) -> Command:
    return Command(command_id, agg, payload, expected_version, None)


def test_a_batch_is_decided_in_order_and_made_durable(tmp_path: Path) -> None:
    s = shard(tmp_path)
    results = s.handle(
        [
            cmd("c1", "a", OpenAccount("ann")),
            cmd("c2", "a", Deposit(50)),
            cmd("c3", "a", Withdraw(80)),  # overdraws: rejected, state unchanged
            cmd("c4", "a", Withdraw(50)),
            cmd("c5", "b", Deposit(5)),  # not open
        ]
    )
    assert [r.status for r in results] == [
        "accepted",
        "accepted",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert [r.version for r in results] == [1, 2, None, 3, None]
    assert [r.position for r in results] == ["0:0", "0:1", None, "0:2", None]
    assert results[0].events == ["AccountOpened"]
    assert "insufficient funds: balance 50" in (results[2].reason or "")
    assert results[4].reason == "the account is not open"
    s.close()
    reader = LogReader.open(tmp_path, ACCOUNT.layout())
    logged = reader.decode(reader.read_stream("a"))
    assert [e.command_id for e in logged] == ["c1", "c2", "c4"]
    assert ACCOUNT.fold(e.payload for e in logged).balance == 0


def test_expected_version_is_honoured(tmp_path: Path) -> None:
    s = shard(tmp_path)
    s.handle([cmd("c1", "a", OpenAccount("ann"))])
    [stale, fresh] = s.handle(
        [cmd("c2", "a", Deposit(1), expected_version=0), cmd("c3", "a", Deposit(1), 1)]
    )
    assert stale.status == "rejected"
    assert stale.reason == "expected version 0, but a is at version 1"
    assert (fresh.status, fresh.version) == ("accepted", 2)


def test_a_command_sent_again_gets_the_same_result_and_appends_nothing(tmp_path: Path) -> None:
    s = shard(tmp_path)
    first = s.handle([cmd("c1", "a", OpenAccount("ann")), cmd("c2", "a", Deposit(7))])
    again = s.handle([cmd("c2", "a", Deposit(7)), cmd("c2", "a", Deposit(7))])
    assert again == [first[1], first[1]]
    twice_in_one_batch = s.handle([cmd("c3", "a", Deposit(1)), cmd("c3", "a", Deposit(1))])
    assert twice_in_one_batch[0] == twice_in_one_batch[1]
    assert s.watermark == 3
    s.close()
    # a new shard (a restarted flow) remembers too: it rehydrates from the log
    s = shard(tmp_path)
    assert s.handle([cmd("c2", "a", Deposit(7))]) == [first[1]]
    assert s.watermark == 3


def test_a_rejected_command_sent_again_is_rejected_again_even_once_it_would_pass(
    tmp_path: Path,
) -> None:
    s = shard(tmp_path, ShardConfig(remembered=3))
    [_, overdrawn] = s.handle([cmd("c1", "a", OpenAccount("ann")), cmd("c2", "a", Withdraw(5))])
    assert overdrawn.status == "rejected"
    s.handle([cmd("c3", "a", Deposit(100))])  # now the withdrawal would pass
    assert s.handle([cmd("c2", "a", Withdraw(5))]) == [overdrawn]
    s.close()
    s = shard(tmp_path, ShardConfig(remembered=3))  # a restarted flow: from the journal
    assert s.handle([cmd("c2", "a", Withdraw(5))]) == [overdrawn]
    # A batch with no events keeps its rejections in the journal.
    s.handle([cmd(f"d{i}", "b", Deposit(1)) for i in range(7)])  # rejected: not open
    # Memory is bounded: two generations of `remembered` commands, the journal's too.
    assert len(list((tmp_path / "decisions").glob("*.journal"))) == 2
    assert s.handle([cmd("c2", "a", Withdraw(5))])[0].status == "accepted"  # forgotten
    s.handle([cmd("o", "b", OpenAccount("bob"))])  # now the deposits would pass
    s.close()
    s = shard(tmp_path, ShardConfig(remembered=3))
    [again] = s.handle([cmd("d6", "b", Deposit(1))])
    assert (again.status, again.reason) == ("rejected", "the account is not open")
    s.close()


def test_evicted_and_restarted_aggregates_come_back_from_snapshot_and_log(tmp_path: Path) -> None:
    config = ShardConfig(cache_size=2, snapshot_every=5)
    s = shard(tmp_path, config)
    accounts = [f"acct-{i}" for i in range(5)]
    s.handle([cmd(f"open-{a}", a, OpenAccount(a)) for a in accounts])
    for n in range(12):
        s.handle([cmd(f"dep-{a}-{n}", a, Deposit(n + 1)) for a in accounts])
    assert s.evictions > 0 and s.rehydrations > 0
    assert list((tmp_path / "snapshots").rglob("*.snap")), "expected snapshots"
    [result] = s.handle([cmd("w", "acct-3", Withdraw(sum(range(1, 13)) + 1))])
    assert result.reason == "insufficient funds: balance 78, overdraft limit 0, withdrawal 79"
    s.close()
    s = shard(tmp_path, config)
    [result] = s.handle([cmd("w2", "acct-3", Withdraw(78))])
    assert (result.status, result.version) == ("accepted", 14)


def test_a_decider_that_raises_rejects_that_command_only(tmp_path: Path) -> None:
    def decide(command: Any, state: Any) -> Any:
        if command.amount == 13:
            raise ValueError("unlucky")
        return [Deposited(command.amount)]

    counter = Aggregate(
        name="Account",
        initial=ACCOUNT.initial,
        decide=decide,
        evolve=ACCOUNT.evolve,
        commands=(Deposit,),
        events=ACCOUNT.events,
    )
    s = shard(tmp_path, aggregate=counter)
    results = s.handle(
        [cmd("c1", "a", Deposit(5)), cmd("c2", "a", Deposit(13)), cmd("c3", "a", Deposit(6))]
    )
    assert [r.status for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1].reason == "the decider raised ValueError: unlucky"
    assert [r.version for r in results] == [1, None, 2]
    assert s.watermark == 2


def test_closing_needs_a_zero_balance(tmp_path: Path) -> None:
    s = shard(tmp_path)
    results = s.handle(
        [
            cmd("o", "a", OpenAccount("ann")),
            cmd("d", "a", Deposit(5)),
            cmd("c1", "a", CloseAccount()),
            cmd("w", "a", Withdraw(5)),
            cmd("c2", "a", CloseAccount()),
            cmd("d2", "a", Deposit(5)),
        ]
    )
    assert [r.status for r in results] == [
        "accepted",
        "accepted",
        "rejected",
        "accepted",
        "accepted",
        "rejected",
    ]
    assert results[5].reason == "the account is closed"


@pytest.mark.parametrize("policy", ["lru", "lfu", "arc"])
def test_a_cache_smaller_than_a_batch_decides_every_command_right(
    tmp_path: Path, policy: Any
) -> None:
    # Making room for the batch's cold aggregates evicts others of the same batch: the
    # batch must still see each aggregate's state, and the next batches too.
    s = shard(tmp_path, ShardConfig(cache_size=3, cache_policy=policy))
    accounts = [f"acct-{i}" for i in range(10)]
    s.handle([cmd(f"open-{a}", a, OpenAccount(a)) for a in accounts])
    for n in range(3):
        results = s.handle([cmd(f"dep-{a}-{n}", a, Deposit(10)) for a in accounts])
        assert {r.version for r in results} == {n + 2}
    results = s.handle([cmd(f"w-{a}", a, Withdraw(31)) for a in accounts])
    assert {r.reason for r in results} == {
        "insufficient funds: balance 30, overdraft limit 0, withdrawal 31"
    }
    assert len(s._cache) <= 3 and s.evictions > 0


def test_warming_loads_the_busiest_aggregates_of_recent_history(tmp_path: Path) -> None:
    s = shard(tmp_path)
    busy, quiet = ["busy-1", "busy-2"], [f"quiet-{i}" for i in range(20)]
    s.handle([cmd(f"open-{a}", a, OpenAccount(a)) for a in busy + quiet])
    for n in range(10):
        s.handle([cmd(f"dep-{a}-{n}", a, Deposit(1)) for a in busy])
    s.close()
    warmed = shard(tmp_path, ShardConfig(warm=2))
    assert warmed.warm() == 2
    assert set(warmed._cache.keys()) == {stream_key("Account", a) for a in busy}  # by stream
    before = warmed.rehydrations
    [result] = warmed.handle([cmd("w", "busy-1", Withdraw(10))])
    assert (result.status, result.version) == ("accepted", 12)
    assert warmed.rehydrations == before  # found in the cache, not read from the log


def test_a_restarted_shard_knows_commands_whose_events_a_snapshot_covers(tmp_path: Path) -> None:
    """After a crash the input can bring again commands from before the shard's
    checkpoint; their aggregate comes back from a snapshot taken after them, so only the
    partition's recent history can tell they were handled."""
    config = ShardConfig(snapshot_every=2)
    s = shard(tmp_path, config)
    first = s.handle([cmd("c1", "a", OpenAccount("ann")), cmd("c2", "a", Deposit(7))])
    s.handle([cmd("c3", "a", Deposit(1))])
    s.close()
    s = shard(tmp_path, config)
    assert s.handle([cmd("c2", "a", Deposit(7))]) == [first[1]]
    assert s.watermark == 3
    s.close()
