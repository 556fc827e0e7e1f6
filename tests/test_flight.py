"""The Flight query server and client, across a real process boundary.

Each test starts `flight_server_main.py` (a FlightQueryServer around a DuckDB holding
``numbers``, 0 to 999,999) as its own process and talks to it from this one, through
`FlightQueryClient` or, to pin the wire format, a plain pyarrow Flight client.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.flight as flight
import pytest

from queries import (
    CircuitOpen,
    FlightQueryClient,
    PoolExhausted,
    ProjectionsBusy,
    QueryError,
    QueryRefused,
    QueryTimeout,
    ViewDefinitionError,
)

SERVER = Path(__file__).with_name("flight_server_main.py")
START_GUARD_S = 60  # not a timing assertion: only so that a server that never starts fails
TIMEOUT_S = 5.0  # short, so that a hang fails the test instead of stalling the run
RAW = flight.FlightCallOptions(timeout=TIMEOUT_S)
TOKEN = "s3cret"

StartServer = Callable[..., str]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts server processes (with the given arguments); each one's location."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        stderr = tmp_path / f"server-{len(procs)}.err"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, stderr=err
            )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_GUARD_S)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            pytest.fail(f"the server did not start:\n{stderr.read_text()}")
        return line

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def url(start_server: StartServer) -> str:
    return start_server()


@pytest.fixture
def client(url: str) -> Iterator[FlightQueryClient]:
    with FlightQueryClient(url, timeout=TIMEOUT_S) as c:
        yield c


def ticket(**body: object) -> flight.Ticket:
    return flight.Ticket(json.dumps(body).encode())


def test_a_query_returns_its_rows(client: FlightQueryClient) -> None:
    table = client.query("SELECT count(*) AS c, sum(n) AS s FROM numbers WHERE n < 1000")
    assert table.to_pylist() == [{"c": 1000, "s": 499500}]
    everything = client.query("SELECT n FROM numbers")
    assert everything.num_rows == 1_000_000
    assert sorted(everything["n"].to_pylist()) == list(range(1_000_000))


def test_the_arguments_reach_the_service(client: FlightQueryClient) -> None:
    echoed = client.query("echo", after={0: 12, 3: 7}, explain=True, timeout=2.5)
    assert echoed.to_pylist() == [{"after": '{"0": 12, "3": 7}', "explain": True, "timeout": 2.5}]
    # Without arguments: no positions, no plan, and the client's default timeout.
    assert client.query("echo").to_pylist() == [
        {"after": "null", "explain": False, "timeout": TIMEOUT_S}
    ]
    plan = client.query("SELECT n FROM numbers", explain=True)
    assert "numbers" in str(plan.to_pylist()).lower()


def test_a_refused_statement_raises_query_refused_with_its_reason(
    client: FlightQueryClient,
) -> None:
    with pytest.raises(QueryRefused) as refused:
        client.query("DROP TABLE numbers")
    assert str(refused.value) == "DROP is not allowed: queries are read-only"
    assert client.query("SELECT count(*) AS c FROM numbers").to_pylist() == [{"c": 1_000_000}]


ERRORS = [
    (QueryError, flight.FlightServerError),
    (ViewDefinitionError, flight.FlightServerError),
    (QueryRefused, flight.FlightServerError),
    (QueryTimeout, flight.FlightTimedOutError),
    (PoolExhausted, flight.FlightUnavailableError),
    (CircuitOpen, flight.FlightUnavailableError),
    (ProjectionsBusy, flight.FlightUnavailableError),
]


def test_every_query_error_comes_back_as_itself(url: str, client: FlightQueryClient) -> None:
    raw = flight.connect(url)
    for cls, flight_cls in ERRORS:
        name = cls.__name__
        with pytest.raises(QueryError) as raised:
            client.query(f"raise {name}")
        assert type(raised.value) is cls
        assert str(raised.value) == f"the test service raised {name}"
        with pytest.raises(flight_cls, match=f"^{name}: the test service raised {name}"):
            raw.do_get(ticket(sql=f"raise {name}"), RAW).read_all()
    raw.close()


def test_a_bug_in_the_service_is_an_internal_error_and_the_server_serves_on(
    url: str, client: FlightQueryClient
) -> None:
    with pytest.raises(QueryError) as raised:
        client.query("crash")
    assert type(raised.value) is QueryError
    assert str(raised.value) == "RuntimeError: the test service crashed"
    raw = flight.connect(url)
    with pytest.raises(flight.FlightInternalError, match=r"^internal: RuntimeError: the test"):
        raw.do_get(ticket(sql="crash"), RAW).read_all()
    raw.close()
    assert client.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]


MALFORMED = [
    (b"SELECT 1", "the ticket is b'SELECT 1', expected UTF-8 JSON"),
    (b'["SELECT 1"]', "the ticket is ['SELECT 1'], expected a JSON object"),
    (b"{}", "ticket field 'sql' is None, expected a string"),
    (b'{"sql": 1}', "ticket field 'sql' is 1, expected a string"),
    (b'{"sql": "echo", "timout": 1}', "ticket field 'timout' is 1, expected only the fields"),
    (b'{"sql": "echo", "after": [1]}', "ticket field 'after' is [1], expected null or an"),
    (b'{"sql": "echo", "after": {"a": 1}}', "ticket field 'after' is {'a': 1}, expected"),
    (b'{"sql": "echo", "after": {"0": -1}}', "ticket field 'after' is {'0': -1}, expected"),
    (b'{"sql": "echo", "after": {"0": true}}', "ticket field 'after' is {'0': True}, expected"),
    (b'{"sql": "echo", "explain": "yes"}', "ticket field 'explain' is 'yes', expected true"),
    (b'{"sql": "echo", "timeout": 0}', "ticket field 'timeout' is 0, expected null or a"),
    (b'{"sql": "echo", "timeout": true}', "ticket field 'timeout' is True, expected"),
    (b'{"sql": "echo", "timeout": NaN}', "ticket field 'timeout' is nan, expected"),
]


def test_a_malformed_ticket_is_refused_naming_the_field(url: str) -> None:
    with flight.connect(url) as raw:
        for raw_ticket, message in MALFORMED:
            with pytest.raises(flight.FlightServerError) as raised:
                raw.do_get(flight.Ticket(raw_ticket), RAW).read_all()
            assert str(raised.value).startswith(f"InvalidTicket: {message}"), raw_ticket
        # And the server still answers a good one.
        one = raw.do_get(ticket(sql="SELECT 1 AS one"), RAW).read_all()
        assert one.to_pylist() == [{"one": 1}]


def test_the_client_raises_value_error_for_arguments_the_server_refuses(
    client: FlightQueryClient,
) -> None:
    with pytest.raises(ValueError, match=r"^ticket field 'after' is \{'0': -1\}"):
        client.query("echo", after={0: -1})


def test_a_token_server_refuses_calls_without_the_right_token(
    start_server: StartServer,
) -> None:
    url = start_server("--token", TOKEN)
    with FlightQueryClient(url, timeout=TIMEOUT_S) as anonymous:
        with pytest.raises(PermissionError, match=r"requires a token: pass --token / CQRS"):
            anonymous.query("SELECT 1")
        with pytest.raises(PermissionError, match="requires a token"):
            anonymous.healthz()
    with (
        FlightQueryClient(url, token="wrong", timeout=TIMEOUT_S) as wrong,
        pytest.raises(PermissionError, match="refused the token"),
    ):
        wrong.query("SELECT 1")
    with (
        flight.connect(url) as raw,
        pytest.raises(flight.FlightUnauthenticatedError, match="requires a token"),
    ):
        raw.do_get(ticket(sql="SELECT 1"), RAW).read_all()
    with FlightQueryClient(url, token=TOKEN, timeout=TIMEOUT_S) as right:
        assert right.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]
        assert right.healthz()


def test_a_client_that_leaves_mid_stream_does_not_hurt_the_server(
    url: str, client: FlightQueryClient
) -> None:
    for _ in range(3):
        raw = flight.connect(url)
        reader = raw.do_get(ticket(sql="SELECT n FROM numbers"), RAW)
        assert reader.read_chunk().data.num_rows > 0
        raw.close()
    assert client.query("SELECT count(*) AS c FROM numbers").to_pylist() == [{"c": 1_000_000}]


def test_concurrent_queries_each_get_their_own_answer(url: str, client: FlightQueryClient) -> None:
    def remainder_sum(r: int) -> int:
        sql = f"SELECT sum(n) AS s FROM numbers WHERE n % 16 = {r}"
        if r % 2:  # half through the shared client, half through clients of their own
            return int(client.query(sql)["s"][0].as_py())
        with FlightQueryClient(url, timeout=TIMEOUT_S) as own:
            return int(own.query(sql)["s"][0].as_py())

    with ThreadPoolExecutor(8) as pool:
        sums = list(pool.map(remainder_sum, range(16)))
    assert sums == [sum(range(r, 1_000_000, 16)) for r in range(16)]


def test_healthz(url: str, client: FlightQueryClient) -> None:
    assert client.healthz()
    with flight.connect(url) as raw:
        assert [a.type for a in raw.list_actions(RAW)] == ["healthz"]
        assert [r.body.to_pybytes() for r in raw.do_action("healthz", RAW)] == [b"ok"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_server_that_is_not_there_is_named_in_the_error() -> None:
    url = f"grpc://127.0.0.1:{free_port()}"
    with FlightQueryClient(url, timeout=TIMEOUT_S) as client:
        assert not client.healthz()
        with pytest.raises(ConnectionError) as raised:
            client.query("SELECT 1")
    assert str(raised.value) == (
        f"cannot reach the query server at {url}: is `cqrsflow serve` running?"
    )


def test_the_server_listens_on_loopback_only_by_default(url: str) -> None:
    assert url.startswith("grpc://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("reads the listening sockets from Linux's /proc/net")
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, _, state = line.split()[1:4]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    listening.append(address)
    # 127.0.0.1, as an IPv4 address or IPv4-mapped in IPv6, written little-endian.
    assert listening
    assert all(address.endswith("0100007F") for address in listening), listening
