"""Query serving is read-only: the parser check refuses writes and file access, harden() too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from queries import FORBIDDEN_FUNCTIONS, TABLE_FUNCTIONS, QueryRefused, check_read_only, harden

EVENTS = pa.table(
    {
        "aggregate_id": ["a", "a", "b", "c"],
        "version": [1, 2, 1, 1],
        "event_type": ["Opened", "Deposited", "Deposited", "Deposited"],
        "owner": ["ann", None, None, None],
        "note": ["", "read_csv", "x.csv", "DROP TABLE events"],
        "amount": [None, 10, 20, 5],
    }
)


@contextmanager
def serving() -> Iterator[duckdb.DuckDBPyConnection]:
    """The shape the product serves: the log as `events`, one view per event type."""
    con = duckdb.connect()
    con.register("events", EVENTS)
    con.execute(
        "CREATE TEMP VIEW Deposited AS "
        "SELECT aggregate_id, version, amount, note FROM events WHERE event_type = 'Deposited'"
    )
    try:
        yield con
    finally:
        con.close()


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    with serving() as con:
        yield con


# -- refused -------------------------------------------------------------------

STATEMENTS = [
    ("DROP TABLE events", "DROP TABLE is not allowed"),
    ("drop view Deposited", "DROP VIEW is not allowed"),
    ("CREATE TABLE t AS SELECT * FROM events", "CREATE TABLE"),
    ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "CREATE VIEW"),
    ("CREATE MACRO m() AS 1", "CREATE MACRO"),
    ("CREATE SEQUENCE s", "CREATE SEQUENCE"),
    ("ALTER TABLE events RENAME TO e", "ALTER TABLE"),
    ("INSERT INTO events VALUES (1)", "INSERT"),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT"),
    ("UPDATE events SET amount = 0", "UPDATE"),
    ("DELETE FROM events", "DELETE"),
    ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "MERGE"),
    ("TRUNCATE events", "TRUNCATE"),
    ("COPY events TO 'out.csv'", "COPY"),
    ("COPY (SELECT * FROM events) TO 'out.parquet' (FORMAT parquet)", "COPY"),
    ("COPY events FROM 'in.csv'", "COPY"),
    ("ATTACH 'other.duckdb' AS other", "ATTACH"),
    ("DETACH other", "DETACH"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("RESET threads", "RESET threads"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD httpfs"),
    ("CALL pragma_version()", "CALL pragma_version()"),
    ("EXPORT DATABASE 'dump'", "EXPORT DATABASE 'dump'"),
    ("IMPORT DATABASE 'dump'", "IMPORT DATABASE 'dump'"),
    ("VACUUM", "VACUUM"),
    ("CHECKPOINT", "CHECKPOINT"),
    ("FORCE CHECKPOINT", "FORCE CHECKPOINT"),
    ("BEGIN TRANSACTION", "BEGIN"),
    ("COMMIT", "COMMIT"),
    ("ROLLBACK", "ROLLBACK"),
    ("ABORT", "ABORT"),
    ("USE memory", "USE"),
    ("DESCRIBE events", "DESCRIBE"),
    ("SUMMARIZE events", "SUMMARIZE"),
    ("SHOW TABLES", "SHOW"),
    ("EXPLAIN SELECT * FROM events", "EXPLAIN SELECT"),
    ("PIVOT events ON event_type", "PIVOT"),
    ("SELECT 1 INTO t", "SELECT INTO"),
    ("SELECT 1; SELECT 2", "2 statements"),
    ("SELECT * FROM events; DROP TABLE events", "2 statements"),
    ("", "no statement"),
    (" ; ", "no statement"),
    ("SELEC 1", "could not parse"),
    ("SELECT 'unterminated", "could not parse"),
]

# DuckDB's file and network readers (and query runners): each must be refused by name.
READERS = [
    "read_csv",
    "read_csv_auto",
    "read_parquet",
    "parquet_scan",
    "parquet_metadata",
    "read_json",
    "read_json_auto",
    "read_json_objects",
    "read_ndjson",
    "read_ndjson_auto",
    "read_ndjson_objects",
    "read_text",
    "read_blob",
    "read_duckdb",
    "glob",
    "sniff_csv",
    "iceberg_scan",
    "delta_scan",
    "sqlite_scan",
    "postgres_scan",
    "mysql_scan",
    "query",
    "query_table",
]

FILE_ACCESS = [
    *((f"SELECT * FROM {name}('x')", f"{name}()") for name in READERS),
    ("SELECT * FROM READ_CSV_AUTO('x.csv')", "read_csv_auto()"),
    ("SELECT * FROM \"read_csv\"('x.csv')", "read_csv()"),
    ("SELECT * FROM system.main.read_csv('x.csv')", "read_csv()"),
    ("SELECT * FROM read_csv('x.csv') AS t(a, b)", "read_csv()"),
    ("SELECT * FROM events, LATERAL read_csv(events.note)", "read_csv()"),
    ("SELECT * FROM events JOIN read_parquet('x.parquet') USING (aggregate_id)", "read_parquet()"),
    ("SELECT read_text('x')", "read_text()"),
    ("SELECT * FROM events WHERE note IN (SELECT * FROM read_json('x.json'))", "read_json()"),
    ("WITH f AS (SELECT * FROM read_text('/etc/passwd')) SELECT * FROM f", "read_text()"),
    ("SELECT 1 UNION ALL SELECT count(*) FROM glob('*')", "glob()"),
    ("SELECT * FROM 'x.csv'", "'x.csv'"),
    ("FROM 'events.parquet'", "'events.parquet'"),
    ('SELECT * FROM "x.csv"', "'x.csv'"),
    ("SELECT * FROM x.csv", "'x.csv'"),
    ("SELECT * FROM main.data.json.gz", "'main.data.json.gz'"),
    ("SELECT * FROM 'https://example.com/e.csv'", "'https://example.com/e.csv'"),
    ("SELECT * FROM 's3://bucket/*.parquet'", "'s3://bucket/*.parquet'"),
    ("SELECT * FROM '/var/data/events'", "'/var/data/events'"),
    ("SELECT * FROM events JOIN 'other.parquet' USING (aggregate_id)", "'other.parquet'"),
    ("SELECT * FROM (FROM 'x.csv')", "'x.csv'"),
    ("SELECT * FROM duckdb_settings()", "duckdb_settings()"),
    ("SELECT * FROM duckdb_secrets()", "duckdb_secrets()"),
    ("SELECT * FROM arrow_scan(1, 2, 3)", "arrow_scan()"),
    ("SELECT nextval('seq')", "nextval() changes database state"),
    ("SELECT 'seq'.nextval()", "nextval()"),
    ("SELECT setval('seq', 1)", "setval()"),
    ("SELECT setseed(0.5)", "setseed()"),
    ("SELECT getenv('HOME')", "getenv() reveals"),
    ("SELECT current_setting('secret_directory')", "current_setting()"),
]


@pytest.mark.parametrize(("sql", "named"), STATEMENTS + FILE_ACCESS)
def test_refuses_and_names_what(sql: str, named: str) -> None:
    with pytest.raises(QueryRefused, match=r"^refused: ") as refused:
        check_read_only(sql)
    assert named in str(refused.value)


def test_refusing_a_statement_says_why() -> None:
    with pytest.raises(QueryRefused) as refused:
        check_read_only("DROP TABLE events")
    assert str(refused.value) == (
        "refused: DROP TABLE is not allowed, query serving is read-only (SELECT only)"
    )


def test_every_table_function_of_duckdb_outside_the_allowed_few_is_refused(
    con: duckdb.DuckDBPyConnection,
) -> None:
    names = [
        name
        for (name,) in con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE function_type IN ('table', 'table_macro')"
        ).fetchall()
    ]
    allowed = [name for name in names if name in TABLE_FUNCTIONS]
    assert allowed and len(names) > 50  # the list is DuckDB's own, and not empty
    for name in set(names) - TABLE_FUNCTIONS:
        with pytest.raises(QueryRefused, match=re.escape(f"{name}()")):
            check_read_only(f"SELECT * FROM events, {name}('x', 1)")


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(FORBIDDEN_FUNCTIONS)),
    upper=st.booleans(),
    place=st.sampled_from(
        [
            "SELECT * FROM {f}('x')",
            "SELECT {f}('x') AS v",
            "WITH c AS (SELECT * FROM {f}('x')) SELECT * FROM c",
            "SELECT * FROM events WHERE note IN (SELECT * FROM {f}('x'))",
            "SELECT note FROM events UNION ALL SELECT * FROM {f}('x')",
            "SELECT count(*) FILTER (WHERE {f}('x') IS NULL) FROM events",
        ]
    ),
)
def test_a_forbidden_function_is_refused_wherever_it_is_called(
    name: str, upper: bool, place: str
) -> None:
    with pytest.raises(QueryRefused, match=re.escape(f"{name}()")):
        check_read_only(place.format(f=name.upper() if upper else name))


# -- allowed -------------------------------------------------------------------

ALLOWED = [
    "SELECT * FROM events",
    "select sum(amount) from Deposited",
    "SELECT event_type, count(*) AS n FROM events GROUP BY event_type HAVING count(*) > 0 "
    "ORDER BY n DESC LIMIT 10",
    "WITH d AS (SELECT aggregate_id, amount FROM Deposited) "
    "SELECT aggregate_id, sum(amount) FROM d GROUP BY ALL",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT * FROM n",
    "SELECT aggregate_id, sum(amount) OVER (PARTITION BY aggregate_id ORDER BY version) FROM Deposited",
    "SELECT * FROM events WHERE aggregate_id IN (SELECT aggregate_id FROM Deposited WHERE amount > 5)",
    "SELECT * FROM events e WHERE EXISTS (SELECT 1 FROM Deposited d WHERE d.aggregate_id = e.aggregate_id)",
    "SELECT aggregate_id FROM Deposited UNION SELECT aggregate_id FROM events",
    "SELECT aggregate_id FROM events EXCEPT SELECT aggregate_id FROM Deposited",
    "SELECT aggregate_id FROM events INTERSECT SELECT aggregate_id FROM Deposited",
    "FROM events SELECT event_type",
    "FROM Deposited",
    "(SELECT 1)",
    "SELECT 1;",
    "SELECT * FROM events WHERE owner = 'read_csv'",
    "SELECT * FROM events WHERE note LIKE '%read_parquet(%' OR note = 'x.csv'",
    "SELECT 'DROP TABLE events' AS s, 's3://bucket/x.parquet' AS url, 'getenv' AS f",
    'SELECT note AS "query", note AS read_csv FROM events',
    "SELECT e.amount FROM main.events AS e",
    'SELECT * FROM "Deposited"',
    "SELECT * FROM range(3) AS r, generate_series(1, 2) AS g",
    "SELECT unnest([1, 2, 3]) AS i",
    "SELECT * FROM unnest([1, 2, 3])",
    "SELECT * FROM json_each('{\"a\": 1}')",
    "SELECT list_transform([1, 2], lambda x: x + 1), upper(note), strftime(now(), '%Y') FROM events",
    "SELECT * FROM (PIVOT Deposited ON aggregate_id USING sum(amount))",
    "SELECT aggregate_id, amount, row_number() OVER w FROM Deposited WINDOW w AS (ORDER BY amount)",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allows_read_only_queries_and_they_run(sql: str, con: duckdb.DuckDBPyConnection) -> None:
    statement = check_read_only(sql)
    assert isinstance(statement, exp.Query)
    con.execute(sql).fetchall()


@settings(max_examples=60, deadline=None)
@given(
    literal=st.one_of(
        st.sampled_from([*FORBIDDEN_FUNCTIONS, "x.csv", "DROP TABLE events", "s3://b/*", "';"]),
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    ),
    table=st.sampled_from(["events", "Deposited"]),
    shape=st.sampled_from(
        [
            "SELECT count(*) FROM {t} WHERE note = {v}",
            "SELECT {v} AS v, note FROM {t}",
            "WITH c AS (SELECT note FROM {t} WHERE note <> {v}) SELECT count(*) FROM c",
            "SELECT note FROM {t} WHERE note IN (SELECT {v}) UNION ALL SELECT {v}",
            "FROM {t} SELECT aggregate_id, count(*) FILTER (WHERE note LIKE {v}) GROUP BY ALL",
        ]
    ),
)
def test_what_a_string_literal_says_does_not_matter(literal: str, table: str, shape: str) -> None:
    sql = shape.format(t=table, v="'" + literal.replace("'", "''") + "'")
    check_read_only(sql)
    with serving() as con:
        con.execute(sql).fetchall()


# -- harden ----------------------------------------------------------------------


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    return path


def test_harden_stops_file_access_on_the_connection(
    con: duckdb.DuckDBPyConnection, csv: Path, tmp_path: Path
) -> None:
    assert con.execute(f"SELECT * FROM read_csv('{csv}')").fetchall() == [(1, 2)]
    harden(con)
    refused = [
        f"SELECT * FROM read_csv('{csv}')",
        f"SELECT * FROM '{csv}'",
        f"SELECT * FROM glob('{tmp_path}/*')",
        f"COPY (SELECT * FROM events) TO '{tmp_path / 'out.csv'}'",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        f"EXPORT DATABASE '{tmp_path / 'dump'}'",
        "SELECT * FROM 'https://example.com/x.csv'",
    ]
    for sql in refused:
        with pytest.raises(duckdb.PermissionException):
            con.execute(sql)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]  # nothing was written


def test_harden_keeps_registered_arrow_tables_working(con: duckdb.DuckDBPyConnection) -> None:
    harden(con)
    assert con.execute("SELECT sum(amount) FROM Deposited").fetchall() == [(35,)]
    con.register("later", pa.table({"x": [1, 2]}))  # registering after harden works too
    assert con.execute("SELECT sum(x) FROM later").fetchall() == [(3,)]


def test_harden_stops_scans_of_python_variables() -> None:
    secret = pa.table({"x": [42]})  # DuckDB finds a caller's variable by its name...
    assert duckdb.connect().execute("SELECT * FROM secret").fetchall() == [(42,)]
    con = duckdb.connect()
    harden(con)
    with pytest.raises(duckdb.CatalogException):  # ...unless hardened
        con.execute("SELECT * FROM secret")
    assert secret.num_rows == 1


def test_harden_locks_the_configuration_and_is_idempotent(con: duckdb.DuckDBPyConnection) -> None:
    harden(con)
    harden(con)
    for sql in ["SET enable_external_access = true", "RESET lock_configuration"]:
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            con.execute(sql)


def test_harden_refuses_a_configuration_locked_open(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("SET lock_configuration = true")
    with pytest.raises(RuntimeError, match="already locked"):
        harden(con)


def test_harden_covers_the_whole_database_file_and_its_writer(tmp_path: Path, csv: Path) -> None:
    db = duckdb.connect(str(tmp_path / "views.duckdb"))
    db.execute("CREATE TABLE balances AS SELECT 'a' AS account, 10 AS balance")
    reader = db.cursor()
    harden(reader)
    db.execute("INSERT INTO balances VALUES ('b', 20)")  # the writer still writes its file
    db.execute("CHECKPOINT")
    assert reader.execute("SELECT sum(balance) FROM balances").fetchall() == [(30,)]
    for con in (db, db.cursor()):  # the settings are global: every cursor is hardened
        with pytest.raises(duckdb.PermissionException):
            con.execute(f"SELECT * FROM read_csv('{csv}')")
    db.close()
