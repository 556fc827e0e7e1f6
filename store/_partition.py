"""One partition of the log: its segments, its writer lock, appends and reads.

A partition is a directory of segments named by their first position. All but the
last are sealed (immutable, with a persisted index); the last is the active one. One
process at a time may write a partition, enforced by an exclusive ``flock`` on its
``LOCK`` file; any number of readers may read it meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store._errors import (
    LockedError,
    VersionConflict,
    translate_os_error,
)
from store._evolve import Conversion, conversion
from store._index import ActiveIndex, SealedIndex, write_index
from store._layout import Layout
from store._metrics import FSYNC_SECONDS, ROTATIONS, TORN_BATCHES, count_appended
from store._model import Fsync, LogConfig, NewEvent
from store._segment import (
    Recovery,
    SegmentFiles,
    SegmentReader,
    SegmentWriter,
    fsync_dir,
    read_notes,
    recover,
)
from store._streams import aggregate_id_of
from store._versions import SealedVersions


def list_segments(directory: Path) -> list[int]:
    """First positions of the segments in a partition directory, in order."""
    found: list[int] = []
    if not directory.exists():  # a partition another process has not created yet
        return found
    for name in os.listdir(directory):
        stem, dot, ext = name.partition(".")
        if dot and ext == "arrows" and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


class PartitionReader:
    """Reads one partition; safe while another process writes it.

    Threads may share one for scans (`batches`, `refresh`, `next_position`): `serve`'s
    follower refreshes it while queries scan it. The index lookups are for one thread.
    """

    def __init__(self, directory: Path, number: int, classes: Layout | None):
        self.directory = directory
        self.number = number
        self.classes = classes
        self.segments: list[SegmentReader] = []
        self._sealed_indexes: dict[int, SealedIndex] = {}
        # The active segment's index is built lazily, on the first read that needs it,
        # so that appending pays nothing for it: this counts the batches folded in.
        self._active_index = ActiveIndex()
        self._rows_folded = 0
        self._stale = False
        # Per segment layout (by id): how its batches are read (see `_reading`).
        self._readings: dict[int, tuple[Layout, Conversion | None, Layout]] = {}
        self._lock = threading.Lock()  # refreshes take turns: each may add a segment
        self.refresh()

    # -- segments -----------------------------------------------------------

    def refresh(self) -> None:
        """See segments and batches committed since the last call."""
        with self._lock:
            known = {s.files.first_position for s in self.segments}
            for first in list_segments(self.directory):
                if first not in known:
                    if self.segments:
                        self._seal_reader(self.segments[-1])
                    self.segments.append(SegmentReader(SegmentFiles(self.directory, first)))
            for seg in list(self.segments):
                seg.refresh()

    def _seal_reader(self, seg: SegmentReader) -> None:
        """The active segment was rotated: it is sealed, and a new one is active."""
        seg.refresh()
        seg.sealed = True
        self._active_index = ActiveIndex()
        self._rows_folded = 0

    def wrote(self) -> None:
        """The writer in this process appended: refresh before the next read."""
        self._stale = True

    def fold_written(
        self, segment: int, batch: int, first_row: int, keys: list[str], versions: list[int]
    ) -> None:
        """The writer in this process appended `batch` of the active segment (the one
        starting at position `segment`): fold it into the active index now, with the
        writer's own stream keys, instead of decoding them back from the segment later.
        Skipped unless the index has folded exactly the batches before it."""
        seg = self.segments[-1] if self.segments else None
        if seg is None or seg.files.first_position != segment or self._rows_folded != batch:
            return
        self._active_index.add(keys, versions, first_row)
        self._rows_folded += 1

    def _catch_up(self) -> None:
        if self._stale and self.segments:
            self.segments[-1].refresh()
            self._stale = False

    @property
    def next_position(self) -> int:
        self._catch_up()
        if not self.segments:
            return 0
        last = self.segments[-1]
        return last.files.first_position + last.rows

    def _reading(self, seg: SegmentReader) -> tuple[Layout, Conversion | None]:
        """The layout the segment's batches are read as (this reader's classes', or the
        segment's own without classes) and the conversion to it, if any. Cached per
        segment layout: building a conversion costs milliseconds."""
        layout = seg.layout
        assert layout is not None
        hit = self._readings.get(id(layout))
        if hit is not None:
            return hit[0], hit[1]
        if self.classes is None:
            found: tuple[Layout, Conversion | None] = (layout, None)
        else:
            found = (self.classes, conversion(self.classes, layout, str(seg.files.data)))
        self._readings[id(layout)] = (*found, layout)  # keeps `layout` alive: ids are reused
        return found

    def check_readable(self) -> None:
        """Raise SchemaError now if a segment holds events this reader's classes cannot read."""
        if self.classes is not None:
            for seg in self.segments:
                if seg.layout is not None:
                    self._reading(seg)

    def to_read(self, seg: SegmentReader, batch: pa.RecordBatch) -> pa.RecordBatch:
        """An on-disk batch of `seg` as readers see it: in the reader's classes' layout
        (converted from the segment's, if it differs), dictionary columns decoded."""
        layout, convert = self._reading(seg)
        if convert is not None:
            batch = convert.convert(batch)
        return layout.to_read(batch)

    # -- full reads -----------------------------------------------------------

    def notes(self, from_position: int = 0) -> Iterator[tuple[int, bytes]]:
        """The notes appended with batches (see `ArrowLog.append_partition`) of the
        batches that end past `from_position`: (the batch's first position, the note)."""
        self._catch_up()
        segments = list(self.segments)
        for seg, after in zip(segments, [*segments[1:], None], strict=True):
            if after is None or after.files.first_position > from_position:
                yield from read_notes(seg.files, from_position)

    def batches(
        self,
        from_position: int = 0,
        event_types: Sequence[str] | None = None,
        since: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Committed batches from `from_position`, skipping batches by zone map."""
        self._catch_up()
        for seg in list(self.segments):
            if seg.files.first_position + seg.rows <= from_position or not len(seg.entries):
                continue
            layout, convert = self._reading(seg)
            entries = seg.entries
            wanted_codes = None
            keep = np.ones(len(entries), dtype=bool)
            if event_types is not None:  # by the segment's own codes: its zone maps' too
                if convert is not None:
                    wanted_codes = convert.disk_codes(event_types)
                else:
                    names = [et.name for et in layout.event_types]
                    wanted_codes = [names.index(t) for t in event_types if t in names]
                mask = 0
                for code in wanted_codes:
                    mask |= 1 << (code % 64)
                keep &= (entries["types"] & np.uint64(mask)) != 0
            if since is not None:
                keep &= entries["max_ts"] >= since
            ends = entries["first_position"] + entries["count"].astype(np.int64)
            keep &= ends > from_position
            for i in np.flatnonzero(keep).tolist():
                batch = seg.batch(i)
                first = int(entries[i]["first_position"])
                if first < from_position:
                    batch = batch.slice(from_position - first)
                if wanted_codes is not None:
                    batch = batch.filter(
                        pc.is_in(batch.column(4), pa.array(wanted_codes, pa.int16()))
                    )
                if since is not None:
                    batch = batch.filter(
                        pc.greater_equal(
                            batch.column(8), pa.scalar(since, batch.schema.field(8).type)
                        )
                    )
                if batch.num_rows:
                    yield self.to_read(seg, batch)

    # -- the per-aggregate index ---------------------------------------------

    def sealed_versions(self) -> SealedVersions:
        """Every aggregate's last version in the sealed segments."""
        return SealedVersions.build([self._sealed_index(seg) for seg in self.segments[:-1]])

    def active_versions(self) -> dict[str, int]:
        """Every stream's last version in the active segment, by stream key."""
        self._catch_up()
        versions: dict[str, int] = {}
        if self.segments:
            seg = self.segments[-1]
            for i in range(len(seg.entries)):
                batch = seg.batch(i)
                keys = self._keys(seg, batch)
                versions.update(zip(keys, batch.column(3).to_pylist(), strict=True))
        return versions

    @staticmethod
    def _keys(seg: SegmentReader, batch: pa.RecordBatch) -> list[str]:
        assert seg.layout is not None
        return seg.layout.batch_keys(batch).to_pylist()  # type: ignore[no-any-return]

    def _active_rows(self, stream: str) -> tuple[np.ndarray, int, int]:
        self._catch_up()
        seg = self.segments[-1]
        for i in range(self._rows_folded, len(seg.entries)):
            batch = seg.batch(i)
            self._active_index.add(
                self._keys(seg, batch), batch.column(3).to_pylist(), int(seg.starts[i])
            )
        self._rows_folded = len(seg.entries)
        return self._active_index.lookup(stream)

    def _lookup(self, seg: SegmentReader, stream: str) -> tuple[np.ndarray, int, int]:
        if seg is self.segments[-1]:
            return self._active_rows(stream)
        return self._sealed_index(seg).lookup(stream)

    def _sealed_index(self, seg: SegmentReader) -> SealedIndex:
        first = seg.files.first_position
        found = self._sealed_indexes.get(first)
        if found is None:
            try:
                found = SealedIndex(seg.files.index)
            except (OSError, KeyError, pa.ArrowException):  # missing, damaged or older
                found = self._rebuild_index(seg)
            self._sealed_indexes[first] = found
        return found

    def _rebuild_index(self, seg: SegmentReader) -> SealedIndex:
        """A sealed segment without a readable index: derive it from the segment."""
        assert seg.layout is not None
        write_index(seg.files.index, [seg.batch(i) for i in range(len(seg.entries))], seg.layout)
        seg.release()
        return SealedIndex(seg.files.index)

    def last_version(self, stream: str) -> int:
        """The last version of the stream with this key (0: none)."""
        self._catch_up()
        for seg in reversed(self.segments):  # a reader looks only this stream up
            rows, last, _ = self._lookup(seg, stream)
            if len(rows):
                return last
        return 0

    def read_streams(self, wanted: dict[str, int]) -> list[pa.RecordBatch]:
        """Streams' events (stream key -> from version), one gather per segment, newest
        segment first until each stream's versions are covered. Rows come in position
        order, so each stream's events are in version order."""
        self._catch_up()
        remaining: dict[str, int | None] = dict.fromkeys(wanted)
        collected: list[tuple[SegmentReader, list[pa.RecordBatch]]] = []
        for seg in reversed(self.segments):
            if not remaining:
                break
            if seg is self.segments[-1]:
                found = [(a, *self._active_rows(a)) for a in remaining]
            else:
                found = self._sealed_index(seg).lookup_many(list(remaining))
            scattered: list[np.ndarray] = []
            scattered_from: list[str] = []
            batches: list[pa.RecordBatch] = []
            for agg, rows, last, hot_start in found:
                if not len(rows):
                    continue
                left = remaining[agg]
                if left is None:
                    left = last - max(wanted[agg], 1) + 1  # versions are gap-free
                skip = max(len(rows) - left, 0)
                if left > 0 and hot_start >= 0:
                    batches.append(
                        self._sealed_index(seg).hot_rows(hot_start + skip, len(rows) - skip)
                    )
                elif left > 0:
                    scattered.append(rows[skip:])
                    scattered_from.append(agg)
                left -= len(rows) - skip
                if left <= 0:
                    del remaining[agg]
                else:
                    remaining[agg] = left
            if scattered:
                # One stream's rows need not have its id and type read at all.
                only = aggregate_id_of(scattered_from[0]) if len(scattered_from) == 1 else None
                # (`take` drops the pages it mapped in: rows are copied out.)
                batches.append(seg.take(np.sort(np.concatenate(scattered)), only))
            if len(batches) > 1:  # hot slices and gathered rows: back into position order
                merged = pa.Table.from_batches(batches).sort_by("position").combine_chunks()
                batches = merged.to_batches()
            if batches:
                collected.append((seg, batches))
        collected.reverse()
        return [self.to_read(seg, b) for seg, batches in collected for b in batches]

    def read_stream(self, stream: str, from_version: int = 1) -> list[pa.RecordBatch]:
        return self.read_streams({stream: from_version})


class PartitionWriter:
    """The single writer of one partition."""

    def __init__(self, directory: Path, number: int, layout: Layout, config: LogConfig):
        self.directory = directory
        self.number = number
        self.layout = layout
        self.config = config
        self.recoveries: list[Recovery] = []
        self._type_names = tuple(t.name for t in layout.event_types)
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_partition(directory, number)
        try:
            self._open()
        except BaseException:
            active: SegmentWriter | None = getattr(self, "active", None)
            if active is not None:
                active.close()
            os.close(self._lock_fd)
            raise
        self._last_sync = time.monotonic()
        self._dirty = False

    def _open(self) -> None:
        for stale in self.directory.glob("*.tmp"):  # a creation or index cut short
            stale.unlink(missing_ok=True)
        firsts = list_segments(self.directory)
        writer: SegmentWriter | None = None
        if firsts:
            files = SegmentFiles(self.directory, firsts[-1])
            # A segment that is active again (its rotation was cut short) has no index.
            files.index.unlink(missing_ok=True)
            files.index.with_suffix(".hot").unlink(missing_ok=True)
            on_disk, kept, report = recover(files)
            if report:
                self.recoveries.append(report)
                TORN_BATCHES.inc(max(report.dropped_batches, 1))
            if on_disk is None or (kept == 0 and not on_disk.same_as(self.layout)):
                writer = SegmentWriter.create(files, self.layout)
            else:
                writer = SegmentWriter(files, on_disk, entries=kept)
        else:
            writer = SegmentWriter.create(SegmentFiles(self.directory, 0), self.layout)
        self.active = writer
        self.reader = PartitionReader(self.directory, self.number, self.layout)
        self.sealed_versions = self.reader.sealed_versions()
        self.versions = self.reader.active_versions()  # the active segment's aggregates
        self.next_position = self.reader.next_position
        if not writer.layout.same_as(self.layout):
            self._rotate()  # the event classes changed: new segment, new schema

    # -- appends --------------------------------------------------------------

    def append(
        self, events: Sequence[NewEvent], note: bytes = b""
    ) -> tuple[Sequence[int | None], list[VersionConflict]]:
        """Write the events that follow their aggregates' versions, and the note with
        them if any are written; not yet synced.

        Returns a position per event (the existing one for an event already in the
        log, None for an event of a conflicting aggregate) and the conflicts.
        """
        first = self.next_position
        batch = self.layout.encode(events, first)
        keys = self.layout.stream_keys(events)
        versions = [e.version for e in events]
        if self._follows(keys, versions):  # the common case
            self._write(batch, keys, versions, note)
            # Later events of a stream overwrite earlier ones: the last version wins.
            self.versions.update(zip(keys, versions, strict=True))
            self._rotate_if_full()
            return range(first, first + len(events)), []
        return self._append_checked(events, keys, note)

    # Below this many events a plain loop checks versions faster than numpy's fixed
    # costs (~0.1 ms a batch, most of a small batch's append besides its fsync).
    _SMALL = 128

    def _follows(self, keys: list[str], versions: list[int]) -> bool:
        """Does every event follow its stream's last version, in batch order?"""
        if len(keys) < self._SMALL:
            get = self.versions.get
            seen: dict[str, int] = {}
            for agg, version in zip(keys, versions, strict=True):
                before = seen.get(agg)
                if before is None:
                    before = get(agg)
                    if before is None:
                        before = self.sealed_versions.get(agg)
                if version != before + 1:
                    return False
                seen[agg] = version
            return True
        # The log's last version for each event's aggregate: the active segment's dict
        # at C speed, then one binary search over the sealed ones for the rest.
        last = np.fromiter(map(self.versions.get, keys, repeat(-1)), np.int64, len(keys))
        missing = np.flatnonzero(last < 0)
        if len(missing):
            last[missing] = self.sealed_versions.get_many([keys[i] for i in missing.tolist()])
        # Each event's rank among its stream's events in this batch (0, 1, ...).
        codes = pa.array(keys, pa.string()).dictionary_encode().indices.to_numpy()
        counts = np.bincount(codes)
        starts = np.cumsum(counts) - counts
        rank = np.empty(len(codes), np.int64)
        rank[np.argsort(codes, kind="stable")] = np.arange(len(codes)) - np.repeat(starts, counts)
        return bool(np.array_equal(last + rank + 1, np.asarray(versions, np.int64)))

    def _append_checked(
        self, events: Sequence[NewEvent], keys: list[str], note: bytes
    ) -> tuple[Sequence[int | None], list[VersionConflict]]:
        """Event by event: idempotent re-appends, conflicts, and the rest written."""
        versions = self.versions
        seen: dict[str, int] = {}
        conflicts: dict[str, VersionConflict] = {}
        existing: dict[int, int] = {}
        for i, e in enumerate(events):
            agg = keys[i]
            last = seen.get(agg)
            if last is None:
                last = self.last_version(agg)
            if e.version == last + 1:
                seen[agg] = e.version
                continue
            position = self._existing(agg, e.version, e.event_id) if e.version <= last else None
            if position is not None:
                existing[i] = position
            elif agg not in conflicts:
                conflicts[agg] = VersionConflict(agg, e.version, last)
        if existing or conflicts:
            keep = [i for i in range(len(events)) if i not in existing and keys[i] not in conflicts]
            accepted = [events[i] for i in keep]
            for agg in conflicts:
                seen.pop(agg, None)
        else:
            keep = None
            accepted = list(events)
        first = self.next_position
        if accepted:
            self._write(self.layout.encode(accepted, first), note=note)
            versions.update(seen)
            self._rotate_if_full()
        if keep is None:
            return range(first, first + len(events)), []
        positions: list[int | None] = [None] * len(events)
        for offset, i in enumerate(keep):
            positions[i] = first + offset
        for i, position in existing.items():
            positions[i] = position
        return positions, list(conflicts.values())

    def _write(
        self,
        batch: pa.RecordBatch,
        keys: list[str] | None = None,
        versions: list[int] | None = None,
        note: bytes = b"",
    ) -> None:
        codes = batch.column(4).to_numpy()
        count_appended(self._type_names, codes)
        timestamps = batch.column(8).cast(pa.int64()).to_numpy()
        seg = self.active
        index, row = seg.batches, self.next_position - seg.files.first_position
        seg.append(batch, codes, timestamps, note)
        self._dirty = True
        self.next_position += batch.num_rows
        self.reader.wrote()
        if keys is not None and versions is not None:
            self.reader.fold_written(seg.files.first_position, index, row, keys, versions)

    def _rotate_if_full(self) -> None:
        if self.active.size >= self.config.segment_bytes:
            self._rotate()

    def last_version(self, stream: str) -> int:
        found = self.versions.get(stream)
        return found if found is not None else self.sealed_versions.get(stream)

    def _existing(self, stream: str, version: int, event_id: bytes) -> int | None:
        """The position of this very event if it is already in the log."""
        found = self.reader.read_stream(stream, version)
        if not found or found[0].column(3)[0].as_py() != version:
            return None
        if found[0].column(5)[0].as_py() != event_id:
            return None
        return int(found[0].column(0)[0].as_py())

    def sync(self) -> None:
        """Make every write so far durable, as the fsync policy asks."""
        policy = self.config.fsync
        if not self._dirty or policy is Fsync.NEVER:
            return
        now = time.monotonic()
        if (
            policy is Fsync.INTERVAL
            and (now - self._last_sync) * 1000 < self.config.fsync_interval_ms
        ):
            return
        self._fsync()
        self._last_sync = now
        self._dirty = False

    def _fsync(self) -> None:
        started = time.perf_counter()
        self.active.sync()
        FSYNC_SECONDS.observe(time.perf_counter() - started)

    def flush(self) -> None:
        """fsync now, whatever the policy: the stream and its directory."""
        self.active.sync_all()
        self._dirty = False

    def _rotate(self) -> None:
        """Seal the active segment (end marker, index) and start a new one.

        All or nothing: if a step fails (a full disk), the end marker and the index
        are cut again and the segment stays active, open and appended to, so this
        writer goes on once space returns (the next append tries the rotation again).
        """
        seg = self.active
        if seg.batches == 0:
            return self._replace_empty()
        reader_seg = self.reader.segments[-1]
        files = SegmentFiles(self.directory, self.next_position)
        seg.seal()  # on failure, cuts its end marker again itself
        try:
            reader_seg.refresh()
            batches = [reader_seg.batch(i) for i in range(len(reader_seg.entries))]
            write_index(seg.files.index, batches, seg.layout)
            reader_seg.release()  # indexing read every page of it; none is needed now
            _fsync_dir(self.directory, f"sealing {seg.files.data}")
            active = SegmentWriter.create(files, self.layout)
        except BaseException:  # whatever it was, appends must not go on past an end marker
            self._unseal(seg)
            raise
        seg.close()
        ROTATIONS.inc()
        self.active = active
        self.reader.refresh()
        # The sealed segment's aggregates move from the dict to the sealed arrays.
        self.sealed_versions = self.sealed_versions.merge(SealedIndex(seg.files.index))
        self.versions = {}
        self._dirty = False
        return None

    def _unseal(self, seg: SegmentWriter) -> None:
        """Undo a rotation cut short: the segment is active again, as recovery on the
        next open would make it (which also drops an index of the active segment)."""
        for path in (seg.files.index, seg.files.index.with_suffix(".hot")):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        seg.unseal()

    def _replace_empty(self) -> None:
        files = self.active.files
        fresh = SegmentWriter.create(files, self.layout)  # on failure the old one stays
        self.active.close()
        self.active = fresh
        self.reader.segments[-1] = SegmentReader(files)
        self.reader.segments[-1].refresh()

    def close(self) -> None:
        """fsync what was written and release the partition: the lock is released
        whatever the fsync says, so the log can be opened again."""
        if self._lock_fd < 0:
            return
        lock, self._lock_fd = self._lock_fd, -1
        try:
            self.flush()
        finally:
            try:
                self.active.close()
            finally:
                os.close(lock)


def _fsync_dir(directory: Path, what: str) -> None:
    try:
        fsync_dir(directory)
    except OSError as err:
        raise translate_os_error(err, what) from err


def lock_partition(directory: Path, number: int) -> int:
    """Take the partition's writer lock (a file descriptor to close to release it)."""
    path = directory / "LOCK"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise translate_os_error(err, f"opening {path}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockedError(
            f"partition {number} in {directory.parent} is already open for writing by "
            f"another process (pid {holder}); stop it first, or open the log read-only"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
