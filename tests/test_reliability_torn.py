"""Torn writes, exhaustively, and damage reported with its file and byte offset.

`test_log_recovery.py` cuts the active segment at bytes hypothesis picks; here the cut
goes through *every* byte of the active segment's last batch (and both sides of every
batch boundary before it), each time through the public open path, which must keep
exactly the whole batches before the cut; and through every byte of its last two
directory entries, which must lose nothing.
Then a bit flipped in a sealed segment must be reported by `cqrsflow log verify` with
the file and the byte offset in the message a person reads.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from log_events import Deposited, all_events, bank_layout, bank_payload, new_event, segments

from store import ArrowLog, Fsync, LogConfig, verify_log
from store.disk import entry_offset, read_entries

BATCHES = 6
CONFIG = LogConfig(partitions=1, segment_bytes=1 << 20, fsync=Fsync.NEVER)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log whose one active segment holds BATCHES batches of two events each."""
    data = tmp_path_factory.mktemp("torn")
    with ArrowLog.open(data, bank_layout(), CONFIG) as log:
        for b in range(BATCHES):
            log.append(
                [new_event(f"a{i}", b + 1, bank_payload(b + 1, b * 3 + i)) for i in range(2)]
            )
    return data


def whole_batches_kept(data: Path, batches: int) -> None:
    """Opening keeps exactly the first `batches` batches, and says what it cut."""
    with ArrowLog.open(data, bank_layout(), CONFIG) as log:
        events = all_events(log)
        assert [(e.aggregate_id, e.version) for e in events] == [
            (f"a{i}", b + 1) for b in range(batches) for i in range(2)
        ]
        assert log.recoveries == [] or log.recoveries[0].kept_batches == batches


def test_the_active_segment_cut_at_every_byte_of_its_last_batch_recovers_a_prefix(
    pristine: Path, tmp_path: Path
) -> None:
    seg = segments(pristine, 0)[-1]
    entries = read_entries(seg)
    assert len(entries) == BATCHES
    data, directory = seg.data.read_bytes(), seg.dir.read_bytes()
    ends = [int(e["offset"]) + int(e["length"]) for e in entries]
    last_start = int(entries[-1]["offset"])
    boundaries = {c for end in ends[:-1] for c in (end - 1, end, end + 1)}
    cuts = sorted(boundaries | set(range(last_start, len(data) + 1)))
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    target = segments(copy, 0)[-1]
    for i, cut in enumerate(cuts):
        target.data.write_bytes(data[:cut])
        target.dir.write_bytes(directory)
        whole_batches_kept(copy, sum(end <= cut for end in ends))
        if i % 97 == 0:  # and the log takes appends where it was cut
            with ArrowLog.open(copy, bank_layout(), CONFIG) as log:
                log.append([new_event("a0", log.last_version("a0") + 1, Deposited(1))])
            assert list(verify_log(copy)) == []
    assert len(cuts) > 1000


def test_the_directory_cut_at_every_byte_of_its_last_entries_loses_no_batch(
    pristine: Path, tmp_path: Path
) -> None:
    """The directory is fsynced lazily: its entries are re-created from the batches,
    which carry their own checksums."""
    seg = segments(pristine, 0)[-1]
    data, directory = seg.data.read_bytes(), seg.dir.read_bytes()
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    target = segments(copy, 0)[-1]
    for cut in range(entry_offset(BATCHES - 2), len(directory) + 1):
        target.data.write_bytes(data)
        target.dir.write_bytes(directory[:cut])
        whole_batches_kept(copy, BATCHES)
        assert target.dir.read_bytes() == directory


def test_log_verify_names_the_file_and_byte_of_a_flipped_bit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = LogConfig(partitions=1, segment_bytes=4096, fsync=Fsync.NEVER)
    with ArrowLog.open(data, bank_layout(), config) as log:
        for b in range(20):
            log.append(
                [new_event(f"a{i}", b + 1, bank_payload(b + 1, b * 3 + i)) for i in range(2)]
            )
    sealed = segments(data, 0)[0]
    entries = read_entries(sealed)
    middle = len(entries) // 2
    start = int(entries[middle]["offset"])
    flipped = start + int(entries[middle]["length"]) // 2
    raw = bytearray(sealed.data.read_bytes())
    raw[flipped] ^= 0x10
    sealed.data.write_bytes(bytes(raw))
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "log", "verify", "--data", str(data)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 1
    # The batch holding the bit is named by its first byte: a CRC names a batch, not a bit.
    message = f"{sealed.data} at byte {start}: batch {middle}: checksum mismatch"
    assert message in done.stdout, done.stdout
