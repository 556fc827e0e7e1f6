"""Query serving under abuse: statements it must refuse, queries that run too long,
clients that leave mid-stream, and a storm of concurrent queries.

The server is a real process (`reliability_server.py`: the bank's views over a real log,
the real `QueryLayer` with its guard and bounded pool, behind `FlightQueryServer`), with
a one-second query timeout so that a runaway query is cut short within the test. After
each abuse the test checks the server still answers, correctly, and that its pool, its
threads and its open files are back where they were: nothing leaked.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.flight as flight
import pytest
from view_data import bank_events, write_log

from queries import FlightQueryClient, PoolExhausted, QueryRefused, QueryTimeout, register_log
from store import LogReader

SERVER = Path(__file__).with_name("reliability_server.py")
ROOT = Path(__file__).resolve().parent.parent
START_GUARD_S = 120  # not a timing assertion: only so that a server that never starts fails
QUERY_TIMEOUT_S = 1.0
EVENTS = 30_000
# Minutes of work unless interrupted (DuckDB answers a bare count over a range at once).
RUNAWAY = "SELECT sum(hash(r.range * 7 + s.range)) FROM range(100000) r, range(100000) s"
CHECK = "SELECT count(*) AS n FROM events"


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, data: Path) -> None:
        self.proc = proc
        self.url = url
        self.data = data

    def client(self, timeout: float = 30.0) -> FlightQueryClient:
        return FlightQueryClient(self.url, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        with self.client() as c:
            [found] = c.query("-- stats").to_pylist()
        row: dict[str, Any] = found
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        row["os_threads"] = int(status.split("Threads:")[1].split()[0])
        row["fds"] = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        return row

    def answers(self) -> None:
        """Still serving, and right."""
        assert self.proc.poll() is None, "the server died"
        with self.client() as c:
            assert c.query(CHECK).to_pylist() == [{"n": EVENTS}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("serving") / "data"
    write_log(data, bank_events(5, accounts=300, events=EVENTS))
    stderr = data.parent / "server.err"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(data), str(QUERY_TIMEOUT_S)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_GUARD_S)
    url = proc.stdout.readline().decode().strip() if ready else ""
    if not url:
        proc.kill()
        pytest.fail(f"the server did not start:\n{stderr.read_text()}")
    try:
        yield Server(proc, url, data)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# -- refused ---------------------------------------------------------------------------

# Every form the read-only promise names, as a client would send it over the wire.
REFUSED = [
    ("CREATE TABLE t AS SELECT 1", "CREATE TABLE is not allowed"),
    ("DROP VIEW balances", "DROP VIEW is not allowed"),
    ("ALTER TABLE balances RENAME TO b", "ALTER TABLE is not allowed"),
    ("INSERT INTO balances VALUES ('x', 1)", "INSERT is not allowed"),
    ("UPDATE balances SET balance = 0", "UPDATE is not allowed"),
    ("DELETE FROM balances", "DELETE is not allowed"),
    ("TRUNCATE balances", "TRUNCATE is not allowed"),
    ("WITH x AS (DELETE FROM balances RETURNING *) SELECT * FROM x", "DELETE"),
    ("COPY balances TO '/tmp/out.csv'", "COPY is not allowed"),
    ("COPY balances FROM '/etc/passwd'", "COPY is not allowed"),
    ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH is not allowed"),
    ("PRAGMA enable_profiling", "PRAGMA is not allowed"),
    ("SET threads = 1", "SET is not allowed"),
    ("SET enable_external_access = true", "SET is not allowed"),
    ("RESET lock_configuration", "RESET"),
    ("INSTALL httpfs", "INSTALL is not allowed"),
    ("LOAD httpfs", "LOAD"),
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv() reads files"),
    ("SELECT * FROM read_parquet('x.parquet')", "read_parquet() reads files"),
    ("SELECT * FROM read_json('x.json')", "read_json() reads files"),
    ("SELECT * FROM read_text('/etc/hostname')", "read_text() reads files"),
    ("SELECT * FROM glob('/tmp/*')", "glob() reads files"),
    ("SELECT * FROM '/tmp/*.csv'", "names a file or URL"),
    ("SELECT * FROM 'data/**/*.parquet'", "names a file or URL"),
    ("SELECT * FROM 'https://example.com/x.csv'", "names a file or URL"),
    ("SELECT * FROM 's3://bucket/x.parquet'", "names a file or URL"),
    ("SELECT * FROM read_csv('http://169.254.169.254/latest/meta-data')", "read_csv()"),
    ("SELECT getenv('HOME')", "getenv() reveals"),
    ("SELECT 1; DROP TABLE balances", "2 statements"),
]


def test_every_refused_form_is_refused_clearly_and_the_server_serves_on(server: Server) -> None:
    with server.client() as c:
        for sql, reason in REFUSED:
            with pytest.raises(QueryRefused) as refused:
                c.query(sql)
            message = str(refused.value)
            assert message.startswith("refused: ") and reason in message, (sql, message)
            assert c.query(CHECK).to_pylist() == [{"n": EVENTS}], f"after {sql!r}"
    server.answers()
    print(f"{len(REFUSED)} statements refused over Flight")


# -- too long ------------------------------------------------------------------------------


def test_a_runaway_query_is_interrupted_and_the_server_serves_on(server: Server) -> None:
    with server.client() as c:
        for _ in range(3):  # the interrupted connection goes back to the pool, sound
            with pytest.raises(QueryTimeout, match=r"longer than 1\.0 s and was interrupted"):
                c.query(RUNAWAY)
            assert c.query(CHECK).to_pylist() == [{"n": EVENTS}]
        # Waiting for a position the views never reach times out the same way.
        with pytest.raises(QueryTimeout, match="has not reached log position"):
            c.query("SELECT count(*) FROM balances", after={0: 10**9}, timeout=0.5)
    stats = server.stats()
    assert (stats["in_use"], stats["waiting"], stats["breaker"]) == (0, 0, "closed")
    assert stats["created"] <= stats["size"]
    server.answers()


# -- clients that leave ----------------------------------------------------------------------


def test_clients_that_leave_mid_stream_cost_the_server_nothing(server: Server) -> None:
    big = "SELECT * FROM events, range(10) AS r"  # 300,000 rows: several record batches
    before = server.stats()
    for _ in range(20):
        raw = flight.connect(server.url)
        reader = raw.do_get(flight.Ticket(f'{{"sql": "{big}"}}'.encode()))
        assert reader.read_chunk().data.num_rows > 0
        raw.close()  # gone, with the rest of the stream unread
    server.answers()
    after = server.stats()
    assert (after["in_use"], after["waiting"]) == (0, 0)
    assert after["fds"] <= before["fds"] + 5, (before, after)


# -- a storm ---------------------------------------------------------------------------------

STORM = 200


def storm_query(i: int) -> str:
    """Each different (so the result cache answers none), some of them heavy."""
    return [
        f"SELECT count(*) AS n FROM events WHERE version > {i % 50}",
        f"SELECT sum(amount) AS s FROM Deposited WHERE aggregate_id = 'acct-{i % 300:04d}'",
        f"SELECT count(*) AS n FROM events e, range({i % 7 + 2}) r WHERE e.version > {i}",
        f"SELECT aggregate_id, count(*) AS n FROM events WHERE version <= {i % 30 + 1} "
        "GROUP BY 1 ORDER BY 1 LIMIT 5",
    ][i % 4]


def storm(server: Server, expected: dict[str, Any]) -> tuple[int, int]:
    """STORM queries at once, each from its own client; (answered, told to retry)."""

    def one(i: int) -> str:
        sql = storm_query(i)
        with server.client(timeout=60) as c:
            try:
                got = c.query(sql).to_pylist()
            except PoolExhausted:  # bounded: a clear "try again later", not a pile-up
                return "exhausted"
        assert got == expected[sql], sql
        return "answered"

    with ThreadPoolExecutor(STORM) as threads:
        outcomes = list(threads.map(one, range(STORM)))
    return outcomes.count("answered"), outcomes.count("exhausted")


def test_a_storm_of_concurrent_queries_is_served_by_a_bounded_pool_and_leaks_nothing(
    server: Server,
) -> None:
    # The answers, from DuckDB over the same log in this process.
    scan = duckdb.connect()
    register_log(scan, LogReader.open(server.data))
    expected = {}
    for i in range(STORM):
        result = scan.execute(storm_query(i))
        names = [d[0] for d in result.description]
        expected[storm_query(i)] = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    first = storm(server, expected)
    settled = server.stats()
    second = storm(server, expected)
    after = server.stats()
    for answered, exhausted in (first, second):
        assert answered + exhausted == STORM and answered > 0
    assert after["created"] <= after["size"] and (after["in_use"], after["waiting"]) == (0, 0)
    assert after["breaker"] == "closed"
    # A second storm like the first leaves no more threads or open files behind.
    assert after["os_threads"] <= settled["os_threads"] + 10, (settled, after)
    assert after["fds"] <= settled["fds"] + 10, (settled, after)
    server.answers()
    print(f"storms: {first}, {second} (answered, told to retry); {after}")


# -- `cqrsflow serve --query-timeout` ----------------------------------------------------------


def test_cqrsflow_serve_interrupts_a_query_after_its_query_timeout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_log(data, bank_events(3, accounts=30, events=3000))
    argv = [
        sys.executable,
        "-m",
        "flows.cli",
        "serve",
        "--data",
        str(data),
        "--app",
        "bank",
        "--port",
        "0",
    ]
    refused = subprocess.run(
        [*argv, "--query-timeout", "0"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert refused.returncode == 2, refused.stderr
    assert "--query-timeout 0.0: expected seconds > 0" in refused.stderr
    proc = subprocess.Popen(
        [*argv, "--metrics-port", "-1", "--query-timeout", "1.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_GUARD_S)
        line = proc.stdout.readline() if ready else ""
        assert "serving SQL over Arrow Flight at " in line, line
        url = line.split(" at ")[1].split()[0]
        with FlightQueryClient(url, timeout=60) as c:
            with pytest.raises(QueryTimeout, match=r"longer than 1\.5 s and was interrupted"):
                c.query(RUNAWAY)
            assert c.query("SELECT count(*) AS n FROM events").to_pylist() == [{"n": 3000}]
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
