"""`cqrsflow bench cache` at a tiny scale: the policies on one Zipf trace with scans, the
bare costs of a hit and of an evicting put, and each tier through a real query layer,
the L1 hot-row path against a raw DuckDB primary-key lookup of the same run."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from flows.bench import SCAN_EVERY, Scale, bench_cache, zipf_trace


def test_the_trace_is_skewed_and_scanned_with_keys_never_seen_again() -> None:
    trace = zipf_trace(1_000, 120_000, scan=300, seed=1)
    assert len(trace) == 120_000 + 3 * 300  # three scans: after 0, 50k and 100k lookups
    scanned = [k for k in trace if k < 0]
    assert len(scanned) == len(set(scanned)) == 900
    drawn = Counter(k for k in trace if k >= 0)
    assert drawn.most_common(1)[0][1] > 20 * 120_000 / 1_000  # far above a uniform key's
    assert trace == zipf_trace(1_000, 120_000, scan=300, seed=1)  # one trace for all
    assert trace[SCAN_EVERY : SCAN_EVERY + 300] == list(range(-300, 0))


def test_the_cache_bench_measures_every_policy_and_tier(tmp_path: Path) -> None:
    tiny = Scale(write_events=0, runs=1, log_events=40_000, hot_events=100, rss_commands=0)
    seen: list[str] = []
    figures = bench_cache(tiny, tmp_path, lambda message, *_: seen.append(message))
    by_name = {f.name: f for f in figures}
    assert all(min(f.runs) > 0 for f in figures)

    rates = [f for f in figures if f.name.startswith("hit rate")]
    assert [f.name.split(",")[1].strip() for f in rates] == ["LRU", "LFU", "ARC"]
    assert all(0 < f.value < 100 and f.unit == "%" for f in rates)
    arc = rates[2]
    assert arc.baseline == rates[0].value and arc.ratio is not None and arc.ratio > 1
    assert len([f for f in figures if f.name.startswith("cache get, a hit")]) == 6
    assert len([f for f in figures if f.name.startswith("cache put that evicts")]) == 6

    hot = by_name["L1 hot-row lookup through the query layer"]
    assert hot.unit == "lookups/s" and hot.target == 1_000_000 and hot.ratio_target == 500
    assert hot.baseline is not None and hot.ratio is not None and hot.ratio > 1
    assert by_name["L2 result cache, a small answer"].target == 200_000
    large = next(f for f in figures if f.name.startswith("L2 result cache, a ") and "MiB" in f.name)
    assert "stored compressed" in large.name and large.ratio is not None

    shared = [f for f in figures if f.name.startswith("L3")]
    if shutil.which("redis-server"):
        assert len(shared) == 1 and shared[0].baseline is not None
    else:
        assert shared == [] and any("L3 skipped" in m for m in seen)
