"""A bounded pool of DuckDB connections that serves concurrent read queries.

The pool opens at most `size` connections, lazily, from a factory (typically cursors of one
database: ``ConnectionPool(lambda: db.cursor())``). `run` and `execute` bound each query
with `query_timeout`, interrupting it from a watchdog thread; `connection` lends a
connection without that limit. A connection whose query failed is checked with
``SELECT 1`` when it comes back, and closed and replaced if the check or the query failed
in a way that blames the database.

A circuit breaker stops the pool from hammering a broken database. A failure is one of:
the factory raising; a query raising `duckdb.ConnectionException`, `FatalException`,
`InternalException` or `IOException`; a returned connection failing ``SELECT 1``. Any other
outcome shows that the database answered, and resets the count: errors in the SQL (parser,
binder, catalog, conversion), out-of-memory and permission errors, `QueryRefused`, and
timeouts, which are the query's own doing (one slow dashboard must not close the pool for
everyone). After `failure_threshold` consecutive failures the breaker opens and every call
raises `CircuitOpen` at once; `reset_after` seconds later it half-opens and lets one trial
call through, whose success closes it and whose failure opens it again.

>>> import duckdb
>>> db = duckdb.connect()
>>> pool = ConnectionPool(db.cursor, size=2)
>>> pool.execute("SELECT 40 + ? AS answer", [2]).to_pylist()
[{'answer': 42}]
>>> pool.stats()
PoolStats(size=2, created=1, in_use=0, waiting=0, breaker='closed', failures=0)
>>> pool.close()
>>> db.close()
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import duckdb
import pyarrow as pa

from queries._errors import CircuitOpen, PoolExhausted, QueryError, QueryTimeout

T = TypeVar("T")

BreakerState = Literal["closed", "open", "half-open"]

# The errors that blame the database rather than the query: the connection is closed or
# invalidated, DuckDB failed internally or fatally, or the storage failed.
_DATABASE_ERRORS = (
    duckdb.ConnectionException,
    duckdb.FatalException,
    duckdb.InternalException,
    duckdb.IOException,
)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the pool, for metrics."""

    size: int  # the most connections the pool opens
    created: int  # connections open now, idle or in use
    in_use: int
    waiting: int  # callers waiting for a connection to come free
    breaker: BreakerState
    failures: int  # consecutive database failures


class ConnectionPool:
    """At most `size` DuckDB connections, shared by threads; see the module docstring."""

    def __init__(
        self,
        factory: Callable[[], duckdb.DuckDBPyConnection],
        *,
        size: int = 4,
        acquire_timeout: float = 5.0,
        query_timeout: float = 30.0,
        failure_threshold: int = 5,
        reset_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._size = size
        self._acquire_timeout = acquire_timeout
        self._query_timeout = query_timeout
        self._failure_threshold = failure_threshold
        self._reset_after = reset_after
        self._clock = clock  # drives the breaker only; waits for a connection use real time
        self._cond = threading.Condition()
        self._idle: list[duckdb.DuckDBPyConnection] = []
        self._created = 0
        self._in_use = 0
        self._waiting = 0
        self._closed = False
        self._state: BreakerState = "closed"
        self._failures = 0
        self._last_failure = ""
        self._opened_at = 0.0
        self._trial_running = False
        self._watchdog = _Watchdog()

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Lend a connection for the block, with no query timeout (`run` has one)."""
        con, trial = self._acquire()
        error: BaseException | None = None
        try:
            yield con
        except BaseException as e:
            error = e
            raise
        finally:
            self._release(con, trial, error)

    def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``fn(connection)``, interrupted with `QueryTimeout` after `query_timeout` seconds."""
        # `connection()` spelled out: this is every query's path, and a generator-based
        # context manager costs more than the rest of the pool's work.
        con, trial = self._acquire()
        error: BaseException | None = None
        watch = self._watchdog.watch(con, self._query_timeout)
        try:
            return fn(con)
        except duckdb.InterruptException as e:
            error = e
            if watch.fired:
                raise QueryTimeout(
                    f"query ran longer than {self._query_timeout} s and was interrupted; "
                    "narrow it (filters, LIMIT, fewer joins) or raise query_timeout"
                ) from e
            raise
        except BaseException as e:
            error = e
            raise
        finally:
            self._watchdog.stop(watch)
            self._release(con, trial, error)

    def execute(self, sql: str, params: Sequence[object] | None = None) -> pa.Table:
        """The result of one query as an Arrow table, under `query_timeout`.

        Runs `sql` as given: check user SQL with `check_read_only` first.
        """
        return self.run(lambda con: con.sql(sql, params=params).to_arrow_table())

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(
                size=self._size,
                created=self._created,
                in_use=self._in_use,
                waiting=self._waiting,
                breaker=self._state,
                failures=self._failures,
            )

    def close(self) -> None:
        """Close the idle connections now, and the lent ones as they come back; idempotent."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._created -= len(idle)
            self._cond.notify_all()  # waiters find the pool closed
        for con in idle:
            con.close()

    def _acquire(self) -> tuple[duckdb.DuckDBPyConnection, bool]:
        """A connection, and whether this call is the half-open breaker's trial."""
        with self._cond:
            self._check_open()
            trial = self._admit()
            try:
                con = self._take()
            except BaseException:
                if trial:  # the trial never reached the database: let the next call make it
                    self._trial_running = False
                raise
        if con is not None:
            return con, trial
        try:
            # outside the lock: opening a connection can be slow
            return self._factory(), trial
        except BaseException as e:
            with self._cond:
                self._created -= 1
                self._in_use -= 1
                self._record(e, trial)
                self._cond.notify()
            raise

    def _take(self) -> duckdb.DuckDBPyConnection | None:
        """An idle connection, or None for a free slot to open one in; holds the lock."""
        if not self._idle and self._created >= self._size:
            self._waiting += 1
            try:
                free = self._cond.wait_for(
                    lambda: self._closed or self._idle or self._created < self._size,
                    self._acquire_timeout,
                )
            finally:
                self._waiting -= 1
            self._check_open()
            if not free:
                raise PoolExhausted(
                    f"no connection came free within {self._acquire_timeout} s: all {self._size} "
                    "connections of the pool are busy; retry later, make queries cheaper, or "
                    "raise the pool's size or acquire_timeout"
                )
        self._in_use += 1
        if self._idle:
            return self._idle.pop()
        self._created += 1
        return None

    def _release(
        self, con: duckdb.DuckDBPyConnection, trial: bool, error: BaseException | None
    ) -> None:
        # A query that succeeded proves the connection; one that failed for its own
        # reasons (bad SQL, a timeout) may have left it broken: check it.
        if isinstance(error, _DATABASE_ERRORS):
            failure: BaseException | None = error
        else:
            failure = None if error is None else _health_check(con)
        with self._cond:
            self._in_use -= 1
            keep = failure is None and not self._closed
            if keep:
                self._idle.append(con)
            else:
                self._created -= 1
            self._record(failure, trial)
            self._cond.notify()
        if not keep:
            with contextlib.suppress(duckdb.Error):  # a broken connection may fail to close
                con.close()

    def _check_open(self) -> None:
        if self._closed:
            raise QueryError("the connection pool is closed; open a new one")

    def _admit(self) -> bool:
        """Let a call through the breaker, or raise `CircuitOpen`; True for the trial call."""
        if self._state == "open":
            retry_in = self._opened_at + self._reset_after - self._clock()
            if retry_in > 0:
                raise CircuitOpen(
                    f"circuit breaker open after {self._failures} consecutive database failures "
                    f"(last: {self._last_failure}); the pool tries the database again in "
                    f"{retry_in:.1f} s"
                )
            self._state = "half-open"
        if self._state == "half-open":
            if self._trial_running:
                raise CircuitOpen(
                    "circuit breaker half-open: one trial query is checking the database; "
                    "retry in a moment"
                )
            self._trial_running = True
            return True
        return False

    def _record(self, failure: BaseException | None, trial: bool) -> None:
        """Count a call's outcome towards the breaker; holds the lock."""
        if trial:
            self._trial_running = False
        if failure is None:
            self._failures = 0
            if trial:
                self._state = "closed"
            return
        self._failures += 1
        self._last_failure = f"{type(failure).__name__}: {failure}"
        if trial or (self._state == "closed" and self._failures >= self._failure_threshold):
            self._state = "open"
            self._opened_at = self._clock()


class _Watch:
    """One query's deadline; `fired` tells whether it was interrupted."""

    __slots__ = ("con", "deadline", "fired", "stopped")

    def __init__(self, con: duckdb.DuckDBPyConnection, deadline: float) -> None:
        self.con = con
        self.deadline = deadline
        self.fired = False
        self.stopped = False


class _Watchdog:
    """One thread that interrupts queries past their deadline.

    A thread per query (`threading.Timer`) costs more to start than a point lookup
    takes; here a query registers its deadline under a lock. `stop` and the interrupt
    take turns under that lock, so an interrupt lands before `stop` returns or never:
    never on a later query of whoever gets the connection next.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None
        self._wake = float("inf")  # when the thread wakes next

    def watch(self, con: duckdb.DuckDBPyConnection, timeout: float) -> _Watch:
        w = _Watch(con, time.monotonic() + timeout)
        with self._cond:
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cqrsflow-query-watchdog", daemon=True
                )
                self._thread.start()
            # Waking the thread for every query would cost a context switch each; it
            # only needs waking when this deadline comes before its next wake.
            if w.deadline < self._wake:
                self._cond.notify()
        return w

    def stop(self, w: _Watch) -> None:
        with self._cond:
            w.stopped = True
            self._watches.discard(w)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for w in [w for w in self._watches if w.deadline <= now]:
                    self._watches.discard(w)
                    w.fired = True
                    with contextlib.suppress(duckdb.ConnectionException):  # closed already
                        w.con.interrupt()
                self._wake = min((w.deadline for w in self._watches), default=now + 60.0)
                self._cond.wait(max(self._wake - now, 0.001))


def _health_check(con: duckdb.DuckDBPyConnection) -> duckdb.Error | None:
    """None if `con` still answers ``SELECT 1``, else the error it raised."""
    try:
        con.execute("SELECT 1").fetchall()
    except duckdb.Error as e:
        return e
    return None
