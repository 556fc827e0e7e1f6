"""The L3 cache on a real Redis: a `redis-server` (Debian's package; `.ci/run` installs
it) started on a free loopback port for this module. Two query layers, then two
`cqrsflow serve` processes, share answers through it; an answer older than the reader's
own views is not served; an unreachable server costs a miss, never a query."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_cache_layer import steady
from view_data import bank_events, open_views, write_log

from flows.bank import layout
from flows.bench import redis_server
from queries import QueryLayer, RedisResultCache, SharedCacheError, SharedEntry
from store import ArrowLog

ROOT = Path(__file__).resolve().parent.parent
TOTALS = "SELECT event_type, count(*) AS n, sum(amount) AS total FROM events GROUP BY event_type"
DEADLINE = 60.0  # a hang guard, never a figure under test
TOKEN = "shared-s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, for this module only."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (Debian package redis-server; .ci/run installs "
            "it where apt-get is available): the L3 cache is tested against a real server"
        )
    pytest.importorskip(
        "redis", reason="the redis client is not installed: pip install -e '.[dev]'"
    )
    with redis_server(binary) as url:  # the bench's own throwaway server
        yield url


@pytest.fixture
def flushed(redis_url: str) -> str:
    """The server, emptied: each test starts from no shared answers."""
    cache = RedisResultCache(redis_url, metrics=False)
    cache._client.flushdb()
    cache.close()
    return redis_url


@given(
    payload=st.binary(max_size=200),
    watermark=st.dictionaries(st.integers(0, 64), st.integers(0, 2**40), max_size=8),
    stored_at=st.floats(0, 2e9),
)
def test_an_entry_reads_back_as_written(
    payload: bytes, watermark: dict[int, int], stored_at: float
) -> None:
    entry = SharedEntry(payload, watermark, stored_at)
    assert SharedEntry.decode(entry.encode()) == entry
    assert SharedEntry.decode(b"\x09junk") is None  # another format: not ours, a miss


@pytest.fixture
def views(tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    """Views over a log, and a function that appends a batch and applies it."""
    events = bank_events(5, accounts=50, events=2_000)
    write_log(tmp_path, events[:1_500], partitions=2)
    projections, reader = open_views(tmp_path)
    projections.catch_up(reader)

    def move(*layers: QueryLayer) -> None:
        with ArrowLog.open(tmp_path, layout()) as log:
            log.append(events[1_500:])
        projections.catch_up(reader)
        for layer in layers:
            layer.applied()

    yield projections, reader, move
    projections.close()


def test_two_layers_share_an_answer_through_redis(flushed: str, views: Any) -> None:
    projections, reader, _ = views
    a = steady(QueryLayer.open(projections, reader, shared=flushed))
    b = steady(QueryLayer.open(projections, reader, shared=flushed))  # its own L1 and L2, empty
    try:
        computed = a.run(TOTALS)
        assert a.computed == 1 and a.shared is not None and a.shared.stores == 1
        shared = b.run(TOTALS)
        assert shared.equals(computed) and b.computed == 0
        assert b.shared is not None and (b.shared.hits, b.shared.misses) == (1, 0)
        assert b.run(TOTALS) is shared  # kept in b's own L2 from then on
        assert b.shared.hits == 1 and b.result_hits == 2
    finally:
        a.close()
        b.close()


def test_an_answer_older_than_the_readers_views_is_not_served(flushed: str, views: Any) -> None:
    projections, reader, move = views
    a, b, c = (steady(QueryLayer.open(projections, reader, shared=flushed)) for _ in range(3))
    try:
        old = a.run(TOTALS)  # shared, stamped with the views' watermark then
        move(a, b, c)  # the views applied 500 more events: the readers' bound moved past it
        # a caller allowing an hour of staleness may have it, but it is not kept as fresh
        assert c.run(TOTALS, max_staleness=3600).equals(old)
        assert c.computed == 0 and c.shared is not None and c.shared.hits == 1
        strict = c.run(TOTALS)  # no bound: only an answer at least as fresh as c's views
        assert c.computed == 1 and (c.shared.hits, c.shared.stale) == (1, 1)
        assert sum(strict.column("n").to_pylist()) == sum(old.column("n").to_pylist()) + 500
        # c shared the fresh answer: b has it without computing
        assert b.run(TOTALS).equals(strict) and b.computed == 0
    finally:
        for layer in (a, b, c):
            layer.close()


def test_an_unreachable_redis_costs_a_miss_not_the_query(views: Any) -> None:
    projections, reader, _ = views
    down = RedisResultCache(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, metrics=False)
    layer = QueryLayer.open(projections, reader, shared=down)
    try:
        assert layer.run(TOTALS).num_rows > 0 and layer.computed == 1
        assert down.errors == 1
        layer.run("SELECT count(*) AS n FROM balances")
        assert down.errors == 1  # not asked again before retry_after
    finally:
        layer.close()
        down.close()


def test_a_redis_url_nobody_answers_is_refused_with_the_reason(views: Any) -> None:
    projections, reader, _ = views
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(SharedCacheError, match=r"cannot reach Redis at redis://127\.0\.0\.1:"):
        QueryLayer.open(projections, reader, shared=url)
    with pytest.raises(SharedCacheError, match="expected redis://HOST:PORT"):
        RedisResultCache("http://nowhere", metrics=False)


# -- two `cqrsflow serve` processes ----------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def start_server(data: Path, redis: str) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "serve", "--data", str(data), "--app", "bank"),
            *("--port", "0", "--metrics-port", "0", "--redis", redis),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CQRSFLOW_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    metrics = flight = ""
    for line in proc.stdout:
        if "metrics at " in line:
            metrics = line.split("metrics at ")[1].split(",")[0]
        if "serving SQL" in line or not line:
            flight = line.split(" at ")[1].split()[0]
            assert "results shared through Redis" in line, line
            break
    assert flight and metrics, proc.stderr.read() if proc.stderr else ""
    return proc, flight, metrics


def test_two_serve_processes_share_answers_through_redis(flushed: str, tmp_path: Path) -> None:
    from queries import FlightQueryClient

    events = bank_events(8, accounts=30, events=3_000)
    one, two = tmp_path / "one", tmp_path / "two"
    write_log(one, events)  # two servers of the same log, each with its own views
    write_log(two, events)
    servers = [start_server(one, flushed), start_server(two, flushed)]
    try:
        (_, first, _), (_, second, second_metrics) = servers
        with FlightQueryClient(first, token=TOKEN, timeout=DEADLINE) as client:
            computed = client.query(TOTALS)
        with FlightQueryClient(second, token=TOKEN, timeout=DEADLINE) as client:
            shared = client.query(TOTALS)
        assert shared.equals(computed)
        samples = scrape(second_metrics)
        labels = (("cache", "shared"), ("tier", "L3"))
        assert samples[("cqrsflow_cache_hits_total", labels)] == 1
        assert samples[("cqrsflow_queries_total", (("plan", "cache"),))] == 1
        assert samples.get(("cqrsflow_queries_total", (("plan", "view"),)), 0) == 0
    finally:
        for proc, _, _ in servers:
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in servers:
            _, errors = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0, errors
