"""`cqrsflow serve` and `cqrsflow query --connect`, in real processes: a flow writes while
the server follows the log, and a client reads its own writes through Flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from view_data import bank_events, write_log

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"


def cqrsflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **env},
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    data = tmp_path / "data"
    write_log(data, bank_events(3, accounts=30, events=3000))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "serve", "--data", str(data), "--app", "bank"),
            *("--port", "0", "--metrics-port", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CQRSFLOW_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    line = ""
    for line in proc.stdout:  # the endpoints' line comes first
        if "serving SQL" in line or not line:
            break
    assert "serving SQL over Arrow Flight at grpc://127.0.0.1:" in line, line + proc.stderr.read()
    url = line.split(" at ")[1].split()[0]
    try:
        yield data, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, errors = proc.communicate(timeout=30)
            assert proc.returncode == 0, errors
        finally:
            proc.kill()


def test_a_client_process_queries_the_server_and_reads_its_writes(
    server: tuple[Path, str], tmp_path: Path
) -> None:
    data, url = server
    sql = "SELECT count(*) AS n FROM events"
    first = cqrsflow("query", "--connect", url, "--format", "json", sql, CQRSFLOW_TOKEN=TOKEN)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"n": 3000}
    explained = cqrsflow("query", "--connect", url, "--explain", sql, CQRSFLOW_TOKEN=TOKEN)
    assert "chosen: daily_totals (roll-up)" in explained.stdout, explained.stdout

    # A flow appends while the server holds the views: the run leaves them to it.
    commands = tmp_path / "more.jsonl"
    opened = {
        "command_id": "open",
        "type": "OpenAccount",
        "aggregate_id": "acct-new",
        "data": {"owner": "n"},
    }
    lines = [json.dumps(opened)] + [
        json.dumps(
            {
                "command_id": f"m{i}",
                "type": "Deposit",
                "aggregate_id": "acct-new",
                "data": {"amount": 5},
            }
        )
        for i in range(40)
    ]
    commands.write_text("\n".join(lines) + "\n")
    run = cqrsflow("run", "bank", "--commands", str(commands), "--data", str(data))
    assert run.returncode == 0, run.stderr
    assert "views not maintained by this run" in run.stdout + run.stderr
    results = [
        json.loads(x)
        for p in (data / "results").glob("*.jsonl")
        for x in p.read_text().splitlines()
    ]
    position = next(r["position"] for r in results if r["command_id"] == "m39")
    fresh = cqrsflow(
        "query", "--connect", url, "--after", position, "--format", "json",
        "SELECT deposits, balance FROM balances WHERE account = 'acct-new'",
        CQRSFLOW_TOKEN=TOKEN,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout) == {"deposits": 40, "balance": 200}


def test_the_server_refuses_writes_and_requests_without_the_token(
    server: tuple[Path, str],
) -> None:
    _, url = server
    refused = cqrsflow("query", "--connect", url, "DELETE FROM balances", CQRSFLOW_TOKEN=TOKEN)
    assert refused.returncode == 2
    assert "refused: DELETE is not allowed" in refused.stderr, refused.stderr
    anonymous = cqrsflow("query", "--connect", url, "SELECT 1 AS one", CQRSFLOW_TOKEN="")
    assert anonymous.returncode == 1 and "requires a token" in anonymous.stderr
    # still serving
    ok = cqrsflow(
        "query", "--connect", url, "SELECT 1 AS one", "--format", "csv", CQRSFLOW_TOKEN=TOKEN
    )
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["one", "1"]


def test_a_local_query_says_who_holds_the_views(server: tuple[Path, str]) -> None:
    data, _ = server
    done = cqrsflow("query", "--data", str(data), "--app", "bank", "SELECT 1 AS one")
    assert done.returncode == 1
    assert "in use by another process" in done.stderr and "--connect" in done.stderr
    # the lag is still known, from what the server's follower published
    listed = cqrsflow("projections", "list", "--data", str(data), "--app", "bank")
    assert listed.returncode == 0, listed.stderr
    assert "maintained by another process" in listed.stdout
    assert "of the log's 3,000 events (0 behind)" in listed.stdout


def test_a_rebuild_asked_of_a_busy_data_directory_is_built_by_the_server_and_swapped_in(
    server: tuple[Path, str],
) -> None:
    data, url = server
    sql = "SELECT aggregate_id, count(*) FILTER (WHERE event_type = 'Deposited') AS d FROM events WHERE aggregate_id = 'acct-0002' GROUP BY aggregate_id"
    before = cqrsflow("query", "--connect", url, "--format", "json", sql, CQRSFLOW_TOKEN=TOKEN)
    asked = cqrsflow("projections", "rebuild", "balances", "--data", str(data), "--app", "bank")
    assert asked.returncode == 0 and "asked the process" in asked.stdout, asked.stderr
    deadline = time.monotonic() + 120
    explained = ""
    while time.monotonic() < deadline and 'balances@2"' not in explained:
        explained = cqrsflow(
            "query", "--connect", url, "--explain", sql, CQRSFLOW_TOKEN=TOKEN
        ).stdout
        time.sleep(0.2)
    assert 'balances@2"' in explained, explained
    after = cqrsflow("query", "--connect", url, "--format", "json", sql, CQRSFLOW_TOKEN=TOKEN)
    assert after.stdout == before.stdout and json.loads(after.stdout)["d"] > 0


def serve_until_ready(data: Path, *flags: str) -> tuple[subprocess.Popen[str], str, str]:
    """A `cqrsflow serve` with `flags`, once it serves; the process, its Flight URL and
    the line that said so."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "serve", "--data", str(data), "--app", "bank"),
            *("--port", "0", "--metrics-port", "-1", *flags),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CQRSFLOW_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    line = ""
    for line in proc.stdout:
        if "serving SQL" in line or not line:
            break
    assert "serving SQL" in line, line + (proc.stderr.read() if proc.stderr else "")
    return proc, line.split(" at ")[1].split()[0], line


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    _, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors


def test_a_restarted_server_warms_the_query_shapes_it_was_asked_most(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_log(data, bank_events(3, accounts=30, events=3000))
    proc, url, _ = serve_until_ready(data, "--cache-policy", "lfu")
    try:
        lookup = "SELECT count(*) AS n FROM balances WHERE deposits > {}"
        for sql in (lookup.format(1), lookup.format(2), "SELECT count(*) AS n FROM events"):
            asked = cqrsflow("query", "--connect", url, sql, CQRSFLOW_TOKEN=TOKEN)
            assert asked.returncode == 0, asked.stderr
    finally:
        stop(proc)
    shapes = json.loads((data / "query-shapes.json").read_text())
    assert [s["count"] for s in shapes["shapes"]] == [2, 1]  # one shape asked twice

    proc, _, said = serve_until_ready(data, "--warm-queries", "5")
    stop(proc)
    assert "warmed 2 query shape(s)" in said
    refused = cqrsflow("serve", "--data", str(data), "--app", "bank", "--warm-queries", "-1")
    assert refused.returncode == 2 and "--warm-queries -1: expected a count >= 0" in refused.stderr
