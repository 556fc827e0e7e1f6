"""Materialized views: which definitions are accepted, and that incremental maintenance
in any micro-batches, across crashes and rebuilds, equals the definition over the log."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from view_data import assert_views_match_log, bank_events, open_views, rows, write_log

from flows.bank import VIEWS, layout
from queries import (
    ProjectionsBusy,
    PythonProjection,
    View,
    ViewDefinitionError,
    event_tables,
    parse_view,
)
from store import ArrowLog

TABLES = set(event_tables(layout(), "x"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT aggregate_id FROM nowhere", "no event table 'nowhere'"),
        ("SELECT a.aggregate_id FROM events a JOIN Deposited d USING (position)", "JOIN"),
        (
            "SELECT aggregate_id AS a, count(DISTINCT amount) AS n FROM Deposited GROUP BY 1",
            "COUNT(DISTINCT",
        ),
        (
            "SELECT aggregate_id AS a, sum(amount) AS s FROM Deposited GROUP BY aggregate_id "
            "HAVING sum(amount) > 3",
            "HAVING",
        ),
        ("SELECT aggregate_id FROM Deposited LIMIT 3", "LIMIT"),
        ("SELECT aggregate_id FROM Deposited ORDER BY amount", "ORDER BY"),
        ("SELECT aggregate_id, random() AS r FROM Deposited", "volatile"),
        ("SELECT aggregate_id, now() AS t FROM Deposited", "volatile"),
        (
            "SELECT aggregate_id, row_number() OVER (ORDER BY position) AS n FROM Deposited",
            "window",
        ),
        ("SELECT * FROM Deposited", "list the view's columns"),
        ("SELECT amount + 1 FROM Deposited", "needs a name"),
        ("SELECT aggregate_id AS a, amount AS b FROM Deposited GROUP BY aggregate_id", "'b'"),
        (
            "SELECT aggregate_id AS a, sum(amount) / count(*) AS m FROM Deposited GROUP BY 1",
            "declare the parts as columns",
        ),
        ("SELECT sum(amount) AS total FROM Deposited", "needs keys"),
        ("SELECT DISTINCT aggregate_id FROM Deposited", "DISTINCT ON"),
        (
            "SELECT DISTINCT ON (aggregate_id) aggregate_id, amount FROM Deposited",
            "ORDER BY aggregate_id",
        ),
        ("SELECT x FROM (SELECT amount AS x FROM Deposited)", "FROM"),
        ("DELETE FROM Deposited", "one SELECT"),
        ("SELEC aggregate_id FROM Deposited", "SQL"),
        ("SELECT amount AS __sum_x FROM Deposited", "__"),
    ],
)
def test_a_definition_that_cannot_be_maintained_is_refused_naming_the_part(
    sql: str, reason: str
) -> None:
    with pytest.raises(ViewDefinitionError) as refused:
        parse_view("v", sql, TABLES)
    assert reason in str(refused.value) and "view 'v'" in str(refused.value)


def test_the_maintainable_forms_are_understood() -> None:
    rows_view = parse_view(
        "r", "SELECT aggregate_id, amount FROM Deposited WHERE amount > 5", TABLES
    )
    assert rows_view.kind == "rows" and rows_view.where is not None
    grouped = parse_view(
        "g",
        "SELECT sum(amount) AS s, aggregate_id AS a, avg(amount) AS m FROM events GROUP BY ALL",
        TABLES,
    )
    assert [k.name for k in grouped.keys] == ["a"]
    assert [(a.name, a.func) for a in grouped.aggregations] == [("s", "sum"), ("m", "avg")]
    assert grouped.names == ("s", "a", "m")
    latest = parse_view(
        "l",
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type FROM events "
        "ORDER BY aggregate_id, version DESC",
        TABLES,
    )
    assert [(a.func, a.keep_nulls) for a in latest.aggregations] == [("arg_max", True)]


EXTRA_VIEWS = (
    View("deposits", "SELECT aggregate_id, version, amount FROM Deposited WHERE amount >= 500"),
    View(
        "latest_event",
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type, amount FROM events "
        "ORDER BY aggregate_id, version DESC",
    ),
    View(
        "first_withdrawal",
        "SELECT aggregate_id AS account, arg_min(amount, version) AS first_amount, "
        "arg_max(amount, version) AS last_amount, count(amount) AS n FROM Withdrawn "
        "GROUP BY aggregate_id",
    ),
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**16),
    chunks=st.lists(st.integers(1, 400), min_size=1, max_size=6),
    crash_after=st.integers(0, 5),
)
def test_any_micro_batches_and_any_resume_point_give_the_definition_over_the_log(
    tmp_path_factory: pytest.TempPathFactory, seed: int, chunks: list[int], crash_after: int
) -> None:
    data = tmp_path_factory.mktemp("views")
    events = bank_events(seed, accounts=25, events=sum(chunks))
    write_log(data, events)
    projections, reader = open_views(data, VIEWS + EXTRA_VIEWS)
    for i, size in enumerate(chunks):
        if i == crash_after:
            # As after a crash: a new process resumes from the committed checkpoints.
            projections.close()
            projections, reader = open_views(data, VIEWS + EXTRA_VIEWS)
        projections.catch_up(reader, max_events=size)
    projections.catch_up(reader)
    assert_views_match_log(projections, reader)
    projections.close()


def test_new_events_are_applied_where_the_checkpoint_left_off(tmp_path: Path) -> None:
    events = bank_events(7, accounts=40, events=3000)
    write_log(tmp_path, events[:1000])
    projections, reader = open_views(tmp_path)
    projections.catch_up(reader)
    with ArrowLog.open(tmp_path, layout()) as log:
        log.append(events[1000:])
    lag = projections.lag(reader)
    assert {v.events for v in lag.values()} == {2000} and all(v.seconds > 0 for v in lag.values())
    assert projections.catch_up(reader) == 2000 * len(VIEWS)
    assert projections.lag(reader)["balances"].events == 0
    assert_views_match_log(projections, reader)


def test_a_replayed_batch_is_skipped_not_applied_twice(tmp_path: Path) -> None:
    write_log(tmp_path, bank_events(3, accounts=10, events=500), partitions=1)
    projections, reader = open_views(tmp_path)
    projections.catch_up(reader)
    batch = pa.Table.from_batches(list(reader.read_all()))
    assert projections.apply({0: batch}) == 0
    assert_views_match_log(projections, reader)


def test_a_python_projection_writes_its_own_tables_in_the_same_transaction(
    tmp_path: Path,
) -> None:
    def count_types(
        con: duckdb.DuckDBPyConnection, events: pa.Table, tables: dict[str, str]
    ) -> None:
        con.execute(
            f"INSERT INTO {tables['type_counts']} SELECT event_type::VARCHAR, count(*) "
            "FROM __cqrsflow_batch GROUP BY 1 "
            "ON CONFLICT (event_type) DO UPDATE SET n = n + excluded.n"
        )

    projection = PythonProjection(
        "counts", {"type_counts": "event_type VARCHAR PRIMARY KEY, n BIGINT"}, count_types
    )
    write_log(tmp_path, bank_events(5, accounts=30, events=2000))
    projections, reader = open_views(tmp_path, (projection,))
    projections.catch_up(reader, max_events=300)
    found = rows(projections.con, "SELECT * FROM type_counts")
    scan = duckdb.connect()
    from queries import register_log

    register_log(scan, reader)
    assert found == rows(scan, "SELECT event_type, count(*) FROM events GROUP BY 1")


def test_a_rebuild_is_built_beside_and_swapped_in(tmp_path: Path) -> None:
    events = bank_events(11, accounts=50, events=4000)
    write_log(tmp_path, events[:3000])
    projections, reader = open_views(tmp_path)
    projections.catch_up(reader)
    building = projections.rebuild("balances")
    assert building == "balances@2" and projections.building() == ["balances@2"]
    # The live version keeps serving while the new one is built in small steps.
    with ArrowLog.open(tmp_path, layout()) as log:
        log.append(events[3000:])
    projections.catch_up(reader, max_events=500)
    assert projections.building() == [] and "balances@2" in projections.checkpoints()
    assert "balances@1" not in projections.checkpoints()
    tables = rows(
        projections.con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'cqrsflow'"
    )
    assert ("balances@1",) not in tables and ("balances@2",) in tables
    assert_views_match_log(projections, reader)


def test_a_changed_definition_keeps_the_old_version_live_until_the_new_one_caught_up(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, bank_events(13, accounts=20, events=1500))
    old = View("totals", "SELECT event_type, count(*) AS n FROM events GROUP BY event_type")
    projections, reader = open_views(tmp_path, (old,))
    projections.catch_up(reader)
    projections.close()
    new = View(
        "totals",
        "SELECT event_type, count(*) AS n, sum(amount) AS total FROM events GROUP BY event_type",
    )
    projections, reader = open_views(tmp_path, (new,))
    assert projections.building() == ["totals@2"]
    assert [d[0] for d in projections.con.execute("SELECT * FROM totals").description] == [
        "event_type",
        "n",
    ]
    projections.catch_up(reader)
    assert projections.building() == []
    assert_views_match_log(projections, reader)


def test_a_view_grouped_on_a_null_key_fails_with_the_fix(tmp_path: Path) -> None:
    write_log(tmp_path, bank_events(1, accounts=5, events=50))
    view = View("by_owner", "SELECT owner, count(*) AS n FROM events GROUP BY owner")
    projections, reader = open_views(tmp_path, (view,))
    with pytest.raises(ViewDefinitionError, match="coalesce"):
        projections.catch_up(reader)
    assert projections.checkpoints()["by_owner@1"] == {0: 0, 1: 0, 2: 0}


def test_a_second_process_is_told_who_holds_the_projections(tmp_path: Path) -> None:
    write_log(tmp_path, bank_events(1, accounts=5, events=50))
    projections, _ = open_views(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from pathlib import Path
        from view_data import open_views
        from queries import ProjectionsBusy
        try:
            open_views(Path({str(tmp_path)!r}))
        except ProjectionsBusy as err:
            print(err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "projections.duckdb is in use by another process" in done.stdout
    assert ProjectionsBusy.__name__ == "ProjectionsBusy"
    projections.close()


def test_projections_commands_list_and_rebuild(tmp_path: Path) -> None:
    write_log(tmp_path, bank_events(17, accounts=30, events=2000))

    def cqrsflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", "projections", *args, "--data", str(tmp_path), "--app", "bank"],
            capture_output=True, text=True, check=False, cwd=ROOT, timeout=120,
        )  # fmt: skip

    listed = cqrsflow("list")
    assert listed.returncode == 0, listed.stderr
    # a first open creates the views empty: the list shows them all behind
    assert "balances" in listed.stdout and "2,000" in listed.stdout
    rebuilt = cqrsflow("rebuild", "balances")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt balances from 2,000 events" in rebuilt.stdout
    projections, reader = open_views(tmp_path)
    assert {lag.events for lag in projections.lag(reader).values()} == {0}
    assert {"balances@2", "daily_totals@1"} <= set(projections.checkpoints())
    projections.close()
    unknown = cqrsflow("rebuild", "nope")
    assert unknown.returncode == 1 and "no view 'nope'" in unknown.stderr
