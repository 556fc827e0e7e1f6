"""The connection pool: bounded, timed out, health-checked, and guarded by a circuit breaker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pytest

from queries import (
    CircuitOpen,
    ConnectionPool,
    PoolExhausted,
    QueryError,
    QueryRefused,
    QueryTimeout,
    check_read_only,
)

LONG_QUERY = "SELECT count(*) FROM range(10000000000)"  # minutes of work, unless interrupted


class Clock:
    """A clock the test moves by hand, for the breaker."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Database:
    """Cursors of one in-memory database, broken (closed) on demand; counts what it opened."""

    def __init__(self) -> None:
        self.db = duckdb.connect()
        self.broken = False
        self.opened = 0

    def cursor(self) -> duckdb.DuckDBPyConnection:
        self.opened += 1
        con = self.db.cursor()
        if self.broken:
            con.close()  # every query on it raises duckdb.ConnectionException
        return con


@pytest.fixture
def database() -> Iterator[Database]:
    database = Database()
    yield database
    database.db.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_pool(database: Database, clock: Clock) -> Iterator[Callable[..., ConnectionPool]]:
    pools: list[ConnectionPool] = []

    def make(**options: Any) -> ConnectionPool:
        pool = ConnectionPool(database.cursor, clock=clock, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll until `condition` holds; fails the test if it never does."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.002)


def answer(pool: ConnectionPool) -> int:
    [(value,)] = pool.run(lambda con: con.execute("SELECT 42").fetchall())
    return int(value)


# -- lending ---------------------------------------------------------------------


def test_runs_queries_and_reuses_one_connection(make_pool: Callable[..., ConnectionPool]) -> None:
    pool = make_pool(size=3)
    assert pool.stats().created == 0  # connections are opened lazily
    table = pool.execute("SELECT range AS i FROM range(?)", [3])
    assert table.column("i").to_pylist() == [0, 1, 2]
    assert [answer(pool) for _ in range(5)] == [42] * 5
    stats = pool.stats()
    assert (stats.size, stats.created, stats.in_use, stats.waiting) == (3, 1, 0, 0)


def test_threads_never_hold_more_connections_than_the_size(tmp_path: Path) -> None:
    db = duckdb.connect(str(tmp_path / "views.duckdb"))
    db.execute(
        "CREATE TABLE balances AS SELECT range AS account, range % 7 AS balance FROM range(1000)"
    )
    pool = ConnectionPool(db.cursor, size=2)
    lock = threading.Lock()
    active = 0
    most_active = 0
    connections: set[int] = set()

    def query(con: duckdb.DuckDBPyConnection) -> int:
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
            connections.add(id(con))
        assert pool.stats().in_use <= 2
        [(total,)] = con.execute("SELECT sum(balance) FROM balances").fetchall()
        with lock:
            active -= 1
        return int(total)

    with ThreadPoolExecutor(8) as threads:
        totals = list(threads.map(lambda _: pool.run(query), range(40)))
    assert totals == [sum(i % 7 for i in range(1000))] * 40
    assert most_active <= 2 and len(connections) <= 2
    stats = pool.stats()
    assert stats.created <= 2 and stats.in_use == 0 and stats.waiting == 0
    pool.close()
    db.close()


def test_exhausted_when_every_connection_stays_busy(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(size=1, acquire_timeout=0.05)
    with pool.connection(), pytest.raises(PoolExhausted) as exhausted:
        answer(pool)
    assert "0.05 s" in str(exhausted.value) and "all 1 connections" in str(exhausted.value)
    assert answer(pool) == 42  # free again once returned
    assert pool.stats().waiting == 0


def test_a_waiting_caller_gets_the_returned_connection(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(size=1)
    with ThreadPoolExecutor(1) as threads:
        with pool.connection():
            waiter = threads.submit(answer, pool)
            wait_until(lambda: pool.stats().waiting == 1)
        assert waiter.result() == 42
    assert pool.stats().created == 1


# -- query timeout -----------------------------------------------------------------


def test_a_long_query_is_interrupted_and_its_connection_serves_on(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(query_timeout=0.2)
    used: list[duckdb.DuckDBPyConnection] = []

    def query(sql: str) -> Callable[[duckdb.DuckDBPyConnection], object]:
        def run(con: duckdb.DuckDBPyConnection) -> object:
            used.append(con)
            return con.execute(sql).fetchall()

        return run

    with pytest.raises(QueryTimeout, match=r"longer than 0\.2 s and was interrupted"):
        pool.run(query(LONG_QUERY))
    assert pool.run(query("SELECT 42")) == [(42,)]
    assert used[0] is used[1]  # the interrupted connection was kept, not replaced
    stats = pool.stats()
    assert (stats.created, stats.breaker, stats.failures) == (1, "closed", 0)


def test_an_interrupt_not_from_the_timeout_is_not_a_timeout(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()

    timers: list[threading.Timer] = []

    def interrupted(con: duckdb.DuckDBPyConnection) -> object:
        timers.append(threading.Timer(0.1, con.interrupt))
        timers[0].start()
        return con.execute(LONG_QUERY).fetchall()

    with pytest.raises(duckdb.InterruptException):
        pool.run(interrupted)
    timers[0].join()
    assert answer(pool) == 42


# -- health ----------------------------------------------------------------------


def test_a_connection_whose_query_failed_and_fails_its_check_is_replaced(
    make_pool: Callable[..., ConnectionPool], database: Database
) -> None:
    pool = make_pool()
    with pytest.raises(ValueError), pool.connection() as con:
        first = con
        con.close()  # SELECT 1 fails when it comes back
        raise ValueError("the query failed; was it the connection?")
    assert (pool.stats().created, pool.stats().failures) == (0, 1)
    assert pool.run(lambda con: con is not first and con.execute("SELECT 1").fetchall())
    assert database.opened == 2


def test_a_connection_that_raised_a_database_error_is_closed(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()
    with pytest.raises(duckdb.FatalException), pool.connection() as con:
        raise duckdb.FatalException("simulated: database invalidated")
    with pytest.raises(duckdb.ConnectionException):
        con.execute("SELECT 1")
    assert answer(pool) == 42
    assert pool.stats().failures == 0  # the success after it resets the count


def test_a_failing_factory_counts_and_frees_its_slot() -> None:
    def factory() -> duckdb.DuckDBPyConnection:
        raise duckdb.IOException("simulated: cannot open the database file")

    pool = ConnectionPool(factory, size=1, failure_threshold=2)
    for _ in range(2):
        with pytest.raises(duckdb.IOException):
            answer(pool)
        assert (pool.stats().created, pool.stats().in_use) == (0, 0)
    assert pool.stats().breaker == "open"
    with pytest.raises(CircuitOpen, match="IOException: simulated"):
        answer(pool)
    pool.close()


# -- circuit breaker ----------------------------------------------------------------


def test_the_breaker_opens_stays_open_half_opens_and_closes(
    make_pool: Callable[..., ConnectionPool], database: Database, clock: Clock
) -> None:
    pool = make_pool(failure_threshold=3, reset_after=10.0)
    database.broken = True
    for failures in (1, 2, 3):
        with pytest.raises(duckdb.ConnectionException):
            answer(pool)
        assert pool.stats().failures == failures
    assert pool.stats().breaker == "open"

    # open: refused at once, without touching the database
    clock.now += 9.5
    with pytest.raises(CircuitOpen, match=r"3 consecutive database failures.* again in 0\.5 s"):
        answer(pool)
    assert database.opened == 3

    # half-open: one trial goes through; it fails, so the breaker opens again
    clock.now += 0.5
    with pytest.raises(duckdb.ConnectionException):
        answer(pool)
    assert (database.opened, pool.stats().breaker) == (4, "open")
    with pytest.raises(CircuitOpen, match=r"again in 10\.0 s"):
        answer(pool)

    # half-open again: the trial succeeds and closes it; nobody else gets in meanwhile
    clock.now += 10
    database.broken = False

    def trial(con: duckdb.DuckDBPyConnection) -> str:
        with pytest.raises(CircuitOpen, match="half-open"):
            answer(pool)
        return pool.stats().breaker

    assert pool.run(trial) == "half-open"
    stats = pool.stats()
    assert (stats.breaker, stats.failures) == ("closed", 0)
    assert answer(pool) == 42


def test_errors_of_the_query_do_not_trip_the_breaker(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(failure_threshold=2, query_timeout=0.2)

    def refused(con: duckdb.DuckDBPyConnection) -> object:
        return con.execute(check_read_only("DROP TABLE events").sql()).fetchall()

    mistakes: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: pool.execute("SELEC 1"), duckdb.ParserException),
        (lambda: pool.execute("SELECT * FROM missing"), duckdb.CatalogException),
        (lambda: pool.execute("SELECT nope FROM range(1)"), duckdb.BinderException),
        (lambda: pool.execute("SELECT 'a'::INTEGER"), duckdb.ConversionException),
        (lambda: pool.run(refused), QueryRefused),
        (lambda: pool.execute(LONG_QUERY), QueryTimeout),
    ]
    for mistake, error in mistakes:
        with pytest.raises(error):
            mistake()
    stats = pool.stats()
    assert (stats.breaker, stats.failures, stats.created) == ("closed", 0, 1)


# -- closing ---------------------------------------------------------------------


def test_close_closes_connections_and_is_idempotent(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool()
    idle = pool.run(lambda con: con)
    pool.close()
    pool.close()
    with pytest.raises(duckdb.ConnectionException):
        idle.execute("SELECT 1")
    with pytest.raises(QueryError, match="closed"):
        answer(pool)
    assert pool.stats().created == 0


def test_close_waits_for_lent_connections_and_wakes_waiters(
    make_pool: Callable[..., ConnectionPool],
) -> None:
    pool = make_pool(size=1)
    with ThreadPoolExecutor(1) as threads, pool.connection() as lent:
        waiter = threads.submit(answer, pool)
        wait_until(lambda: pool.stats().waiting == 1)
        pool.close()
        with pytest.raises(QueryError, match="closed") as woken:
            waiter.result()
        assert not isinstance(woken.value, PoolExhausted)
        assert lent.execute("SELECT 1").fetchall() == [(1,)]  # still lent: still open
    with pytest.raises(duckdb.ConnectionException):
        lent.execute("SELECT 1")
    assert pool.stats().created == 0
