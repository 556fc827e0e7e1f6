"""`cqrsflow bench cache`: the cache policies on one skewed trace, and lookups per tier.

1. Policies: one trace per run, the same for LRU, LFU and ARC: keys drawn from a Zipf
   distribution (exponent 0.9, a few keys hot, a long tail), with a scan of keys never
   seen again every `SCAN_EVERY` lookups (a view rebuild, a report over every account).
   Each lookup is a `get` and, on a miss, a `put`. Figures: the hit rates (LFU's and
   ARC's against LRU's on the same trace) and how fast each replays it; the bare cost
   of a hit and of a put that evicts, in ns (what the aggregate cache would pay).
2. Tiers, through a `QueryLayer` over the bank's views: the L1 hot-row path (a key
   lookup asked again; target 1,000,000 lookups/s, and 500x a raw DuckDB primary-key
   lookup measured in the same run), the L2 result cache (small answers, and a large one
   stored compressed), and L3 on Redis when a `redis-server` binary is here (started on
   a free loopback port for the bench, else skipped with a line saying so).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from flows import bank
from flows._progress import Report
from flows.bench._harness import Figure, interleaved, rate, timed
from flows.bench._store import Scale, fresh_dir, write_bank_log
from queries import (
    POLICIES,
    Cache,
    CacheConfig,
    Policy,
    Projections,
    QueryLayer,
    RedisResultCache,
    ServingConfig,
    SharedCacheError,
    make_cache,
)
from store import LogReader

ZIPF = 0.9
SCAN_EVERY = 50_000
LOOKUP = (
    "SELECT aggregate_id, sum(CASE event_type WHEN 'Deposited' THEN amount "
    "WHEN 'Withdrawn' THEN -amount ELSE 0 END) AS balance FROM events "
    "WHERE aggregate_id = '{}' GROUP BY aggregate_id"
)
AGGREGATE = (
    "SELECT event_type, count(*) AS events, sum(amount) AS total FROM events GROUP BY event_type"
)
LARGE = "SELECT account, balance, deposits, withdrawals FROM balances ORDER BY account"


def zipf_trace(keys: int, length: int, scan: int, seed: int) -> list[int]:
    """`length` lookups over `keys` keys, Zipf-distributed, with a scan of `scan` keys
    never seen again (negative) every `SCAN_EVERY` lookups."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, keys + 1) ** ZIPF
    drawn = rng.choice(keys, size=length, p=weights / weights.sum())
    ids = rng.permutation(keys)[drawn].tolist()  # the hot keys are not the small ints
    trace: list[int] = []
    fresh = 0
    for start in range(0, length, SCAN_EVERY):
        trace += ids[start : start + SCAN_EVERY]
        trace += range(-fresh - scan, -fresh)
        fresh += scan
    return trace


def replay(cache: Cache[int, int], trace: list[int]) -> float:
    """Seconds to replay `trace` (get, put on a miss)."""
    get, put = cache.get, cache.put
    start = time.perf_counter()
    for key in trace:
        if get(key) is None:
            put(key, key)
    return time.perf_counter() - start


def _policy_figures(scale: Scale, progress: Report) -> list[Figure]:
    keys = max(scale.log_events // 10, 10_000)
    capacity = keys // 50
    length = max(scale.log_events // 4, 200_000)
    hit_rates: dict[Policy, list[float]] = {p: [] for p in POLICIES}
    speeds: dict[Policy, list[float]] = {p: [] for p in POLICIES}
    for run in range(scale.runs):
        progress(f"policies on a Zipf trace with scans, run {run + 1} of {scale.runs}")
        trace = zipf_trace(keys, length, scan=capacity * 2, seed=run)
        for policy in POLICIES:
            cache: Cache[int, int] = make_cache(policy, capacity, metrics=False)
            seconds = replay(cache, trace)
            hit_rates[policy].append(100.0 * cache.hits / len(trace))
            speeds[policy].append(rate(len(trace), seconds))
    what = f"Zipf({ZIPF}) over {keys:,} keys, a {capacity * 2:,}-key scan every {SCAN_EVERY:,}"
    figures = [
        Figure(
            f"hit rate, LRU, {capacity:,} entries, {what}", "%", tuple(hit_rates["lru"]), "higher"
        )
    ]
    for policy in ("lfu", "arc"):
        figures.append(
            Figure(
                f"hit rate, {policy.upper()}, same trace",
                "%",
                tuple(hit_rates[policy]),
                "higher",
                baseline_name="LRU on the same trace",
                baseline_runs=tuple(hit_rates["lru"]),
            )
        )
    figures += [
        Figure(
            f"trace replay, {p.upper()} (get, put on a miss)",
            "lookups/s",
            tuple(speeds[p]),
            "higher",
        )
        for p in POLICIES
    ]
    figures += _bare_costs(scale)
    return figures


def _bare_costs(scale: Scale) -> list[Figure]:
    """ns per `get` hit and per `put` that evicts, each policy, plain and threadsafe."""
    figures = []
    keys = list(range(10_000))
    for policy in POLICIES:
        for threadsafe in (False, True):
            hot: Cache[int, int] = make_cache(policy, 20_000, threadsafe=threadsafe, metrics=False)
            for k in keys:
                hot.put(k, k)
                hot.get(k)  # ARC: into T2, where the hot set lives

            def hits(cache: Cache[int, int] = hot) -> float:
                get = cache.get
                return timed(lambda: [get(k) for k in keys]) / len(keys) * 1e9

            def puts(policy: Policy = policy, threadsafe: bool = threadsafe) -> float:
                full: Cache[int, int] = make_cache(
                    policy, 1_000, threadsafe=threadsafe, metrics=False
                )
                put = full.put
                return timed(lambda: [put(k, k) for k in keys]) / len(keys) * 1e9

            kind = f"{policy.upper()}{', threadsafe' if threadsafe else ''}"
            got, _ = interleaved(scale.runs, hits)
            put, _ = interleaved(scale.runs, puts)
            figures.append(Figure(f"cache get, a hit ({kind})", "ns", tuple(got), "lower"))
            figures.append(Figure(f"cache put that evicts ({kind})", "ns", tuple(put), "lower"))
    return figures


def _per_second(n: int, call: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        call(i)
    return rate(n, time.perf_counter() - start)


def _tier_figures(
    layer: QueryLayer, projections: Projections, accounts: list[str], scale: Scale, progress: Report
) -> list[Figure]:
    figures: list[Figure] = []
    progress("L1: hot-row lookups through the query layer vs raw DuckDB primary-key lookups")
    # The first runs of a lookup teach the planner its cost; one slow enough may make a
    # scan look cheaper for a while, and that answer is an L2 result, not a hot row:
    # the hot set is the first 100 lookups that did become hot rows.
    hot: list[str] = []
    tried = 0
    for account in accounts[:1_000]:
        sql = LOOKUP.format(account)
        layer.run(sql)
        tried += 1
        if sql in layer.hot_rows:
            hot.append(sql)
            if len(hot) == 100:
                break
    assert len(hot) == 100, f"only {len(hot)} of {tried} lookups became hot rows"
    raw = projections.con.cursor()
    prepared = f"SELECT account, balance FROM {projections.table('balances')} WHERE account = $1"
    cold = accounts[tried:]
    offset = 0

    def ours() -> float:
        return _per_second(200_000, lambda i: layer.run(hot[i % 100]))

    def baseline() -> float:
        nonlocal offset
        offset += 300
        keys = [cold[(offset + i) % len(cold)] for i in range(300)]
        return _per_second(300, lambda i: raw.execute(prepared, [keys[i]]).fetchall())

    mine, theirs = interleaved(scale.runs, ours, baseline)
    figures.append(
        Figure(
            "L1 hot-row lookup through the query layer",
            "lookups/s",
            tuple(mine),
            "higher",
            1_000_000,
            baseline_name="raw DuckDB primary-key lookup (prepared, fetchall)",
            baseline_runs=tuple(theirs),
            ratio_target=500,
        )
    )

    progress("L2: cached results, small and compressed")
    layer.run(AGGREGATE)
    small, _ = interleaved(scale.runs, lambda: _per_second(100_000, lambda i: layer.run(AGGREGATE)))
    figures.append(
        Figure("L2 result cache, a small answer", "queries/s", tuple(small), "higher", 200_000)
    )
    large = layer.run(LARGE)
    plan, params = layer.planner.plan(LARGE)
    compressed = layer.results.compressed
    packed, computed = interleaved(
        scale.runs,
        lambda: _per_second(50, lambda i: layer.run(LARGE)),
        lambda: _per_second(5, lambda i: layer.execute(plan, params)),
    )
    figures.append(
        Figure(
            f"L2 result cache, a {large.nbytes / 2**20:.1f} MiB answer stored "
            f"{'compressed' if compressed else 'as is'} ({layer.results.cache.bytes / 2**20:.1f} MiB held)",
            "queries/s",
            tuple(packed),
            "higher",
            baseline_name="computing it (DuckDB)",
            baseline_runs=tuple(computed),
        )
    )
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def redis_server(binary: str) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; its URL."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="cqrsflow-redis-") as directory:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--dir", directory]
        with subprocess.Popen(
            [binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as server:
            url = f"redis://127.0.0.1:{port}/0"
            try:
                probe = RedisResultCache(url, metrics=False)
                deadline = time.monotonic() + 10
                while True:
                    try:
                        probe.ping()
                        break
                    except SharedCacheError:
                        if time.monotonic() > deadline or server.poll() is not None:
                            raise
                        time.sleep(0.05)
                probe.close()
                yield url
            finally:
                server.terminate()
                server.wait(timeout=30)


def _l3_figures(
    projections: Projections, reader: LogReader, scale: Scale, progress: Report
) -> list[Figure]:
    binary = shutil.which("redis-server")
    if binary is None:
        progress("L3 skipped: no redis-server here (Debian package redis-server)")
        return []
    try:
        import redis  # noqa: F401
    except ImportError:
        progress("L3 skipped: the redis client is not installed (pip install 'cqrsflow[redis]')")
        return []
    progress("L3: answers shared through a redis-server started for the bench")
    with redis_server(binary) as url:
        writer = QueryLayer.open(projections, reader, shared=url)
        reader_layer = QueryLayer.open(projections, reader, shared=url)
        try:
            writer.run(AGGREGATE)  # computed and shared
            plan, params = reader_layer.planner.plan(AGGREGATE)

            def from_l3(i: int) -> object:
                reader_layer.results.clear()  # past L2: every answer comes from Redis
                return reader_layer.run(AGGREGATE)

            shared, computed = interleaved(
                scale.runs,
                lambda: _per_second(2_000, from_l3),
                lambda: _per_second(50, lambda i: reader_layer.execute(plan, params)),
            )
            assert reader_layer.computed == 0, "the reader computed what it should have shared"
        finally:
            writer.close()
            reader_layer.close()
    return [
        Figure(
            "L3 shared result (Redis GET and decode, planning included)",
            "queries/s",
            tuple(shared),
            "higher",
            baseline_name="computing it (DuckDB)",
            baseline_runs=tuple(computed),
        )
    ]


def bench_cache(scale: Scale, workdir: Path, progress: Report) -> list[Figure]:
    figures = _policy_figures(scale, progress)
    directory = fresh_dir(workdir)
    # at least 200,000 events: on a tiny log a scan can cost less than a key lookup
    events = max(min(scale.log_events, 1_000_000), 200_000)
    write_bank_log(directory, events, max(events // 10, 1), progress)
    progress("building the bank's views from the log")
    reader = LogReader.open(directory)
    projections = Projections.open(directory, bank.VIEWS, bank.layout(), reader=reader)
    projections.catch_up(reader)
    accounts = [
        row[0]
        for row in projections.con.execute(
            f"SELECT account FROM {projections.table('balances')} ORDER BY account"
        ).fetchall()
    ]
    layer = QueryLayer.open(projections, reader, config=ServingConfig(caches=CacheConfig()))
    try:
        figures += _tier_figures(layer, projections, accounts, scale, progress)
    finally:
        layer.close()
    try:
        figures += _l3_figures(projections, reader, scale, progress)
    finally:
        projections.close()
    return figures
