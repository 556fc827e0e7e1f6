"""The query layer's caches on a real bank log and real DuckDB views: which tier answers
what, compressed and shared results, scan resistance through the layer, warming from the
shapes a previous layer saved, and the metrics each tier reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from test_cache_metrics import sample
from view_data import bank_events, open_views, write_log

from queries import CacheConfig, Projections, QueryLayer, ServingConfig
from store import LogReader

LOOKUP = (
    "SELECT aggregate_id, sum(CASE event_type WHEN 'Deposited' THEN amount "
    "WHEN 'Withdrawn' THEN -amount ELSE 0 END) AS balance FROM events "
    "WHERE aggregate_id = '{}' GROUP BY aggregate_id"
)
TOTALS = "SELECT event_type, count(*) AS n FROM events GROUP BY event_type"
EVERY_ACCOUNT = "SELECT account, balance, deposits FROM balances ORDER BY account LIMIT {}"


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Projections, LogReader]]:
    data = tmp_path_factory.mktemp("cache-layer")
    write_log(data, bank_events(11, accounts=400, events=8_000))
    projections, reader = open_views(data)
    projections.catch_up(reader)
    yield projections, reader
    projections.close()


def steady(layer: QueryLayer) -> QueryLayer:
    """The layer with the planner's cost feedback off: on a small log one slow first
    lookup can make a scan of the log look cheaper for a while, and which tier answers
    a query depends on its plan. The feedback is tested in test_planner.py."""
    setattr(layer.planner, "observe", lambda sql, plan, seconds: None)  # noqa: B010
    return layer


@pytest.fixture
def layer_of(views: tuple[Projections, LogReader]) -> Iterator[Any]:
    made: list[QueryLayer] = []

    def make(**kw: Any) -> QueryLayer:
        made.append(steady(QueryLayer.open(*views, config=ServingConfig(**kw))))
        return made[-1]

    yield make
    for layer in made:
        layer.close()


def test_a_key_lookup_is_an_l1_hot_row_and_an_aggregate_an_l2_result(layer_of: Any) -> None:
    layer = layer_of()
    lookup = LOOKUP.format("acct-0007")
    first = layer.run(lookup)
    assert layer.run(lookup) is first
    assert (layer.hot_rows.hits, len(layer.hot_rows), len(layer.results)) == (1, 1, 0)
    totals = layer.run(TOTALS)
    assert layer.run(TOTALS) is totals
    assert (layer.results.cache.hits, len(layer.results)) == (1, 1)
    assert layer.result_hits == 2 and layer.result_misses == 2
    # the plan cache (L1) answers the lookup's shape for another key
    hits = layer.planner.hits
    plan, _ = layer.planner.plan(LOOKUP.format("acct-0008"))
    assert layer.planner.plan(LOOKUP.format("acct-0009"))[0] is plan
    assert layer.planner.hits >= hits + 1 and layer.planner.cache.stats().tier == "L1"


def test_an_evicted_hot_row_leaves_no_link_behind(layer_of: Any) -> None:
    layer = layer_of(caches=CacheConfig(hot_entries=2))
    for account in ("acct-0001", "acct-0002", "acct-0003", "acct-0002"):
        layer.run(LOOKUP.format(account))
    assert len(layer.hot_rows) == 2 and layer.hot_rows.evictions == 1
    # what invalidates hot rows by key knows exactly the rows still held
    assert set(layer.tiers._hot_links) == set(layer.hot_rows.keys())
    linked = {
        t for by_value in layer.tiers._hot_index.values() for ts in by_value.values() for t in ts
    }
    assert linked == set(layer.hot_rows.keys())
    computed = layer.computed
    layer.run(LOOKUP.format("acct-0001"))  # evicted: computed again
    assert layer.computed == computed + 1


def test_large_results_are_stored_compressed_and_equal_ones_once(layer_of: Any) -> None:
    layer = layer_of(caches=CacheConfig(compress_from=4_096))
    big = layer.run(EVERY_ACCOUNT.format(400))
    assert big.nbytes >= 4_096 and layer.results.compressed == 1
    again = layer.run(EVERY_ACCOUNT.format(400))
    assert again is not big and again.equals(big)  # decoded from the compressed copy
    stored = layer.results.cache.bytes
    assert stored < big.nbytes  # lz4 on account names and small integers
    # another text, the same rows: one blob, held once
    same = layer.run(EVERY_ACCOUNT.format(400).replace("LIMIT 400", "LIMIT 500"))
    assert same.equals(big) and layer.results.shared == 1 and len(layer.results) == 2
    assert layer.results.unique_bytes() * 2 == layer.results.cache.bytes - 2 * 120
    small = layer.run(EVERY_ACCOUNT.format(3))
    assert layer.run(EVERY_ACCOUNT.format(3)) is small  # small answers stay tables


@pytest.mark.parametrize(("policy", "kept"), [("arc", True), ("lru", False)])
def test_a_one_off_large_query_does_not_flush_the_hot_results_under_arc(
    layer_of: Any, policy: str, kept: bool
) -> None:
    """Hot dashboard queries, then one large report asked once, in a result cache
    bounded so that the report fits only if half the dashboards leave: ARC keeps them;
    LRU (the contrast that shows the test can fail) lets them go."""
    hot = [f"SELECT account, balance FROM balances WHERE balance > {i} LIMIT 5" for i in range(20)]
    report = EVERY_ACCOUNT.format(100)
    probe = layer_of(caches=CacheConfig(compression=None))
    for sql in hot:
        probe.run(sql)
    hot_bytes = probe.results.cache.bytes
    probe.run(report)
    report_bytes = probe.results.cache.bytes - hot_bytes
    assert report_bytes > 4 * hot_bytes / len(hot)  # needs several dashboards' room

    bound = hot_bytes + report_bytes // 2
    assert report_bytes <= bound  # it fits on its own
    caches = CacheConfig(result_policy=policy, result_bytes=bound, compression=None)  # type: ignore[arg-type]
    layer = layer_of(caches=caches)
    for _ in range(3):
        for sql in hot:
            layer.run(sql)
    assert layer.computed == len(hot)
    layer.run(report)
    for sql in hot:
        layer.run(sql)
    assert (layer.computed == len(hot) + 1) is kept


def test_warming_reruns_the_most_frequent_shapes_a_previous_layer_saved(
    layer_of: Any, tmp_path: Path
) -> None:
    shapes = tmp_path / "query-shapes.json"
    first = layer_of(shapes=shapes)
    for i in range(5):
        first.run(LOOKUP.format(f"acct-{i:04d}"))  # one shape, five texts
    for _ in range(3):
        first.run(TOTALS)
    first.run("SELECT count(*) AS n FROM events WHERE amount > 10")
    first.close()
    saved = shapes.read_text()
    assert "acct-0004" in saved and "GROUP BY event_type" in saved

    warmed = layer_of(shapes=shapes, warm=2, warm_seconds=30)
    assert warmed.warmed == 2 and warmed.computed == 2
    assert warmed.run(LOOKUP.format("acct-0004")) is not None and warmed.computed == 2
    warmed.run(TOTALS)
    assert warmed.computed == 2  # answered from what warming computed
    warmed.run("SELECT count(*) AS n FROM events WHERE amount > 10")
    assert warmed.computed == 3  # the third shape was not warmed

    none = layer_of(shapes=shapes, warm=10, warm_seconds=0)
    assert none.warmed == 0 and none.computed == 0  # no time, no warming


def test_a_missing_or_corrupt_shapes_file_warms_nothing_and_fails_nothing(
    layer_of: Any, tmp_path: Path
) -> None:
    assert layer_of(shapes=tmp_path / "none.json", warm=5).warmed == 0
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    assert layer_of(shapes=corrupt, warm=5).warmed == 0


def test_each_tier_and_the_older_counters_report_to_prometheus(layer_of: Any) -> None:
    def counted(name: str, **labels: str) -> float:
        return sample(REGISTRY, name, **labels) or 0.0

    before = {
        "hot": counted("cqrsflow_cache_hits_total", cache="hot_rows", tier="L1"),
        "results": counted("cqrsflow_cache_hits_total", cache="results", tier="L2"),
        "plan": counted("cqrsflow_cache_misses_total", cache="plan", tier="L1"),
        "legacy": counted("cqrsflow_result_cache_hits_total"),
        "by_cache": counted("cqrsflow_queries_total", plan="cache"),
    }
    layer = layer_of()
    for _ in range(3):
        layer.run(LOOKUP.format("acct-0100"))
        layer.run("SELECT count(*) AS n FROM balances WHERE deposits > 3")
    assert counted("cqrsflow_cache_hits_total", cache="hot_rows", tier="L1") == before["hot"] + 2
    assert counted("cqrsflow_cache_hits_total", cache="results", tier="L2") == before["results"] + 2
    assert counted("cqrsflow_cache_misses_total", cache="plan", tier="L1") == before["plan"] + 2
    assert counted("cqrsflow_result_cache_hits_total") == before["legacy"] + 4
    assert counted("cqrsflow_queries_total", plan="cache") == before["by_cache"] + 4
    assert counted("cqrsflow_cache_entries", cache="hot_rows", tier="L1") >= 1


def test_cache_settings_are_checked_with_the_field_named() -> None:
    with pytest.raises(ValueError, match=r"CacheConfig.result_policy: unknown policy 'mru'"):
        CacheConfig(result_policy="mru")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"CacheConfig.hot_bytes: expected an integer >= 1"):
        CacheConfig(hot_bytes=0)
