"""Shared pieces of the view and query tests: a bank log written straight to the store,
and the check that a view equals its definition evaluated over the whole log."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb

from flows.bank import VIEWS, AccountClosed, AccountOpened, Deposited, Withdrawn, layout
from queries import Projections, View, register_log
from store import ArrowLog, LogConfig, LogReader, NewEvent

DAY_US = 86_400 * 10**6
START_US = 1_790_000_000 * 10**6


def bank_events(seed: int, accounts: int, events: int, first: int = 0) -> list[NewEvent]:
    """A reproducible stream of bank events over `accounts`, spread over several days.
    `first` continues a stream that already wrote that many events with this seed."""
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    out: list[NewEvent] = []
    for i in range(first + events):
        account = f"acct-{rng.randrange(accounts):04d}"
        version = versions.get(account, 0) + 1
        versions[account] = version
        if version == 1:
            payload: Any = AccountOpened(f"owner {account}", rng.choice([0, 100]))
        elif rng.random() < 0.02:
            payload = AccountClosed()
        elif rng.random() < 0.6:
            payload = Deposited(rng.randrange(1, 1000))
        else:
            payload = Withdrawn(rng.randrange(1, 500))
        ts = START_US + i * (DAY_US // 997)
        if i >= first:
            out.append(NewEvent(account, version, payload, i.to_bytes(16, "big"), f"c{i}", ts))
    return out


def write_log(data: Path, events: list[NewEvent], partitions: int = 3) -> None:
    config = LogConfig(partitions=partitions, segment_bytes=64 * 1024)
    with ArrowLog.open(data, layout(), config) as log:
        for i in range(0, len(events), 97):
            log.append(events[i : i + 97])


def open_views(data: Path, views: tuple[Any, ...] = VIEWS) -> tuple[Projections, LogReader]:
    reader = LogReader.open(data)
    return Projections.open(data, views, layout(), reader=reader), reader


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    """Sorted rows, floats rounded: sums of floats may differ in the last bits by order."""
    found = con.execute(sql).fetchall()
    return sorted(
        (tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in found),
        key=repr,
    )


def assert_views_match_log(projections: Projections, reader: LogReader) -> None:
    """Every live SQL view holds what its definition gives over the whole log."""
    reader.refresh()
    scan = duckdb.connect()
    register_log(scan, reader)
    for view in projections.views:
        assert isinstance(view, View)
        expected = rows(scan, view.sql)
        assert rows(projections.con, f'SELECT * FROM "{view.name}"') == expected, view.name
