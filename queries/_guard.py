"""Keep query serving read-only: refuse every statement but one query, before DuckDB sees it.

Two independent layers, so that a gap in one is covered by the other:

`check_read_only` parses the SQL with sqlglot and accepts exactly one query (SELECT, WITH ...
SELECT, UNION/INTERSECT/EXCEPT, FROM-first) that neither writes, nor changes settings, nor
reaches outside the database. DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, VALUES and PIVOT
*statements* are refused too: they read, but they are not queries, and EXPLAIN ANALYZE runs
its query; ``SELECT * FROM (PIVOT ...)`` is a query and allowed.

`harden` makes a DuckDB database unable to touch files or the network at all, whatever SQL
reaches it. It cannot stop writes to the database itself: that is `check_read_only`'s job.

>>> check_read_only("SELECT owner FROM events WHERE owner = 'read_csv'").key
'select'
>>> check_read_only("DROP TABLE events")
Traceback (most recent call last):
...
queries._errors.QueryRefused: refused: DROP TABLE is not allowed, query serving is read-only (SELECT only)
"""

from __future__ import annotations

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from queries._errors import QueryRefused

_DIALECT = "duckdb"

_READ_ONLY = "query serving is read-only (SELECT only)"

# Statement types that must not appear anywhere, not even nested (a DML in a CTE, say).
# Unknown statements parse as `exp.Command`, so whatever sqlglot does not know is refused.
_STATEMENTS: tuple[type[exp.Expr], ...] = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.TruncateTable,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Copy,
    exp.Attach,
    exp.Detach,
    exp.Install,
    exp.Pragma,
    exp.Set,
    exp.Use,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Export,
    exp.Command,
)

_READS_FILES = "reads files or the network"
_RUNS_SQL = "runs SQL text that cannot be checked"
_WRITES = "changes database state"
_LEAKS = "reveals the server's environment or configuration"

# Functions refused wherever they appear, with why. File and network readers come from
# `duckdb_functions()` of DuckDB 2.0.1 plus the common extensions' (iceberg, delta, sqlite,
# postgres, mysql, excel, spatial, avro); `harden` stops the ones this list misses.
FORBIDDEN_FUNCTIONS: dict[str, str] = {
    **dict.fromkeys(
        [
            "read_csv",
            "read_csv_auto",
            "read_single_csv_file",
            "sniff_csv",
            "read_parquet",
            "parquet_scan",
            "read_single_parquet_file",
            "parquet_metadata",
            "parquet_file_metadata",
            "parquet_full_metadata",
            "parquet_kv_metadata",
            "parquet_schema",
            "parquet_page_index",
            "parquet_bloom_probe",
            "read_json",
            "read_json_auto",
            "read_json_objects",
            "read_json_objects_auto",
            "read_ndjson",
            "read_ndjson_auto",
            "read_ndjson_objects",
            "read_single_json_file",
            "read_text",
            "read_blob",
            "read_duckdb",
            "glob",
            "iceberg_scan",
            "iceberg_metadata",
            "iceberg_snapshots",
            "delta_scan",
            "sqlite_scan",
            "sqlite_attach",
            "postgres_scan",
            "postgres_scan_pushdown",
            "postgres_query",
            "postgres_execute",
            "postgres_attach",
            "mysql_scan",
            "mysql_query",
            "mysql_execute",
            "read_xlsx",
            "read_avro",
            "st_read",
            "st_read_meta",
        ],
        _READS_FILES,
    ),
    **dict.fromkeys(["query", "query_table", "json_execute_serialized_sql"], _RUNS_SQL),
    **dict.fromkeys(["nextval", "setval", "setseed", "write_log"], _WRITES),
    **dict.fromkeys(["getenv", "current_setting"], _LEAKS),
}

# The only functions allowed in FROM: they generate rows from their arguments. The other
# table functions read files, Python objects by address, or the catalog's internals.
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})

# DuckDB reads a table reference that is not in the catalog as a file when its name ends in
# one of these (``FROM 'x.csv'``, ``FROM "x.csv"`` and even ``FROM x.csv`` all read x.csv).
_FILE_EXTENSIONS = frozenset(
    {"csv", "tsv", "parquet", "json", "jsonl", "ndjson", "gz", "zst", "xlsx", "avro", "arrow"}
)
_PATH_CHARACTERS = frozenset("/\\:*?[]{}~")


def check_read_only(sql: str) -> exp.Query:
    """The parsed statement of `sql` if it is a single read-only query, else `QueryRefused`.

    The check is on the parsed tree, not on substrings: ``WHERE owner = 'read_csv'`` passes.
    """
    try:
        statements = [s for s in sqlglot.parse(sql, read=_DIALECT) if s is not None]
    except SqlglotError as e:
        raise QueryRefused(f"refused: could not parse: {_parse_error(e)}") from e
    if not statements:
        raise QueryRefused("refused: no statement to run")
    if len(statements) > 1:
        raise QueryRefused(
            f"refused: {len(statements)} statements, query serving runs exactly one (SELECT only)"
        )
    statement = statements[0]
    if not isinstance(statement, exp.Query):
        raise QueryRefused(
            f"refused: {_statement_name(statement, sql)} is not allowed, {_READ_ONLY}"
        )
    for node in statement.walk():
        _check_node(node)
    return statement


def harden(con: duckdb.DuckDBPyConnection) -> None:
    """Stop the database behind `con` from reading or writing files or the network.

    Sets ``enable_external_access = false`` (file and URL readers, ``FROM 'x.csv'``, COPY,
    EXPORT, ATTACH, INSTALL/LOAD, and scans of Python variables by name) and then
    ``lock_configuration = true``, so SQL cannot turn it back on.

    Both settings are global: they apply at once to every connection and cursor of the
    database, including the one that writes the views, which keeps writing its attached file
    but can no longer ATTACH, COPY or change a global setting. So attach and configure
    everything first, then harden. Arrow tables registered with ``con.register`` keep working,
    before and after. Calling it again is a no-op.
    """
    [(locked, external_access)] = con.execute(
        "SELECT current_setting('lock_configuration'), current_setting('enable_external_access')"
    ).fetchall()
    if locked and external_access:
        raise RuntimeError(
            "cannot harden: the configuration is already locked with external access enabled; "
            "call harden() before anything sets lock_configuration"
        )
    if not locked:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")


def _check_node(node: exp.Expr) -> None:
    if isinstance(node, _STATEMENTS):
        raise QueryRefused(
            f"refused: {node.key.upper()} inside a query is not allowed, {_READ_ONLY}"
        )
    if isinstance(node, exp.Select) and node.args.get("into"):
        raise QueryRefused(f"refused: SELECT INTO creates a table, {_READ_ONLY}")
    if isinstance(node, exp.Func):
        for name in _function_names(node):
            if name in FORBIDDEN_FUNCTIONS:
                raise QueryRefused(f"refused: function {name}() {FORBIDDEN_FUNCTIONS[name]}")
    if isinstance(node, exp.Table | exp.Lateral):
        source = node.this
        if isinstance(source, exp.Func):
            # A file reader in FROM is refused for what it does, before the general rule
            # (the walk reaches this table before the function inside it).
            for name in sorted(_function_names(source) & FORBIDDEN_FUNCTIONS.keys()):
                raise QueryRefused(f"refused: function {name}() {FORBIDDEN_FUNCTIONS[name]}")
            if not _function_names(source) & TABLE_FUNCTIONS:
                name = sorted(_function_names(source))[0]
                allowed = ", ".join(sorted(TABLE_FUNCTIONS))
                raise QueryRefused(
                    f"refused: table function {name}() is not allowed in FROM, only {allowed}"
                )
        elif isinstance(node, exp.Table) and _looks_like_file(node):
            raise QueryRefused(
                f"refused: FROM {_dotted(node)!r} names a file or URL, "
                "query serving reads only the database's tables and views"
            )


def _function_names(func: exp.Func) -> set[str]:
    """The lowercase names `func` may have been called by.

    sqlglot turns known functions into typed nodes (``range`` becomes GenerateSeries), which
    keep their canonical names only; unknown ones stay `exp.Anonymous` with the name as written.
    """
    if isinstance(func, exp.Anonymous):
        return {func.name.lower()}
    return {name.lower() for name in type(func).sql_names()}


def _looks_like_file(table: exp.Table) -> bool:
    name = _dotted(table)
    return bool(_PATH_CHARACTERS & set(name)) or (
        "." in name and name.rsplit(".", 1)[1].lower() in _FILE_EXTENSIONS
    )


def _dotted(table: exp.Table) -> str:
    # A string literal in FROM parses as a quoted identifier, so 'x.csv' arrives as one part.
    return ".".join(part.name for part in table.parts)


def _statement_name(statement: exp.Expr, sql: str) -> str:
    """What the user wrote: its first keyword, plus the object kind for CREATE/DROP/ALTER."""
    if isinstance(statement, exp.Command):
        # sqlglot keeps the keyword, and the rest of the statement as one string
        rest = statement.text("expression").split()
        return " ".join([statement.name.upper(), *rest[:1]])
    first = sqlglot.tokenize(sql, read=_DIALECT)[0].text.upper()
    if first in ("WITH", "("):
        return statement.key.upper()
    kind = statement.args.get("kind")
    if isinstance(statement, exp.Create | exp.Drop | exp.Alter) and isinstance(kind, str):
        return f"{first} {kind.upper()}"
    return first


def _parse_error(error: SqlglotError) -> str:
    # The first error, without the ANSI underline codes sqlglot puts in str(error).
    if isinstance(error, ParseError) and error.errors:
        e = error.errors[0]
        near = f"{e['start_context']}{e['highlight']}".strip()
        return f"{e['description']} at line {e['line']}, column {e['col']}: {near}"
    return str(error)
