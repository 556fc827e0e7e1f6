"""The decisions journal: records found again by location, torn tails cut, two generations."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store import Journal

RECORDS = st.lists(
    st.tuples(st.text(max_size=20), st.sampled_from(["rejected", "accepted"]), st.integers(0, 9)),
    min_size=1,
    max_size=8,
)


def test_records_are_found_again_by_location_after_reopening(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    first = journal.append([("c1", "rejected", "too poor"), ("c2", "accepted", None)])
    second = journal.append([("c3", "rejected", "closed")])
    journal.sync()
    journal.close()
    again = Journal(tmp_path)
    assert [(loc, rec) for _, loc, rec in again.records()] == [
        (first[0], ["c1", "rejected", "too poor"]),
        (first[1], ["c2", "accepted", None]),
        (second[0], ["c3", "rejected", "closed"]),
    ]
    assert again.read(first[1]) == ["c2", "accepted", None]


@settings(max_examples=40, deadline=None)
@given(records=RECORDS, data=st.data())
def test_a_file_cut_anywhere_keeps_its_whole_records_and_takes_more(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[str, str, int]],
    data: st.DataObject,
) -> None:
    directory = tmp_path_factory.mktemp("journal")
    journal = Journal(directory)
    locations = journal.append(records)
    journal.close()
    path = directory / "0.journal"
    raw = path.read_bytes()
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    path.write_bytes(raw[:cut])
    ends = [*locations[1:], len(raw)]
    whole = sum(end <= cut for end in ends)
    reopened = Journal(directory)
    assert [rec for *_, rec in reopened.records()] == [list(r) for r in records[:whole]]
    assert path.stat().st_size == (ends[whole - 1] if whole else 0)  # the torn tail is cut
    [location] = reopened.append([("next", "rejected", 0)])
    assert reopened.read(location) == ["next", "rejected", 0]
    reopened.close()


def test_a_damaged_record_ends_the_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    locations = journal.append([("a", 1), ("b", 2), ("c", 3)])
    journal.close()
    path = tmp_path / "0.journal"
    raw = bytearray(path.read_bytes())
    raw[locations[1] + 9] ^= 0xFF  # inside the second record's bytes
    path.write_bytes(bytes(raw))
    assert [rec for *_, rec in Journal(tmp_path).records()] == [["a", 1]]


def test_rotation_keeps_two_generations(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([("g0",)])
    journal.rotate()
    [kept] = journal.append([("g1",)])
    journal.rotate()
    journal.append([("g2",)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.journal", "2.journal"]
    journal.close()
    again = Journal(tmp_path)
    assert [(gen, rec) for gen, _, rec in again.records()] == [(1, ["g1"]), (2, ["g2"])]
    assert again.read(kept) == ["g1"]
