"""The conformance suite every cache policy passes (LRU, LFU, ARC, each also in its
thread-safe form): bounds respected after any sequence of operations, `get` after `put`
within capacity, counts that add up; then what tells the policies apart, above all
ARC's resistance to scans."""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queries import POLICIES, ARCCache, Cache, LFUCache, LRUCache, make_cache

VARIANTS = [(p, t) for p in POLICIES for t in (False, True)]
IDS = [f"{p}{'-threadsafe' if t else ''}" for p, t in VARIANTS]


def cache_of(
    variant: tuple[str, bool], max_entries: int, max_bytes: int | None = None, **kw: Any
) -> Cache[Any, Any]:
    policy, threadsafe = variant
    return make_cache(
        policy,  # type: ignore[arg-type]
        max_entries,
        max_bytes,
        threadsafe=threadsafe,
        metrics=False,
        **kw,
    )


def weigh_len(value: bytes) -> int:
    return len(value)


def check_invariants(cache: Cache[Any, Any], model: dict[Any, bytes]) -> None:
    """Bounds hold, the byte count is the sum of what is held, and every held key has
    the value last put under it."""
    assert len(cache) <= cache.max_entries
    if cache.max_bytes is not None:
        assert cache.bytes <= cache.max_bytes
    held = cache.keys()
    assert len(held) == len(set(held)) == len(cache)
    assert cache.bytes == sum(cache.weight(k) or 0 for k in held)
    for key in held:
        assert key in cache and key in model
        assert cache.peek(key) == model[key]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "pop"]),
        st.integers(0, 30),  # keys: few enough to hit, more than the capacity
        st.integers(0, 120),  # value size in bytes
    ),
    max_size=300,
)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@given(ops=OPS, max_entries=st.integers(1, 12), max_bytes=st.sampled_from([None, 100, 400]))
@settings(max_examples=60, deadline=None)
def test_bounds_and_values_hold_after_any_sequence_of_operations(
    variant: tuple[str, bool],
    ops: list[tuple[str, int, int]],
    max_entries: int,
    max_bytes: int | None,
) -> None:
    cache = cache_of(variant, max_entries, max_bytes, weigh=weigh_len)
    model: dict[int, bytes] = {}
    lookups = 0
    for op, key, size in ops:
        if op == "put":
            value = bytes([key % 256]) * size
            model[key] = value
            stored = cache.put(key, value)
            fits = max_bytes is None or size <= max_bytes
            if not fits:
                assert not stored and key not in cache
        elif op == "get":
            lookups += 1
            got = cache.get(key)
            assert got is None or got == model[key]
            assert (got is not None) == (key in cache)
        else:
            cache.pop(key)
            assert key not in cache
        check_invariants(cache, model)
    assert cache.hits + cache.misses == lookups


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_get_after_put_within_capacity_finds_every_value(variant: tuple[str, bool]) -> None:
    cache = cache_of(variant, 50, 50 * 1000, weigh=weigh_len)
    values = {f"k{i}": bytes(random.randrange(1, 1000)) for i in range(50)}
    for key, value in values.items():
        assert cache.put(key, value)
    for key, value in values.items():
        assert cache.get(key) == value
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.entries) == (50, 0, 0, 50)
    assert stats.hit_rate == 1.0 and stats.bytes == sum(map(len, values.values()))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_every_put_past_capacity_evicts_one_entry_and_says_which(
    variant: tuple[str, bool],
) -> None:
    evicted: list[tuple[int, str]] = []
    cache = cache_of(variant, 10, on_evict=lambda k, v: evicted.append((k, v)))
    for i in range(25):
        assert cache.put(i, f"v{i}")
        assert len(cache) == min(i + 1, 10)
    assert cache.evictions == 15 == len(evicted)
    assert all(v == f"v{k}" and k not in cache for k, v in evicted)
    assert sorted(cache.keys() + [k for k, _ in evicted]) == list(range(25))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_a_value_heavier_than_the_byte_bound_is_not_stored(variant: tuple[str, bool]) -> None:
    cache = cache_of(variant, 10, 100, weigh=weigh_len)
    assert cache.put("small", b"x" * 10)
    assert cache.put("small", b"y" * 101) is False  # the old value goes too
    assert "small" not in cache and cache.bytes == 0 and cache.evictions == 1


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_replacing_a_value_is_not_a_use_and_pop_is_not_an_eviction(
    variant: tuple[str, bool],
) -> None:
    cache = cache_of(variant, 3)
    for key in "abc":
        cache.put(key, 1)
    cache.get("b"), cache.get("c")  # "a" is the least used, and least recent
    cache.put("a", 2)  # a write-through update of "a"
    cache.put("d", 1)
    assert "a" not in cache and {"b", "c", "d"} == set(cache.keys())
    assert cache.pop("d") == 1 and cache.pop("d") is None and cache.evictions == 1
    assert cache["b"] == 1 and cache.hits == 2  # peeking counts nothing
    with pytest.raises(KeyError):
        cache["nope"]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_clear_empties_it_and_keeps_the_counts(variant: tuple[str, bool]) -> None:
    cache = cache_of(variant, 4, weigh=weigh_len)
    cache.put("a", b"abc")
    cache.get("a"), cache.get("b")
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0 and cache.keys() == []
    assert (cache.hits, cache.misses) == (1, 1) and cache.get("a") is None


# -- what tells the policies apart ----------------------------------------------------


@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=200))
@settings(max_examples=100, deadline=None)
def test_lru_evicts_exactly_the_least_recently_used(ops: list[tuple[bool, int]]) -> None:
    cache: LRUCache[int, int] = LRUCache(5)
    model: OrderedDict[int, int] = OrderedDict()
    for is_get, key in ops:
        if is_get:
            assert (cache.get(key) is not None) == (key in model)
            if key in model:
                model.move_to_end(key)
        else:
            cache.put(key, key)
            if key not in model:
                if len(model) == 5:
                    model.popitem(last=False)
                model[key] = key
        assert cache.keys() == list(model)


@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=200))
@settings(max_examples=100, deadline=None)
def test_lfu_evicts_the_least_used_and_the_least_recent_of_those(
    ops: list[tuple[bool, int]],
) -> None:
    cache: LFUCache[int, int] = LFUCache(5)
    uses: dict[int, int] = {}
    last: dict[int, int] = {}  # when each key was last put or used
    for t, (is_get, key) in enumerate(ops):
        if is_get:
            assert (cache.get(key) is not None) == (key in uses)
            if key in uses:
                uses[key] += 1
                last[key] = t
        elif key not in uses:
            if len(uses) == 5:
                victim = min(uses, key=lambda k: (uses[k], last[k]))
                del uses[victim]
            cache.put(key, key)
            uses[key], last[key] = 1, t
        assert set(cache.keys()) == set(uses)
        assert all(cache.use_count(k) == n for k, n in uses.items())


@given(ops=st.lists(st.tuples(st.sampled_from(["put", "get", "pop"]), st.integers(0, 40))))
@settings(max_examples=100, deadline=None)
def test_arc_keeps_the_papers_invariants(ops: list[tuple[str, int]]) -> None:
    c = 8
    cache: ARCCache[int, int] = ARCCache(c)
    for op, key in ops:
        if op == "put":
            cache.put(key, key)
        elif op == "get":
            cache.get(key)
        else:
            cache.pop(key)
        t1, t2, b1, b2 = cache.lists()
        assert t1 + t2 <= c and t1 + b1 <= c and t1 + t2 + b1 + b2 <= 2 * c
        assert 0 <= cache.p <= c


def zipf_hot_then_scan(cache: Cache[Any, Any], hot: int, scan: int) -> float:
    """Make `hot` keys hot (each used several times), scan `scan` keys used once (a
    view rebuild, a batch job), then the share of the hot set still held."""
    for _ in range(4):
        for i in range(hot):
            if cache.get(("hot", i)) is None:
                cache.put(("hot", i), i)
    for i in range(scan):
        if cache.get(("scan", i)) is None:
            cache.put(("scan", i), i)
    return sum(("hot", i) in cache for i in range(hot)) / hot


@pytest.mark.parametrize("threadsafe", [False, True])
def test_arc_resists_a_scan_that_flushes_lru(threadsafe: bool) -> None:
    arc = cache_of(("arc", threadsafe), 100)
    assert zipf_hot_then_scan(arc, hot=60, scan=10_000) >= 59 / 60  # the paper: one at most
    lru = cache_of(("lru", threadsafe), 100)
    assert zipf_hot_then_scan(lru, hot=60, scan=10_000) == 0  # what ARC protects against
    lfu = cache_of(("lfu", threadsafe), 100)
    assert zipf_hot_then_scan(lfu, hot=60, scan=10_000) == 1  # used 4x beats used once


@pytest.mark.parametrize("threadsafe", [False, True])
def test_arc_does_not_let_a_one_off_large_value_flush_the_hot_set(threadsafe: bool) -> None:
    arc = cache_of(("arc", threadsafe), 1000, 10_000, weigh=weigh_len)
    for _ in range(3):
        for i in range(80):
            if arc.get(i) is None:
                arc.put(i, b"h" * 100)  # 8,000 bytes of hot values
    assert arc.put("report", b"r" * 6_000) is False  # would need 40 hot values gone
    assert all(i in arc for i in range(80))
    # asked for again, it has proven reuse: admitted, at the hot set's expense
    assert arc.get("report") is None and arc.put("report", b"r" * 6_000)
    assert "report" in arc and arc.bytes <= 10_000
    lru = cache_of(("lru", threadsafe), 1000, 10_000, weigh=weigh_len)
    for i in range(80):
        lru.put(i, b"h" * 100)
        lru.get(i)
    lru.put("report", b"r" * 6_000)
    assert sum(i in lru for i in range(80)) == 40  # LRU gave up half the hot set for it


def test_make_cache_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="unknown policy 'fifo'; expected one of lru, lfu, arc"):
        make_cache("fifo", 10, name="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache 'x': max_entries must be an integer >= 1, got 0"):
        make_cache("lru", 0, name="x")
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 1 or None"):
        make_cache("arc", 10, -5, name="x")


@pytest.mark.parametrize("policy", POLICIES)
def test_threads_sharing_a_threadsafe_cache_keep_it_consistent(policy: str) -> None:
    cache = cache_of((policy, True), 64, 64 * 50, weigh=weigh_len)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(5_000):
                key = int(rng.paretovariate(1.2)) % 200
                op = rng.random()
                if op < 0.6:
                    value = cache.get(key)
                    assert value is None or value == bytes([key % 256]) * len(value)
                elif op < 0.95:
                    cache.put(key, bytes([key % 256]) * rng.randrange(1, 100))
                else:
                    cache.pop(key)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(cache) <= 64 and cache.bytes <= 64 * 50
    assert cache.bytes == sum(cache.weight(k) or 0 for k in cache)
