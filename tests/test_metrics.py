"""The metrics and health endpoints of real processes, scraped over HTTP.

`cqrsflow run` reads commands from a pipe the test holds open, so the process stays up
while the test scrapes it; the figures are checked against what the run wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_flow import children, generate, read_results
from test_top import in_terminal
from view_data import bank_events, write_log

from queries import FlightQueryClient

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 120.0  # a hang guard, not a timing assertion


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels."""
    _, text = get(f"{base}/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def endpoint_of(stream: IO[str]) -> str:
    for line in stream:
        if "metrics at " in line:
            return line.split("metrics at ")[1].split("/metrics")[0]
    raise AssertionError("the process did not say where its metrics are")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "run", "bank", "--commands", "-"),
            *("--data", str(data), "--metrics-port", "0", "--ready-lag", "2"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="surrogateescape",  # the commands include malformed, non-UTF-8 records
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        yield proc, endpoint_of(proc.stdout), data
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def test_a_running_flow_reports_what_it_did_and_whether_it_is_ready(
    running: tuple[subprocess.Popen[str], str, Path], tmp_path: Path
) -> None:
    proc, base, data = running
    assert get(f"{base}/healthz") == (200, "ok\n")
    status, why = get(f"{base}/readyz")
    assert status == 503 and "the log is not open yet" in why

    commands = tmp_path / "commands.jsonl"
    generate(commands, 3000, 200, invalid_rate=0.02)
    assert proc.stdin is not None
    with commands.open(newline="", errors="surrogateescape") as f:  # keep stray \r as is
        proc.stdin.write(f.read())
    proc.stdin.flush()
    wait_for(lambda: total(scrape(base), "cqrsflow_commands_total") == 3000, "3,000 commands")

    samples = scrape(base)
    results = read_results(data)
    outcomes = Counter(r["status"] for r in results)
    for outcome in ("accepted", "rejected", "invalid"):
        assert total(samples, "cqrsflow_commands_total", outcome=outcome) == outcomes[outcome]
    accepted_types = Counter(e for r in results if r["status"] == "accepted" for e in r["events"])
    for event_type, n in accepted_types.items():
        assert total(samples, "cqrsflow_events_appended_total", type=event_type) == n
    assert total(samples, "cqrsflow_command_latency_seconds_count") == 3000 - outcomes["invalid"]
    assert total(samples, "cqrsflow_log_bytes") > 0
    assert total(samples, "process_resident_memory_bytes") > 0
    events = sum(accepted_types.values())
    wait_for(
        lambda: (
            total(scrape(base), "cqrsflow_view_events_applied_total", view="balances") == events
        ),
        "the views to apply every event",
    )
    assert total(scrape(base), "cqrsflow_view_lag_events") == 0
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, "ready")

    # `cqrsflow top` in a terminal shows the same figures (the flow is idle now, so
    # shares are since start).
    errors = 100 * (outcomes["rejected"] + outcomes["invalid"]) / 3000
    with in_terminal("--url", f"{base}/metrics", "--interval", "0.3") as terminal:
        terminal.wait_for(lambda screen: f"errors {errors:.1f} %" in screen)
        assert "balances" in terminal.screen and "account_status" in terminal.screen
        assert terminal.stop(signal.SIGINT) == 0

    # The views fall behind: the follower is stopped, the flow goes on.
    (follower,) = children(proc.pid)
    os.kill(follower, signal.SIGSTOP)
    try:
        more = tmp_path / "more.jsonl"
        more.write_text(
            "\n".join(
                json.dumps(
                    {
                        "command_id": f"x{i}",
                        "type": "OpenAccount",
                        "aggregate_id": f"new-{i}",
                        "data": {"owner": "o"},
                    }
                )
                for i in range(50)
            )
            + "\n"
        )
        proc.stdin.write(more.read_text())
        proc.stdin.flush()
        wait_for(lambda: get(f"{base}/readyz")[0] == 503, "not ready")
        status, why = get(f"{base}/readyz")
        assert "behind the log (allowed: 2.0 s)" in why
        assert total(scrape(base), "cqrsflow_view_lag_events", view="balances") == 50
    finally:
        os.kill(follower, signal.SIGCONT)
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, "ready again")
    proc.stdin.close()
    assert proc.wait(timeout=DEADLINE) == 0


def test_a_server_reports_its_queries_and_its_pool(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_log(data, bank_events(8, accounts=20, events=3000))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "serve", "--data", str(data), "--app", "bank"),
            *("--port", "0", "--metrics-port", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        base = endpoint_of(proc.stdout)
        url = (
            next(line for line in proc.stdout if "serving SQL" in line).split(" at ")[1].split()[0]
        )
        with FlightQueryClient(url, timeout=30) as client:
            sql = "SELECT event_type, count(*) AS n FROM events GROUP BY event_type"
            client.query(sql)
            client.query(sql)
            client.query("SELECT count(*) AS n FROM events WHERE amount > 10")
        samples = scrape(base)
        assert total(samples, "cqrsflow_queries_total", plan="view") == 1
        assert total(samples, "cqrsflow_queries_total", plan="cache") == 1
        assert total(samples, "cqrsflow_queries_total", plan="log") == 1
        assert total(samples, "cqrsflow_plan_cache_misses_total") == 2
        assert total(samples, "cqrsflow_pool_connections_in_use") == 0
        assert total(samples, "cqrsflow_circuit_breaker_open") == 0
        assert total(samples, "cqrsflow_last_plan_info", target="log") == 1
        assert total(samples, "cqrsflow_view_lag_events") == 0
        assert get(f"{base}/readyz") == (200, "ready\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors


def test_metrics_port_minus_one_serves_no_endpoints(tmp_path: Path) -> None:
    commands = tmp_path / "c.jsonl"
    generate(commands, 10, 5)
    done: Any = subprocess.run(
        [
            *(sys.executable, "-m", "flows.cli", "run", "bank", "--commands", str(commands)),
            *("--data", str(tmp_path / "d"), "--metrics-port", "-1"),
        ],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "metrics at" not in done.stdout
    assert len(read_results(tmp_path / "d")) == 10


def test_bytewax_own_metrics_are_served_beside_ours_when_asked(tmp_path: Path) -> None:
    commands = tmp_path / "commands.jsonl"
    generate(commands, 200, 20)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "run", "bank", "--commands", "-"),
            *("--data", str(tmp_path / "d"), "--metrics-port", "0", "--bytewax-metrics"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        base = endpoint_of(proc.stdout)
        proc.stdin.write(commands.read_text())
        proc.stdin.flush()
        wait_for(lambda: total(scrape(base), "cqrsflow_commands_total") == 200, "200 commands")
        _, text = get(f"{base}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        steps = {s.labels.get("step_id", "") for f in families.values() for s in f.samples}
        assert any(name.startswith("bytewax_") for name in families)
        assert any(step.startswith("cqrsflow.decide") for step in steps), sorted(steps)[:5]
        assert "cqrsflow_commands" in families  # ours, once
    finally:
        proc.stdin.close()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


def opens(prefix: str, n: int) -> str:
    return "".join(
        json.dumps(
            {"command_id": f"{prefix}{i}", "type": "OpenAccount", "aggregate_id": f"{prefix}{i}"}
            | {"data": {"owner": "o"}}
        )
        + "\n"
        for i in range(n)
    )


def test_intake_slows_while_the_views_are_behind_and_resumes_when_they_catch_up(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "run", "bank", "--commands", "-"),
            *("--data", str(tmp_path / "d"), "--metrics-port", "0", "--max-view-lag", "20"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        base = endpoint_of(proc.stdout)
        proc.stdin.write(opens("a", 30))
        proc.stdin.flush()
        wait_for(lambda: total(scrape(base), "cqrsflow_commands_total") == 30, "30 commands")
        wait_for(
            lambda: (
                total(scrape(base), "cqrsflow_view_events_applied_total", view="balances") == 30
            ),
            "the views to apply them",
        )
        (follower,) = children(proc.pid)
        os.kill(follower, signal.SIGSTOP)  # the views stop moving
        sent = 30
        try:
            # Batch after batch until one is held back: each shard checks before deciding.
            for k in range(20):
                proc.stdin.write(opens(f"b{k}-", 40))
                proc.stdin.flush()
                sent += 40

                def answered_or_held(sent: int = sent) -> bool:
                    samples = scrape(base)
                    return (
                        total(samples, "cqrsflow_commands_total") == sent
                        or total(samples, "cqrsflow_intake_throttled") == 1
                    )

                wait_for(answered_or_held, "the batch to be answered or held back")
                if total(scrape(base), "cqrsflow_intake_throttled") == 1:
                    break
            assert total(scrape(base), "cqrsflow_intake_throttled") == 1
            assert total(scrape(base), "cqrsflow_commands_total") < sent
        finally:
            os.kill(follower, signal.SIGCONT)
        wait_for(lambda: total(scrape(base), "cqrsflow_commands_total") == sent, "the rest")
        samples = scrape(base)
        assert total(samples, "cqrsflow_intake_throttled") == 0
        assert total(samples, "cqrsflow_intake_throttled_seconds_total") > 0
    finally:
        proc.stdin.close()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()
        proc.stderr.close()
