"""`cqrsflow bench projections`: view maintenance against a hand-written DuckDB upsert.

The log is written once per invocation (writing it is `bench write`'s business, and it
would dominate the run); every run then applies the whole log to views in a new
projections database, as `catch_up` does after a restart with an empty database. The
baseline is what one would write by hand for the `balances` view: the same Arrow
batches, registered with DuckDB, aggregated and upserted in one statement each, one
transaction per batch, into a table with a primary key in a new DuckDB file.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from flows import bank
from flows._progress import Report
from flows.bench._harness import Figure, interleaved, rate, timed
from flows.bench._store import write_bank_log
from queries import Projections, View
from store import LogReader

# What `cqrsflow run` gives a new log, so each micro-batch is cut from four partitions.
PARTITIONS = 4


@dataclass(frozen=True, slots=True)
class ViewScale:
    events: int  # events in the log
    runs: int
    batch: int = 100_000  # `max_events` of a maintenance transaction
    rebuild_batch: int = 1_000_000  # what `catch_up` and `projections follow` default to

    @property
    def accounts(self) -> int:
        """Twenty events per account on average, like the other benchmarks' workloads."""
        return max(self.events // 20, 1)


# `small` takes about ten seconds at today's speed, which is at its lowest while a
# view has fewer rows than a batch has events: all of `small` (15,000 accounts).
VIEW_SCALES = {
    "small": ViewScale(300_000, 3),
    "medium": ViewScale(5_000_000, 5),
    "large": ViewScale(20_000_000, 5),
}

_RAW_TABLE = """
CREATE TABLE balances (
    account VARCHAR PRIMARY KEY, balance BIGINT, deposits BIGINT, withdrawals BIGINT,
    version BIGINT, updated_at TIMESTAMPTZ
)"""

_RAW_UPSERT = """
INSERT INTO balances
SELECT aggregate_id,
       sum(CASE event_type WHEN 'Deposited' THEN amount WHEN 'Withdrawn' THEN -amount ELSE 0 END),
       count(*) FILTER (WHERE event_type = 'Deposited'),
       count(*) FILTER (WHERE event_type = 'Withdrawn'),
       max(version), max(timestamp)
FROM batch GROUP BY aggregate_id
ON CONFLICT (account) DO UPDATE SET
    balance = balance + excluded.balance,
    deposits = deposits + excluded.deposits,
    withdrawals = withdrawals + excluded.withdrawals,
    version = greatest(version, excluded.version),
    updated_at = greatest(updated_at, excluded.updated_at)"""

# The same sums from either table: both sides applied every event, and alike.
_TOTALS = "SELECT count(*), sum(balance), sum(deposits), sum(withdrawals), max(version) FROM {}"


def micro_batches(reader: LogReader, max_events: int) -> list[pa.Table]:
    """The log cut as `catch_up(max_events=...)` cuts it: each micro-batch takes whole
    stored batches from every partition still behind, its share of `max_events` each."""
    end = reader.watermarks()
    start = dict.fromkeys(end, 0)
    tables = []
    while behind := [p for p in end if start[p] < end[p]]:
        share = max(1, max_events // len(behind))
        taken: list[pa.RecordBatch] = []
        for p in behind:
            rows = 0
            for batch in reader.partition(p).batches(start[p]):
                taken.append(batch)
                rows += batch.num_rows
                if rows >= share:
                    break
            start[p] += rows
        tables.append(pa.Table.from_batches(taken))
    return tables


def raw_upsert(batches: list[pa.Table], con: duckdb.DuckDBPyConnection) -> None:
    """The baseline: one hand-written upsert per batch, each in its own transaction."""
    for table in batches:
        con.begin()
        con.register("batch", table)
        con.execute(_RAW_UPSERT)
        con.commit()


def _totals(con: duckdb.DuckDBPyConnection, table: str) -> tuple[object, ...]:
    return tuple(con.execute(_TOTALS.format(table)).fetchall()[0])


def bench_projections(scale: ViewScale, workdir: Path, progress: Report) -> list[Figure]:
    directory = Path(tempfile.mkdtemp(dir=workdir))
    write_bank_log(directory, scale.events, scale.accounts, progress, partitions=PARTITIONS)
    reader = LogReader.open(directory)
    # Cutting the baseline's batches also reads every stored batch once: an open log
    # keeps them parsed, so neither side pays for the first read of the files.
    batches = micro_batches(reader, scale.batch)
    big_batches = micro_batches(reader, scale.rebuild_batch)
    assert sum(t.num_rows for t in batches) == scale.events, len(batches)
    expected: list[tuple[object, ...]] = []

    def check(con: duckdb.DuckDBPyConnection, table: str) -> None:
        found = _totals(con, table)
        if not expected:
            expected.append(found)
        assert found == expected[0], (found, expected[0])

    def ours(views: tuple[View, ...], max_events: int) -> Callable[[], float]:
        def run() -> float:
            # Only the path of the database matters: the log comes from `reader`.
            fresh = Path(tempfile.mkdtemp(dir=workdir))
            projections = Projections.open(fresh, views, bank.layout(), reader=reader)
            try:
                start = time.perf_counter()
                applied = projections.catch_up(reader, max_events=max_events)
                seconds = time.perf_counter() - start
                assert applied == scale.events * len(views), (applied, len(views))
                check(projections.con, projections.table("balances"))
                return rate(scale.events, seconds)
            finally:
                projections.close()

        return run

    def raw(batches: list[pa.Table]) -> Callable[[], float]:
        def run() -> float:
            con = duckdb.connect(str(Path(tempfile.mkdtemp(dir=workdir)) / "raw.duckdb"))
            try:
                con.execute(_RAW_TABLE)
                seconds = timed(lambda: raw_upsert(batches, con))
                check(con, "balances")
                return rate(scale.events, seconds)
            finally:
                con.close()

        return run

    every, balances = bank.VIEWS, bank.VIEWS[:1]
    progress(f"the balances view alone vs a raw DuckDB upsert, batches of {scale.batch:,}")
    alone, base = interleaved(scale.runs, ours(balances, scale.batch), raw(batches))
    progress(f"the balances view alone vs a raw DuckDB upsert, batches of {scale.rebuild_batch:,}")
    alone_big, base_big = interleaved(
        scale.runs, ours(balances, scale.rebuild_batch), raw(big_batches)
    )
    progress(f"all {len(every)} bank views, batches of {scale.batch:,}")
    all_views, _ = interleaved(scale.runs, ours(every, scale.batch))
    progress(f"all {len(every)} bank views, batches of {scale.rebuild_batch:,}")
    rebuilt, _ = interleaved(scale.runs, ours(every, scale.rebuild_batch))

    log = f"{scale.events:,} events over {scale.accounts:,} accounts"
    return [
        Figure(
            f"view maintenance, {len(every)} bank views ({log}), batches of {scale.batch:,}",
            "events/s",
            tuple(all_views),
            "higher",
            target=500_000,
        ),
        Figure(
            f"view maintenance, balances only, batches of {scale.batch:,}",
            "events/s",
            tuple(alone),
            "higher",
            target=500_000,
            baseline_name="raw DuckDB upsert of the same batches",
            baseline_runs=tuple(base),
            ratio_target=0.8,
        ),
        Figure(
            f"view maintenance, balances only, batches of {scale.rebuild_batch:,}",
            "events/s",
            tuple(alone_big),
            "higher",
            target=500_000,
            baseline_name="raw DuckDB upsert of the same batches",
            baseline_runs=tuple(base_big),
            ratio_target=0.8,
        ),
        # Under a backlog the follower reads up to this many events per transaction.
        Figure(
            f"view maintenance, {len(every)} bank views, batches of {scale.rebuild_batch:,}",
            "events/s",
            tuple(rebuilt),
            "higher",
            target=500_000,
        ),
    ]
