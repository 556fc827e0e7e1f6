"""Snapshots: saved and loaded, stale ones discarded, damaged ones ignored."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from store import SnapshotPolicy, SnapshotStore, fingerprint


@dataclass
class Account:
    owner: str
    balance: int


@dataclass
class AccountV2:
    owner: str
    balance: int
    overdraft_limit: int


def test_a_saved_snapshot_loads_back(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    tag = fingerprint(Account)
    store.save("acct/1 ü", 42, asdict(Account("ann", 10)), tag)
    found = store.load("acct/1 ü", tag)
    assert found is not None
    assert (found.aggregate_id, found.version, Account(**found.state)) == (
        "acct/1 ü",
        42,
        Account("ann", 10),
    )
    assert store.load("someone else", tag) is None


def test_a_newer_snapshot_replaces_the_older(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    tag = fingerprint(Account)
    store.save("a", 1, {"owner": "x", "balance": 1}, tag)
    store.save("a", 2, {"owner": "x", "balance": 2}, tag)
    found = store.load("a", tag)
    assert found is not None and found.version == 2


def test_a_snapshot_of_another_state_shape_is_discarded(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save("a", 7, asdict(Account("ann", 10)), fingerprint(Account))
    assert fingerprint(Account) != fingerprint(AccountV2)
    assert store.load("a", fingerprint(AccountV2)) is None
    assert store.discarded == 1


def test_a_damaged_snapshot_is_ignored(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    tag = fingerprint(Account)
    store.save("a", 7, asdict(Account("ann", 10)), tag)
    [path] = list(tmp_path.rglob("*.snap"))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    assert store.load("a", tag) is None
    path.write_bytes(bytes(raw[:5]))
    assert store.load("a", tag) is None
    assert store.discarded == 2


@given(st.integers(1, 1000), st.integers(0, 5000), st.integers(1, 300))
def test_policy_is_due_exactly_when_a_multiple_is_crossed(every: int, before: int, n: int) -> None:
    policy = SnapshotPolicy(every=every)
    crossed = any(v % every == 0 for v in range(before + 1, before + n + 1))
    assert policy.due(before, before + n) == crossed
