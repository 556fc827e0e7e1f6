"""Exploring a data directory from a notebook: the log, the views, and their history.

`open_data(DIR)` reads the event log without taking any lock, so it is safe beside a
running flow (call `refresh` to see what it appended since). From there:

- `log()` is the whole log as a polars LazyFrame and `relation()` a DuckDB relation,
  both over the memory-mapped Arrow data (no copy);
- `query(sql)` answers SQL through the planner: here, on views this process brings up
  to the log, or with ``connect="grpc://127.0.0.1:8815"`` from a running
  `cqrsflow serve`;
- `state(id, version=..., at=...)` and `history(id)` fold an aggregate's events;
- `view_as_of(view, positions)` computes a view over the log as it was at earlier
  positions, and `diff` compares two versions of a view.

`sample_data` and `run_commands` make a small bank data directory to try it on:

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp, open_data(sample_data(tmp, commands=300)) as data:
...     data.state("acct-0000001").status
'open'
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

import duckdb
import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from flows._app import App
from flows._domain import Aggregate
from flows._flow import new_results, results_written
from flows._load import load_app, recorded_app
from flows._workload import bank_commands, encoder
from flows.bank import ACCOUNT, APP, VIEWS
from queries import (
    Declared,
    FlightQueryClient,
    Projections,
    ProjectionsBusy,
    QueryLayer,
    View,
    event_tables,
    quote,
    register_log,
)
from store import DataDir as Paths
from store import Layout, LogReader, RecordedEvent, concat, latest_positions, to_polars

__all__ = ["DataDir", "bank_commands", "diff", "open_data", "run_commands", "sample_data"]

S = TypeVar("S")

SERVE_URL = "grpc://127.0.0.1:8815"  # where `cqrsflow serve` listens by default
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A moment in the log: a datetime (naive means UTC, as the log's timestamps are) or
# microseconds since the epoch, like the log's `timestamp` column.
Moment = datetime | int


def _micros(moment: Moment) -> int:
    if isinstance(moment, int):
        return moment
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def _positions(after: Mapping[int, int] | str | None) -> dict[int, int] | None:
    """`after` as {partition: position}; a string is a result's ``"2:1041"``."""
    if after is None or isinstance(after, Mapping):
        return None if after is None else dict(after)
    return latest_positions([after])


class DataDir(Generic[S]):
    """One data directory, opened for reading. Use `open_data` to make one.

    The log is only read. The views are another matter: DuckDB lets one process hold
    DIR/projections.duckdb, so a local `query` opens it (and keeps it, so that the plan
    and result caches carry over between cells) and fails with `ProjectionsBusy` while
    a flow or a server holds it. `close` lets go of it; the log stays readable.
    """

    def __init__(
        self, path: Path, app: App, aggregate: Aggregate[S], views: Sequence[Declared]
    ) -> None:
        self.path = path
        self.app = app
        self.aggregate = aggregate  # the one `state` and `history` fold by default
        self.views = tuple(views)
        # The application's layout: old events are read renamed, defaulted and upcast.
        self.layout = app.layout()
        self.reader = LogReader.open(path, self.layout)  # takes no lock: never writes
        self._con: duckdb.DuckDBPyConnection | None = None
        self._projections: Projections | None = None
        self._layer: QueryLayer | None = None
        self._clients: dict[tuple[str, str | None], FlightQueryClient] = {}

    # -- the log -------------------------------------------------------------------

    def refresh(self) -> None:
        """See the events appended since the directory was opened or last refreshed."""
        self.reader.refresh()

    def positions(self) -> dict[int, int]:
        """The log's next position per partition, as read now (see `refresh`)."""
        return self.reader.watermarks()

    def log(self) -> pl.LazyFrame:
        """Every event as a polars LazyFrame over the log's memory maps (no copy)."""
        return to_polars(self.reader)

    def relation(self, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyRelation:
        """Every event as a DuckDB relation, scanned in place; `con` (default: one of
        this object's) also gets the tables `events` and one per event type."""
        if con is None:
            if self._con is None:
                # Kept: a relation is only usable while its connection is open.
                self._con = duckdb.connect()
            con = self._con
        register_log(con, self.reader)
        return con.sql("SELECT * FROM events")

    # -- the views -----------------------------------------------------------------

    def query(
        self,
        sql: str,
        *,
        connect: str | None = None,
        token: str | None = None,
        explain: bool = False,
        after: Mapping[int, int] | str | None = None,
        timeout: float | None = None,
    ) -> pl.DataFrame:
        """The answer to `sql` over the event tables and the views, or with `explain`
        the planner's choice, its alternatives and why other views could not answer.

        With `connect` (such as ``grpc://127.0.0.1:8815``) a running `cqrsflow serve`
        answers; otherwise this process does, after applying the log as it is now to
        the views. `after` (a result's ``"2:1041"``, or {partition: position}) waits
        until the views include that event: read-your-writes.
        """
        positions = _positions(after)
        if connect is not None:
            client = self._clients.get((connect, token))
            if client is None:
                client = self._clients[(connect, token)] = FlightQueryClient(connect, token=token)
            table = client.query(sql, after=positions, explain=explain, timeout=timeout)
        else:
            layer = self.layer
            self.refresh()
            if self._projections is not None and self._projections.catch_up(self.reader):
                layer.applied()  # the views moved: cached answers are stale
            table = layer.run(sql, after=positions, explain=explain, timeout=timeout)
        frame = pl.from_arrow(table, rechunk=False)
        assert isinstance(frame, pl.DataFrame)
        return frame

    @property
    def layer(self) -> QueryLayer:
        """The local query layer (opening the views on first use): its caches, its
        planner (`layer.planner`), hit counts (`layer.result_hits`)."""
        if self._layer is None:
            try:
                projections = Projections.open(
                    self.path, self.views, self.layout, reader=self.reader
                )
            except ProjectionsBusy as busy:
                raise ProjectionsBusy(
                    f"{busy}\nFrom a notebook, ask a running `cqrsflow serve --data "
                    f'{self.path}` instead: query(sql, connect="{SERVE_URL}"). (A '
                    "`cqrsflow run` holds the views only until it ends.)"
                ) from None
            self._projections = projections
            self._layer = QueryLayer.open(projections, self.reader)
        return self._layer

    def view_as_of(
        self,
        view: str | View,
        positions: Mapping[int, int] | None = None,
        *,
        at: Moment | None = None,
    ) -> pl.DataFrame:
        """What `view` held when the log ended at `positions` (the next position per
        partition, as `positions()` gave then; a missing partition counts as empty)
        and/or at the moment `at`: its definition run over that part of the log.

        `view` is a view's name, a `View`, or the text of a SELECT over the event
        tables (another definition, to compare with the live one).
        """
        if isinstance(view, View):
            sql = view.sql
        else:
            named = _named(self.views, view)
            sql = view if named is None else named.sql
        until = None if at is None else _micros(at)
        log = _read_log(self.reader, self.layout, positions, until)
        con = duckdb.connect()
        try:
            con.register("__log_as_of", log)
            for name, select in event_tables(self.layout, "__log_as_of").items():
                con.execute(f"CREATE TEMP VIEW {quote(name)} AS {select}")
            frame = pl.from_arrow(con.sql(sql).to_arrow_table())
        finally:
            con.close()
        assert isinstance(frame, pl.DataFrame)
        return frame

    # -- aggregates ----------------------------------------------------------------

    def _aggregate(self, aggregate_type: str | None) -> Aggregate[Any]:
        return self.aggregate if aggregate_type is None else self.app.aggregate(aggregate_type)

    def events(self, aggregate_id: str, aggregate_type: str | None = None) -> list[RecordedEvent]:
        """One aggregate's events, in version order, read through the log's index
        (of `aggregate_type`, by default the directory's aggregate type)."""
        kind = self._aggregate(aggregate_type).name
        stream = self.reader.read_stream(aggregate_id, aggregate_type=kind)
        events = self.reader.decode(stream)
        if not events:
            raise KeyError(f"{aggregate_id!r}: no events in the log of {self.path}")
        return events

    def state(
        self,
        aggregate_id: str,
        *,
        version: int | None = None,
        at: Moment | None = None,
        aggregate_type: str | None = None,
    ) -> Any:
        """The aggregate's state at `version` and/or as of the moment `at` (a datetime
        or µs since the epoch); with neither, its state now."""
        aggregate = self._aggregate(aggregate_type)
        events = self.events(aggregate_id, aggregate.name)
        if version is not None and version > events[-1].version:
            raise ValueError(
                f"{aggregate_id!r} is at version {events[-1].version}; there is no {version}"
            )
        until = None if at is None else _micros(at)
        return aggregate.fold(
            e.payload
            for e in events
            if (version is None or e.version <= version) and (until is None or e.timestamp <= until)
        )

    def history(self, aggregate_id: str, aggregate_type: str | None = None) -> pl.DataFrame:
        """Each version of the aggregate: its event, when and where it was stored, and
        the state after it (a column per field of a dataclass or Struct state)."""
        aggregate = self._aggregate(aggregate_type)
        rows: list[dict[str, Any]] = []
        state = aggregate.initial
        for e in self.events(aggregate_id, aggregate.name):
            state = aggregate.evolve(state, e.payload)
            fields = msgspec.to_builtins(state)
            if not isinstance(fields, dict):
                fields = {"state": fields}
            row: dict[str, Any] = {
                "version": e.version,
                "event_type": e.event_type,
                "timestamp": _EPOCH + timedelta(microseconds=e.timestamp),
                "partition": e.partition,
                "position": e.position,
            }
            row.update({(f"state_{k}" if k in row else k): v for k, v in fields.items()})
            rows.append(row)
        return pl.DataFrame(rows)

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Let go of the views database and the Flight connections (the log stays
        readable; a later local `query` opens the views again)."""
        if self._layer is not None:
            self._layer.close()
            self._layer = None
        if self._projections is not None:
            self._projections.close()
            self._projections = None
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> DataDir[S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@overload
def open_data(path: str | Path) -> DataDir[Any]: ...
@overload
def open_data(
    path: str | Path, aggregate: Aggregate[S], views: Sequence[Declared] = ()
) -> DataDir[S]: ...
@overload
def open_data(path: str | Path, aggregate: App) -> DataDir[Any]: ...
def open_data(
    path: str | Path,
    aggregate: App | Aggregate[Any] | None = None,
    views: Sequence[Declared] = (),
) -> DataDir[Any]:
    """Open the data directory at `path` for reading: with an `App`, that application's
    (its views; `state`, `events` and `history` take an `aggregate_type`, the first
    aggregate type by default); with an `Aggregate` and `views`, that one's; with
    neither, the application the directory records (`cqrsflow run` wrote it), else
    the bank's."""
    path = Path(path)
    if aggregate is None:
        recorded = recorded_app(path)
        aggregate = APP if recorded is None else load_app(recorded.load)
    if isinstance(aggregate, App):
        return DataDir(path, aggregate, aggregate.aggregates[0], aggregate.views)
    return DataDir(path, App.of(aggregate), aggregate, views)


def _named(views: Sequence[Declared], name: str) -> View | None:
    """The SQL view called `name`, or None if `name` is no view's (so, SQL)."""
    found = next((v for v in views if v.name == name), None)
    if found is not None and not isinstance(found, View):
        raise TypeError(f"{name} is a Python projection: it has no SQL to run")
    return found


def _read_log(
    reader: LogReader, layout: Layout, positions: Mapping[int, int] | None, until: int | None
) -> pa.Table:
    """The log's events below `positions` (per partition) and at or before `until` (µs)."""
    batches: list[pa.RecordBatch] = []
    for p in range(reader.partitions):
        end = None if positions is None else positions.get(p, 0)
        for batch in reader.partition(p).batches(0):
            if end is not None and batch.num_rows:
                # Positions are gap-free and in order, so the cut is a slice.
                first = batch.column("position")[0].as_py()
                if first >= end:
                    break
                batch = batch.slice(0, end - first)
            if until is not None:
                moment = pa.scalar(until, batch.schema.field("timestamp").type)
                batch = batch.filter(pc.less_equal(batch.column("timestamp"), moment))
            batches.append(batch)
    table = concat(batches)
    return layout.read_schema.empty_table() if table is None else table


def diff(
    old: pa.Table | pl.DataFrame, new: pa.Table | pl.DataFrame, keys: Sequence[str]
) -> pl.DataFrame:
    """The rows that differ between two versions of a table, matched by `keys`.

    `change` says how: ``added`` (only in `new`), ``removed`` (only in `old`) or
    ``changed``; each other column ``c`` holds the new value and ``c_old`` the old.

    >>> old = pl.DataFrame({"account": ["a", "b", "c"], "balance": [1, 2, 3]})
    >>> new = pl.DataFrame({"account": ["b", "c", "d"], "balance": [2, 5, 4]})
    >>> diff(old, new, ["account"]).to_dicts()  # doctest: +NORMALIZE_WHITESPACE
    [{'change': 'added', 'account': 'd', 'balance': 4, 'balance_old': None},
     {'change': 'changed', 'account': 'c', 'balance': 5, 'balance_old': 3},
     {'change': 'removed', 'account': 'a', 'balance': None, 'balance_old': 1}]
    """
    before, after = (_frame(t) for t in (old, new))
    values = [c for c in after.columns if c not in keys]
    if sorted(before.columns) != sorted(after.columns):
        raise ValueError(f"different columns: {before.columns} and {after.columns}")
    joined = after.with_columns(__new=pl.lit(True)).join(
        before.with_columns(__old=pl.lit(True)),
        on=list(keys),
        how="full",
        coalesce=True,
        suffix="_old",
        nulls_equal=True,
    )
    differs = pl.any_horizontal(
        [pl.col(c).ne_missing(pl.col(f"{c}_old")) for c in values] or [pl.lit(False)]
    )
    change = (
        pl.when(pl.col("__old").is_null())
        .then(pl.lit("added"))
        .when(pl.col("__new").is_null())
        .then(pl.lit("removed"))
        .when(differs)
        .then(pl.lit("changed"))
    )
    columns = [*keys, *(c for v in values for c in (v, f"{v}_old"))]
    return (
        joined.with_columns(change=change)
        .filter(pl.col("change").is_not_null())
        .select("change", *columns)
        .sort("change", *keys)
    )


def _frame(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    if isinstance(table, pl.DataFrame):
        return table
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


# -- sample data ---------------------------------------------------------------------


def run_commands(
    data: str | Path, records: Iterable[dict[str, Any] | bytes], *, rate: float | None = None
) -> pl.DataFrame:
    """Send bank command records (dicts, or raw bytes as a malformed record would be)
    through the bank's command flow into `data` (created if new), at `rate` commands
    per second (None: as fast as it takes them).

    This writes the log and the results; the views follow in whichever process
    maintains them: a `cqrsflow serve`, or this one's next local `DataDir.query`.

    Returns their results (`command_id`, `status`, `aggregate_id`, `version`,
    `position`, `events`, `reason`) and `sent_at`, when each was written to the flow:
    the start of its command-to-event latency.
    """
    data = Path(data)
    before = results_written(data)
    encode = encoder("jsonl")
    chunk = 1000 if rate is None else max(1, int(rate / 100))  # paced: 100 writes a second
    sent: dict[str, int] = {}
    # The flow alone, under bytewax's runner: `cqrsflow run` would also start a view
    # follower, and in a notebook session the views are usually held already (by the
    # notebook's own query layer or by a server), which then apply the new events.
    argv = [sys.executable, "-m", "bytewax.run", "flows.bank:flow"]
    env = {**os.environ, "CQRSFLOW_COMMANDS": "-", "CQRSFLOW_DATA": str(data)}
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=output, env=env)
        assert child.stdin is not None
        started = time.perf_counter()
        written = 0
        pending = iter(records)
        while batch := list(islice(pending, chunk)):
            if rate is not None:
                time.sleep(max(0.0, started + written / rate - time.perf_counter()))
            now = time.time_ns() // 1000
            sent.update((r["command_id"], now) for r in batch if isinstance(r, dict))
            child.stdin.write(b"".join(map(encode, batch)))
            child.stdin.flush()
            written += len(batch)
        child.stdin.close()
        if child.wait() != 0:
            output.seek(0)
            raise RuntimeError(
                f"the command flow exited with {child.returncode}: {output.read().decode()}"
            )
    results = [msgspec.structs.asdict(r) for r in new_results(data, before)]
    frame = pl.DataFrame(
        results,
        schema={
            "command_id": pl.String,
            "status": pl.String,
            "aggregate_id": pl.String,
            "version": pl.Int64,
            "position": pl.String,
            "events": pl.List(pl.String),
            "reason": pl.String,
        },
    )
    return frame.with_columns(
        sent_at=pl.col("command_id")
        .replace_strict(sent, default=None, return_dtype=pl.Int64)
        .cast(pl.Datetime("us", "UTC"))
    )


def sample_data(
    directory: str | Path | None = None,
    *,
    commands: int = 20_000,
    accounts: int = 500,
    seed: int = 7,
    rate: float | None = None,
) -> Path:
    """A bank data directory to explore: `directory` if it already holds a log,
    otherwise made there (default: a new temporary directory) from `commands`
    generated commands over `accounts` accounts, sent at `rate` per second, with the
    views brought up to date."""
    path = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="cqrsflow-"))
    if not Paths(path).has_log():
        run_commands(path, bank_commands(commands, accounts, seed=seed), rate=rate)
        projections = Projections.open(path, VIEWS, ACCOUNT.layout())
        try:
            projections.catch_up(LogReader.open(path))
        finally:
            projections.close()
    return path
