"""Every cache's counts reach Prometheus, labelled by cache and tier: in this process when
scraped, and from a child process through prometheus' multiprocess directory (how
`cqrsflow run --processes N` serves its children's metrics)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from queries import make_cache, untrack

ROOT = Path(__file__).resolve().parent.parent


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The value of one sample (summed over the labels not given), None if absent."""
    found = None
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found = (found or 0.0) + s.value
    return found


def test_a_caches_counts_are_exported_when_scraped_and_zeroed_when_untracked() -> None:
    cache = make_cache("lru", 2, name="metrics-test", tier="L2")
    for key in "abc":
        cache.put(key, b"x" * 10)  # "a" evicted
    cache.get("b"), cache.get("c"), cache.get("a")
    labels = {"cache": "metrics-test", "tier": "L2"}
    assert sample(REGISTRY, "cqrsflow_cache_hits_total", **labels) == 2
    assert sample(REGISTRY, "cqrsflow_cache_misses_total", **labels) == 1
    assert sample(REGISTRY, "cqrsflow_cache_evictions_total", **labels) == 1
    assert sample(REGISTRY, "cqrsflow_cache_entries", **labels) == 2
    assert sample(REGISTRY, "cqrsflow_cache_bytes", **labels) == cache.bytes > 20
    assert sample(REGISTRY, "cqrsflow_cache_hit_ratio", **labels) == 2 / 3
    cache.get("b")  # counted at the next scrape, not before
    assert sample(REGISTRY, "cqrsflow_cache_hits_total", **labels) == 3
    untrack(cache)
    assert sample(REGISTRY, "cqrsflow_cache_entries", **labels) == 0
    assert sample(REGISTRY, "cqrsflow_cache_hits_total", **labels) == 3  # counters stay


def test_a_child_processes_caches_reach_the_multiprocess_directory(tmp_path: Path) -> None:
    child = textwrap.dedent(
        """
        import sys, time
        from queries import make_cache
        cache = make_cache("arc", 100, name="in-child", tier="L1")
        for i in range(10):
            cache.put(i, i)
        for i in range(15):
            cache.get(i)
        time.sleep(1.5)  # the publishing thread runs once a second
        print("published", flush=True)
        sys.stdin.read()  # alive until told to go
        cache.get(0)  # published once more at exit
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            assert proc.stdout.readline().strip() == "published"
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
            labels = {"cache": "in-child", "tier": "L1"}
            assert sample(registry, "cqrsflow_cache_hits_total", **labels) == 10
            assert sample(registry, "cqrsflow_cache_misses_total", **labels) == 5
            assert sample(registry, "cqrsflow_cache_entries", **labels) == 10
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
            assert sample(registry, "cqrsflow_cache_hits_total", **labels) == 11
        finally:
            proc.kill()
