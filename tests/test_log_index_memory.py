"""Resident memory of reads through the sealed indexes and segments.

A cold batch looks its aggregates up in every sealed index and gathers their rows from
every sealed segment: pages those reads map in must not stay resident once a read is
done, or they add up to every index and segment of a large log. Checked on real files
by the mapping's resident size in /proc/self/smaps; page cache does not count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from log_events import bank_layout, bank_payload, new_event

from store import ArrowLog, LogConfig, stream_key
from store.disk import SealedIndex, SegmentFiles, SegmentReader, write_index

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/smaps")


def resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path`."""
    total, mapped = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and not head[0].endswith(":"):
                mapped = len(head) == 6 and head[5].strip() == str(path)
            elif mapped and head[0] == "Rss:":
                total += int(head[1])
    return total


LAYOUT = bank_layout()  # its aggregate type 0 is the batches' type: "Account"


def key(agg: str) -> str:
    """The stream key of an Account `agg`: the index is keyed by streams."""
    return stream_key("Account", agg)


def batches_of(ids: list[str], per_batch: int = 1000) -> list[pa.RecordBatch]:
    """Batches laid out as the index builder reads them: ids in column 1, aggregate
    types in 2, versions in 3."""
    seen: dict[str, int] = {}
    versions = []
    for agg in ids:
        seen[agg] = seen.get(agg, 0) + 1
        versions.append(seen[agg])
    out = []
    for start in range(0, len(ids), per_batch):
        n = len(ids[start : start + per_batch])
        out.append(
            pa.record_batch(
                [
                    pa.array(range(start, start + n), pa.int64()),
                    pa.array(ids[start : start + n], pa.string()),
                    pa.array([0] * n, pa.int8()),
                    pa.array(versions[start : start + n], pa.int64()),
                ],
                names=["position", "aggregate_id", "aggregate_type", "version"],
            )
        )
    return out


def expected_rows(ids: list[str]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for row, agg in enumerate(ids):
        rows.setdefault(agg, []).append(row)
    return rows


@pytest.fixture
def big_index(tmp_path: Path) -> tuple[SealedIndex, list[str]]:
    rng = np.random.default_rng(7)
    ids = [f"acct-{n:07d}" for n in rng.integers(0, 80_000, 200_000).tolist()]
    path = tmp_path / "00000000000000000000.idx"
    write_index(path, batches_of(ids), LAYOUT)
    return SealedIndex(path), ids


@linux_only
def test_lookups_leave_no_index_pages_resident(big_index: tuple[SealedIndex, list[str]]) -> None:
    index, ids = big_index
    wanted = [*map(key, sorted(set(ids))[::97]), key("acct-9999999"), key("not-there")]
    found = index.lookup_many(wanted)
    assert len(found) == len(wanted) - 2
    assert resident_kb(index.path) == 0
    rows, last, hot_start = index.lookup(key(ids[0]))
    assert len(rows) and last == len(rows) and hot_start == -1
    assert resident_kb(index.path) == 0


def test_lookup_many_agrees_with_lookup(big_index: tuple[SealedIndex, list[str]]) -> None:
    index, ids = big_index
    rows_of = expected_rows(ids)
    wanted = [*map(key, list(rows_of)[:3000]), key("acct-9999999"), key("x" * 40), ""]
    found = index.lookup_many(wanted)
    assert [stream for stream, *_ in found] == [key(a) for a in list(rows_of)[:3000]]
    for stream, rows, last, hot_start in found:
        agg = stream.partition("\x00")[0]
        assert rows.dtype == np.int64
        assert rows.tolist() == rows_of[agg]
        assert (last, hot_start) == (len(rows_of[agg]), -1)
        single = index.lookup(stream)
        assert single[0].tolist() == rows.tolist() and single[1:] == (last, hot_start)
    assert index.lookup_many([key("acct-9999999"), key("x" * 40)]) == []
    assert index.lookup_many([]) == []


def test_index_of_ids_of_different_lengths_and_scripts(tmp_path: Path) -> None:
    # Ids of 0 to 14 bytes, some not ASCII, read from a sliced column: each keeps its
    # own rows, and the keys are the stream keys' UTF-8 bytes in byte order.
    base = ["", "a", "b", "ab", "zz", "ü", "üb", "€uro", "a-much-longer"]
    ids = [base[(n * 7) % len(base)] + ("" if n % 3 else "✓") for n in range(400)]
    batches = batches_of(["pad", *ids], per_batch=64)
    batches[0] = batches[0].slice(1)  # an offset into the id column's buffers
    path = tmp_path / "x.idx"
    write_index(path, batches, LAYOUT)
    index = SealedIndex(path)
    assert index.keys.tolist() == sorted({key(a).encode() for a in ids})
    for agg, rows in expected_rows(ids).items():
        found, last, _ = index.lookup(key(agg))
        assert found.tolist() == rows and last == len(rows)


def test_an_empty_segment_has_an_empty_index(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    write_index(path, [], LAYOUT)
    index = SealedIndex(path)
    assert len(index) == 0
    assert index.lookup_many([key("a"), key("b")]) == []


@linux_only
def test_a_gather_leaves_no_segment_pages_resident(tmp_path: Path) -> None:
    log = ArrowLog.open(tmp_path, bank_layout(), LogConfig(partitions=1))
    events = [
        new_event(f"acct-{n % 500}", n // 500 + 1, bank_payload(n // 500 + 1, n))
        for n in range(40_000)
    ]
    for start in range(0, len(events), 2000):
        log.append(events[start : start + 2000])
    log.close()
    segment = SegmentReader(SegmentFiles(tmp_path / "log" / "0", 0))
    segment.refresh()
    every = pa.Table.from_batches([segment.batch(i) for i in range(len(segment.entries))])
    segment.release()
    before = resident_kb(segment.files.data)  # the closed log's own map may hold a page
    assert before <= 8
    rows = np.arange(3, every.num_rows, 499, dtype=np.int64)
    taken = segment.take(rows, None)
    assert resident_kb(segment.files.data) == before
    wanted = every.take(pa.array(rows))
    for c in (0, 1, 3, 5):  # position, aggregate id, version, event id
        assert taken.column(c).to_pylist() == wanted.column(c).to_pylist()
