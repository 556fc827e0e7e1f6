"""`cqrsflow top`: the pure parts directly, then the command against a real metrics endpoint,
once (`--once`) and live in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import math
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector
from rich.console import Console

from flows.cli import (
    Buckets,
    Dashboard,
    Snapshot,
    Thresholds,
    compute,
    histogram_quantile,
    main,
    parse_snapshot,
    rate,
    render,
    share,
)

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = Thresholds(lag_seconds=5.0, p99_ms=20.0, error_rate=0.05, disk_bytes=10 * 2**30)
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1)
DEADLINE = 30.0  # a hang guard for the terminal tests, never a figure under test


class FakeRun:
    """A `cqrsflow run`'s metrics as docs/metrics.md names them: real prometheus_client
    metrics in a registry of their own. Every scrape but the first is preceded by one
    interval's work: 1,000 commands (8 % rejected, 2 % invalid) with p99 in the 25-50 ms
    bucket, 900 events, 95 % aggregate cache hits. No query metrics, as in a run."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.commands = Counter("cqrsflow_commands_total", "", ["type", "outcome"], registry=r)
        self.latency = Histogram(
            "cqrsflow_command_latency_seconds", "", buckets=BUCKETS, registry=r
        )
        self.events = Counter("cqrsflow_events_appended_total", "", ["type"], registry=r)
        # The aggregate caches report as every cache does, one per partition.
        tiers = ["cache", "tier"]
        hits = Counter("cqrsflow_cache_hits_total", "", tiers, registry=r)
        misses = Counter("cqrsflow_cache_misses_total", "", tiers, registry=r)
        self.hits = hits.labels("aggregate-0", "L1")
        self.misses = misses.labels("aggregate-0", "L1")
        lag_events = Gauge("cqrsflow_view_lag_events", "", ["view"], registry=r)
        lag_seconds = Gauge("cqrsflow_view_lag_seconds", "", ["view"], registry=r)
        rebuild = Gauge("cqrsflow_view_rebuild_progress_ratio", "", ["view"], registry=r)
        segments = Gauge("cqrsflow_log_segments", "", ["partition"], registry=r)
        disk = Gauge("cqrsflow_log_bytes", "", ["partition"], registry=r)
        lag_events.labels("balances").set(120)
        lag_seconds.labels("balances").set(7.5)
        lag_events.labels("daily_totals").set(0)
        lag_seconds.labels("daily_totals").set(0)
        rebuild.labels("daily_totals").set(0.4)
        for partition in "0123":
            segments.labels(partition).set(3)
            disk.labels(partition).set(2**20)
        self.commands.labels("Deposit", "accepted").inc(1000)
        for _ in range(1000):
            self.latency.observe(0.002)
        self._scrapes = 0
        self._lock = threading.Lock()  # the HTTP server answers each scrape in a thread

    def work(self) -> None:
        self.commands.labels("Deposit", "accepted").inc(900)
        self.commands.labels("Withdraw", "rejected").inc(80)
        self.commands.labels("unknown", "invalid").inc(20)
        for seconds, times in ((0.003, 980), (0.04, 20)):
            for _ in range(times):
                self.latency.observe(seconds)
        self.events.labels("Deposited").inc(900)
        self.hits.inc(950)
        self.misses.inc(50)

    def exposition(self) -> bytes:
        with self._lock:
            if self._scrapes:
                self.work()
            self._scrapes += 1
            return generate_latest(self.registry)

    def snapshot(self, at: float) -> Snapshot:
        return parse_snapshot(self.exposition().decode(), at)


@contextmanager
def serving(body: Callable[[], bytes]) -> Iterator[str]:
    """An HTTP endpoint answering every GET with `body()`; yields its /metrics URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = body()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # no request log on the test's stderr

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def run_url() -> Iterator[str]:
    with serving(FakeRun().exposition) as url:
        yield url


@pytest.fixture
def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def snapshot(at: float, text: str) -> Snapshot:
    return parse_snapshot(textwrap.dedent(text), at)


def shown(renderable: object) -> str:
    console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    with console.file:
        console.print(renderable)
    return console.export_text()


def cells(screen: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in screen.splitlines():
        row = [c.strip() for c in line.strip().strip("│").split("│")]
        if row[0] == first and len(row) > 1:
            return row
    raise AssertionError(f"no row {first!r} in:\n{screen}")


# -- the pure parts ---------------------------------------------------------------------

SIMPLE: Buckets = ((0.1, 10), (0.2, 30), (0.4, 40), (math.inf, 40))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.125, 0.05),  # in the first bucket, which starts at 0
        (0.25, 0.1),  # exactly the first bucket's count
        (0.5, 0.15),  # rank 20: 10 of the 20 in (0.1, 0.2]
        (0.9, 0.32),  # rank 36: 6 of the 10 in (0.2, 0.4]
        (1.0, 0.4),
    ],
)
def test_quantiles_interpolate_within_buckets_like_prometheus(q: float, expected: float) -> None:
    assert histogram_quantile(q, SIMPLE) == pytest.approx(expected)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, ((0.1, 10), (math.inf, 20))) == 0.1


@pytest.mark.parametrize(
    "cumulative",
    [(), ((0.1, 0), (math.inf, 0)), ((0.1, 5), (0.2, 10))],  # no data, nothing observed, no +Inf
)
def test_no_quantile_without_observations_or_an_inf_bucket(cumulative: Buckets) -> None:
    assert histogram_quantile(0.5, cumulative) is None


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=8), st.integers(1, 1000))
def test_quantiles_grow_with_q_and_stay_within_the_bounds(counts: list[int], last: int) -> None:
    bounds = [0.001 * 2**i for i in range(len(counts))]
    cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
    buckets = (*zip(bounds, cumulative, strict=True), (math.inf, cumulative[-1] + last))
    values = [histogram_quantile(q, buckets) for q in (0.01, 0.5, 0.9, 0.99, 0.999, 1.0)]
    floats = [v for v in values if v is not None]
    assert len(floats) == len(values)
    assert floats == sorted(floats)
    assert floats[0] >= 0 and floats[-1] <= bounds[-1]


COMMANDS_BEFORE = """
    # TYPE cqrsflow_commands_total counter
    cqrsflow_commands_total{type="Deposit",outcome="accepted"} 900
    cqrsflow_commands_total{type="Deposit",outcome="rejected"} 100
"""
COMMANDS_AFTER = """
    # TYPE cqrsflow_commands_total counter
    cqrsflow_commands_total{type="Deposit",outcome="accepted"} 1800
    cqrsflow_commands_total{type="Deposit",outcome="rejected"} 200
    cqrsflow_commands_total{type="Deposit",outcome="invalid"} 50
"""


def test_rates_are_per_second_between_two_scrapes() -> None:
    before, after = snapshot(10.0, COMMANDS_BEFORE), snapshot(12.0, COMMANDS_AFTER)
    assert rate(before, after, "cqrsflow_commands_total") == (2050 - 1000) / 2
    assert rate(None, after, "cqrsflow_commands_total") is None  # one scrape: no rate yet
    assert rate(before, after, "cqrsflow_queries_total") is None  # not exposed


def test_a_counter_that_went_down_was_reset_and_counts_from_zero() -> None:
    before, after = snapshot(10.0, COMMANDS_AFTER), snapshot(12.0, COMMANDS_BEFORE)
    assert rate(before, after, "cqrsflow_commands_total") == 1000 / 2


def test_shares_are_over_the_interval_or_since_start_when_nothing_happened() -> None:
    before, after = snapshot(10.0, COMMANDS_BEFORE), snapshot(12.0, COMMANDS_AFTER)

    def rejected(s: Snapshot) -> float | None:
        return s.total("cqrsflow_commands_total", outcome="rejected")

    def every(s: Snapshot) -> float | None:
        return s.total("cqrsflow_commands_total")

    interval = share(before, after, rejected, every)
    assert interval is not None and not interval.since_start
    assert interval.value == pytest.approx(100 / 1050)
    idle = share(after, after, rejected, every)
    assert idle is not None and idle.since_start and idle.value == pytest.approx(200 / 2050)


def test_a_declared_metric_without_samples_reads_zero_and_an_absent_one_none() -> None:
    s = snapshot(0.0, "# TYPE cqrsflow_queries_total counter\n")
    assert s.total("cqrsflow_queries_total") == 0
    assert s.total("cqrsflow_commands_total") is None


def test_latency_is_over_the_last_interval_else_since_start() -> None:
    run = FakeRun()
    first, second = run.snapshot(0.0), run.snapshot(1.0)
    start = compute(None, first).latency
    assert start is not None and start.since_start
    assert start.quantiles[0.99] == pytest.approx(0.001 + 0.004 * 0.99)  # all 1,000 at 2 ms
    interval = compute(first, second).latency
    assert interval is not None and not interval.since_start
    assert interval.quantiles[0.5] == pytest.approx(0.001 + 0.004 * 500 / 980)
    assert interval.quantiles[0.99] == pytest.approx(0.025 + 0.025 * 10 / 20)
    idle = compute(second, second).latency  # no new observation: every one since the start
    assert idle is not None and idle.since_start
    assert idle.quantiles[0.99] == pytest.approx(0.005)


def test_absent_metrics_show_as_a_dash_and_raise_no_alert() -> None:
    dashboard = Dashboard("http://127.0.0.1:1/metrics", 1.0, THRESHOLDS)
    screen = shown(dashboard.refresh(snapshot(0.0, "")))
    assert "CPU — · memory —" in screen
    assert "commands — · events — · queries —" in screen
    assert "rejected — · invalid — · errors —" in screen
    assert "p50 — · p95 — · p99 — · p99.9 —" in screen
    assert "aggregate — · plan — · result —" in screen
    assert re.search(r"planner +— *│", screen) and re.search(r"partitions +— *│", screen)
    assert cells(screen, "—") == ["—", "—", "—", "—"]  # the views table
    assert cells(screen, "p99") == ["p99", "20.0 ms", "—", "ok", "0"]
    assert set(dashboard.alert_counts().values()) == {0}


def test_a_servers_exposition_shows_the_query_figures_and_no_command_figures() -> None:
    r = CollectorRegistry()
    queries = Counter("cqrsflow_queries_total", "", ["plan"], registry=r)
    plan_hits = Counter("cqrsflow_plan_cache_hits_total", "", registry=r)
    plan_misses = Counter("cqrsflow_plan_cache_misses_total", "", registry=r)
    Counter("cqrsflow_result_cache_hits_total", "", registry=r)
    Counter("cqrsflow_result_cache_misses_total", "", registry=r).inc(4)
    last_plan = Gauge("cqrsflow_last_plan_info", "", ["target", "rule"], registry=r)
    queries.labels("view").inc(10)
    before = parse_snapshot(generate_latest(r).decode(), 0.0)
    queries.labels("view").inc(8)
    queries.labels("log").inc(2)  # a plan first chosen in the interval
    plan_hits.inc(9)
    plan_misses.inc(1)
    last_plan.labels("balances", "rollup").set(1)
    last_plan.labels("events", "scan").set(0)  # an earlier choice
    after = parse_snapshot(generate_latest(r).decode(), 2.0)
    no_alerts = dict.fromkeys(THRESHOLDS.by_alert(), 0)
    screen = shown(render(compute(before, after), THRESHOLDS, no_alerts, "a server"))
    assert "commands — · events — · queries 5.0/s" in screen
    assert "rejected — · invalid — · errors —" in screen
    assert "aggregate — · plan 90.0 % · result 0.0 % (since start)" in screen
    assert "last rule=rollup target=balances · log 1.0/s (2) · view 4.0/s (18)" in screen


def test_each_cache_tier_shows_its_hits_misses_hit_rate_entries_and_bytes() -> None:
    r = CollectorRegistry()
    labels = ["cache", "tier"]
    hits = Counter("cqrsflow_cache_hits_total", "", labels, registry=r)
    misses = Counter("cqrsflow_cache_misses_total", "", labels, registry=r)
    entries = Gauge("cqrsflow_cache_entries", "", labels, registry=r)
    held = Gauge("cqrsflow_cache_bytes", "", labels, registry=r)
    for name, tier in (("results", "L2"), ("hot_rows", "L1"), ("shared", "L3")):
        hits.labels(name, tier).inc(100)
        misses.labels(name, tier).inc(100)
    entries.labels("hot_rows", "L1").set(1234)
    held.labels("hot_rows", "L1").set(3 * 2**20)
    entries.labels("results", "L2").set(7)
    held.labels("results", "L2").set(2048)
    before = parse_snapshot(generate_latest(r).decode(), 0.0)
    hits.labels("hot_rows", "L1").inc(1800)  # 90 % of the interval's lookups
    misses.labels("hot_rows", "L1").inc(200)
    hits.labels("results", "L2").inc(10)
    after = parse_snapshot(generate_latest(r).decode(), 2.0)

    figures = compute(before, after)
    assert [(c.name, c.tier) for c in figures.cache_tiers] == [
        ("hot_rows", "L1"),
        ("results", "L2"),
        ("shared", "L3"),
    ]
    no_alerts = dict.fromkeys(THRESHOLDS.by_alert(), 0)
    screen = shown(render(figures, THRESHOLDS, no_alerts, "a server"))
    assert cells(screen, "hot_rows") == [
        "hot_rows", "L1", "900/s", "100/s", "90.0 %", "1,234", "3.0 MiB",
    ]  # fmt: skip
    assert cells(screen, "results") == [
        "results",
        "L2",
        "5.0/s",
        "0.0/s",
        "100.0 %",
        "7",
        "2.0 KiB",
    ]
    # nothing in the interval: since start; a gauge not reported: a dash
    assert cells(screen, "shared") == [
        "shared", "L3", "0.0/s", "0.0/s", "50.0 % (since start)", "—", "—",
    ]  # fmt: skip
    assert (
        cells(shown(render(compute(None, before), THRESHOLDS, no_alerts, "")), "shared")[2] == "—"
    )


def test_the_dashboard_counts_each_crossed_alert_once_per_refresh_in_its_registry() -> None:
    run = FakeRun()
    dashboard = Dashboard("http://127.0.0.1:1/metrics", 1.0, THRESHOLDS)
    dashboard.baseline(run.snapshot(0.0))
    for at in (1.0, 2.0, 3.0):
        screen = shown(dashboard.refresh(run.snapshot(at)))
    read = dashboard.registry.get_sample_value
    counts = {a: read("cqrsflow_top_alerts_total", {"alert": a}) for a in THRESHOLDS.by_alert()}
    assert counts == {"lag": 3, "p99": 3, "error_rate": 3, "disk": 0}
    assert cells(screen, "lag") == ["lag", "5.0 s", "7.5 s", "ALERT", "3"]
    assert cells(screen, "disk") == ["disk", "10.0 GiB", "4.0 MiB", "ok", "0"]
    # the dashboard's own registry, not the process-wide one
    assert REGISTRY.get_sample_value("cqrsflow_top_alerts_total", {"alert": "lag"}) is None


def test_bad_usage_is_refused_before_any_scrape() -> None:
    assert main(["top", "--interval", "0", "--once"]) == 2
    assert main(["top", "--url", "127.0.0.1:9464", "--once"]) == 2


# -- the command, against a real endpoint ----------------------------------------------


def top(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "top", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "80", **env},
    )


ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>78])")


def test_once_shows_the_figures_of_a_real_exposition(run_url: str) -> None:
    done = top(
        "--url", run_url, "--interval", "0.5", "--disk-alert", "1000000", "--once", FORCE_COLOR="1"
    )
    assert done.returncode == 0, done.stderr
    screen = ANSI.sub("", done.stdout)
    commands = re.search(r"commands ([\d,.]+)/s · events ([\d,.]+)/s · queries —", screen)
    assert commands, screen
    # 1,000 commands and 900 events between two scrapes at least 0.5 s apart
    assert 0 < float(commands[1].replace(",", "")) <= 2000
    assert 0 < float(commands[2].replace(",", "")) <= 1800
    assert re.search(r"CPU [\d.]+ % of a core · memory [\d.]+ MiB", screen), screen
    for figure in (
        "rejected 8.0 % · invalid 2.0 % · errors 10.0 %",
        "p50 3.04 ms · p95 4.88 ms · p99 37.5 ms",
        "aggregate 95.0 % · plan — · result —",
        "segments 12 · on disk 4.0 MiB",
        "p0 3 seg 1.0 MiB",
    ):
        assert figure in screen, screen
    assert cells(screen, "balances") == ["balances", "120", "7.5 s", "—"]
    assert cells(screen, "daily_totals") == ["daily_totals", "0", "0.0 s", "40 %"]
    assert cells(screen, "p99") == ["p99", "20.0 ms", "37.5 ms", "ALERT", "1"]
    assert cells(screen, "error_rate") == ["error_rate", "5.0 %", "10.0 %", "ALERT", "1"]
    assert cells(screen, "disk") == ["disk", "976.6 KiB", "4.0 MiB", "ALERT", "1"]
    red = "\x1b[1;31m"
    for hot in ("37.5 ms", "10.0 %", "7.5 s", "4.0 MiB", "ALERT"):
        assert red + hot in done.stdout


def test_once_against_a_closed_port_says_why_and_exits_1(closed_url: str) -> None:
    done = top("--url", closed_url, "--interval", "0.1", "--once")
    assert done.returncode == 1
    assert f"cannot read {closed_url}: Connection refused" in done.stderr


@contextmanager
def in_terminal(*args: str) -> Iterator[Terminal]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100", "LINES": "50"}
    env.pop("FORCE_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "top", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        env=env,
        start_new_session=True,  # the pty is its terminal; the test runner's Ctrl-C is not
    )
    os.close(slave)
    terminal = Terminal(process, master)
    try:
        yield terminal
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(master)


class Terminal:
    """What a process wrote to its pseudo-terminal, read as it comes."""

    def __init__(self, process: subprocess.Popen[bytes], master: int) -> None:
        self.process = process
        self.master = master
        self.raw = b""
        self.closed = False

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def _read(self) -> None:
        if select.select([self.master], [], [], 0.1)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                chunk = b""
            self.raw += chunk
            self.closed = not chunk

    def wait_for(self, shows: Callable[[str], bool]) -> None:
        hang_guard = time.monotonic() + DEADLINE
        while not shows(self.screen):
            assert not self.closed, f"top exited with {self.process.poll()}:\n{self.screen}"
            assert time.monotonic() < hang_guard, f"never shown:\n{self.screen}"
            self._read()

    def stop(self, signum: int) -> int:
        """Send `signum`, read to the end of the output, and return the exit code."""
        self.process.send_signal(signum)
        hang_guard = time.monotonic() + DEADLINE
        while not self.closed and time.monotonic() < hang_guard:
            self._read()
        return self.process.wait(timeout=DEADLINE)


def test_live_in_a_terminal_until_ctrl_c(run_url: str) -> None:
    with in_terminal("--url", run_url, "--interval", "0.2") as terminal:
        terminal.wait_for(lambda s: "p99 37.5 ms" in s and "errors 10.0 %" in s)
        assert "balances" in terminal.screen and "7.5 s" in terminal.screen
        assert terminal.stop(signal.SIGINT) == 0
        assert "Traceback" not in terminal.screen
        assert terminal.raw.rstrip().endswith(b"\x1b[?1049l")  # left the alternate screen


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_unreachable_endpoint_is_waited_for_until_stopped(closed_url: str, signum: int) -> None:
    waiting = f"waiting for {closed_url}: Connection refused (retrying every 0.2 s)"
    with in_terminal("--url", closed_url, "--interval", "0.2") as terminal:
        terminal.wait_for(lambda s: s.count(waiting) >= 2)  # shown, then retried
        assert terminal.process.poll() is None
        assert terminal.stop(signum) == 0
        assert "Traceback" not in terminal.screen
