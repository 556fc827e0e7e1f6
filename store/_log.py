"""The Arrow event log: partitions on disk, appends routed by aggregate, reads merged.

``DIR/log/manifest.json`` records the format and the number of partitions (fixed
when the log is created, since an aggregate's partition is ``crc32(id) % partitions``);
``DIR/log/<partition>/`` holds that partition's segments.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from store._datadir import DataDir
from store._errors import ConcurrencyError, DataDirError, StoreError, VersionConflict
from store._frames import concat
from store._layout import EventType, Layout
from store._metrics import APPEND_SECONDS
from store._model import LogConfig, NewEvent, Positions, RecordedEvent
from store._partition import PartitionReader, PartitionWriter, lock_partition
from store._segment import Recovery
from store._streams import SEP, aggregate_id_of, stream_key

MANIFEST_FORMAT = 1


def partition_of(aggregate_id: str, partitions: int) -> int:
    """The partition an aggregate's events go to (stable across processes and versions)."""
    if partitions == 1:
        return 0
    return zlib.crc32(aggregate_id.encode()) % partitions


def read_manifest(root: Path) -> dict[str, int] | None:
    path = DataDir(root.parent).manifest
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise DataDirError(f"{path}: unreadable manifest ({err})") from err
    if doc.get("format") != MANIFEST_FORMAT:
        raise DataDirError(
            f"{path}: log format {doc.get('format')!r}, but this version of cqrsflow reads "
            f"format {MANIFEST_FORMAT}; use the cqrsflow version that wrote it, or upgrade"
        )
    return {"partitions": int(doc["partitions"])}


def log_dir(data_dir: str | Path) -> Path:
    return DataDir(data_dir).log


def check_writable(data_dir: str | Path) -> None:
    """Raise LockedError now if another process writes any partition of the log, so a
    flow fails before it starts rather than inside a worker."""
    root = log_dir(data_dir)
    manifest = read_manifest(root)
    if manifest is None:
        return
    for p in range(manifest["partitions"]):
        if (root / str(p)).exists():
            os.close(lock_partition(root / str(p), p))


def log_partitions(data_dir: str | Path) -> int | None:
    """The partition count of the log in `data_dir`, or None if there is no log yet."""
    manifest = read_manifest(log_dir(data_dir))
    return None if manifest is None else manifest["partitions"]


class LogReader:
    """Read-only view of a log; safe while a writer appends. Call `refresh` to see new events."""

    def __init__(self, partitions: Sequence[PartitionReader], layout: Layout | None):
        self._partitions = list(partitions)
        self.layout = layout
        self._decoder_cache: tuple[tuple[int, ...], Layout] | None = None

    @classmethod
    def open(cls, data_dir: str | Path, layout: Layout | None = None) -> LogReader:
        """Open `DIR/log` for reading; `layout` (optional) decodes payloads into classes."""
        root = log_dir(data_dir)
        manifest = read_manifest(root)
        if manifest is None:
            raise DataDirError(f"{root}: no event log here (expected {DataDir(data_dir).manifest})")
        readers = [PartitionReader(root / str(p), p, layout) for p in range(manifest["partitions"])]
        return cls(readers, layout)

    @property
    def partitions(self) -> int:
        return len(self._partitions)

    def partition(self, number: int) -> PartitionReader:
        return self._partitions[number]

    def refresh(self) -> None:
        for p in self._partitions:
            p.refresh()

    def check_readable(self) -> None:
        """Raise SchemaError now if the log holds an event this reader's classes cannot
        read (a type no class has, a field that changed without an upcaster), naming the
        type, the segment and the fix; without classes, every event is readable."""
        for p in self._partitions:
            p.check_readable()

    def watermarks(self) -> dict[int, int]:
        """The next position of each partition: everything below it is committed."""
        return {p.number: p.next_position for p in self._partitions}

    def read_all(
        self,
        from_position: int | Mapping[int, int] = 0,
        *,
        event_types: Sequence[str] | None = None,
        since: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Every committed event as Arrow batches, partition by partition.

        `from_position` is an offset for every partition or a per-partition mapping;
        `event_types` and `since` (UTC µs) keep only matching rows, and skip whole
        batches by their zone maps without reading them.
        """
        for p in self._partitions:
            start = (
                from_position if isinstance(from_position, int) else from_position.get(p.number, 0)
            )
            yield from p.batches(start, event_types, since)

    def aggregate_types(self) -> tuple[str, ...]:
        """The aggregate types of this reader's classes, or else of the log's segments."""
        if self.layout is not None:
            return self.layout.aggregate_types
        found = {
            a: None
            for p in self._partitions
            for seg in p.segments
            if seg.layout is not None
            for a in seg.layout.aggregate_types
        }
        return tuple(found)

    def stream(self, aggregate_id: str, aggregate_type: str | None = None) -> str:
        """The key of a stream (see `store.stream_key`). Without `aggregate_type`, a
        bare id names the stream of the log's only aggregate type, and a key itself."""
        if aggregate_type is not None:
            return stream_key(aggregate_type, aggregate_id)
        if SEP in aggregate_id:
            return aggregate_id
        types = self.aggregate_types()
        if len(types) == 1:
            return stream_key(types[0], aggregate_id)
        raise StoreError(
            f"stream {aggregate_id!r}: the log holds "
            + (f"several aggregate types ({', '.join(types)})" if types else "no events yet")
            + "; name its type: aggregate_type=..."
        )

    def read_stream(
        self, aggregate_id: str, from_version: int = 1, *, aggregate_type: str | None = None
    ) -> pa.Table:
        """One stream's events from `from_version`, in version order, via the index.
        A stream is an aggregate type and id (`aggregate_type` may be left out where
        the log holds one type only; `aggregate_id` may also be a stream key)."""
        key = self.stream(aggregate_id, aggregate_type)
        p = self._partitions[partition_of(aggregate_id_of(key), len(self._partitions))]
        table = concat(p.read_stream(key, from_version))
        if table is None:
            return (self.layout or _first_layout(self._partitions)).read_schema.empty_table()
        return table

    def read_streams(self, wanted: Mapping[str, int]) -> pa.Table:
        """Several streams' events at once, each from its own version (stream key, or
        a bare id where the log holds one aggregate type, -> from_version): in
        position order within each partition, so each stream's events are in version
        order."""
        by_partition: dict[int, dict[str, int]] = {}
        n = len(self._partitions)
        for stream, from_version in wanted.items():
            key = stream if SEP in stream else self.stream(stream)
            by_partition.setdefault(partition_of(aggregate_id_of(key), n), {})[key] = from_version
        batches = [
            b
            for p, part in sorted(by_partition.items())
            for b in self._partitions[p].read_streams(part)
        ]
        table = concat(batches)
        if table is None:
            return (self.layout or _first_layout(self._partitions)).read_schema.empty_table()
        return table

    def last_version(self, aggregate_id: str, *, aggregate_type: str | None = None) -> int:
        """A stream's last version, 0 if it has none (named as for `read_stream`)."""
        key = self.stream(aggregate_id, aggregate_type)
        p = self._partitions[partition_of(aggregate_id_of(key), len(self._partitions))]
        return p.last_version(key)

    def decode(self, data: pa.Table | pa.RecordBatch) -> list[RecordedEvent]:
        """Python event objects for rows read from this log."""
        layout = self._decoder()
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        out: list[RecordedEvent] = []
        for batch in table.to_batches():
            if batch.num_rows:
                by_partition = partition_of(batch.column(1)[0].as_py(), len(self._partitions))
                out.extend(layout.decode(batch, by_partition))
        return out

    def _decoder(self) -> Layout:
        """This reader's classes, which every batch it reads is in (see `store._evolve`);
        without classes, every event type of every segment (newest wins), decoding
        payloads as dicts.

        Cached by the segments' layouts: building a Layout costs milliseconds, and
        decode runs once per aggregate rehydrated."""
        if self.layout is not None:
            return self.layout
        layouts = [
            (p, seg.layout)
            for p in self._partitions
            for seg in p.segments
            if seg.layout is not None
        ]
        key = tuple(id(layout) for _, layout in layouts)
        if self._decoder_cache is not None and self._decoder_cache[0] == key:
            return self._decoder_cache[1]
        found: dict[str, EventType] = {}
        for _, layout in layouts:
            found.update((et.name, et) for et in layout.event_types)
        if not found:
            return _first_layout(self._partitions)
        decoder = Layout(list(found.values()))
        self._decoder_cache = (key, decoder)
        return decoder


def _first_layout(partitions: Sequence[PartitionReader]) -> Layout:
    for p in partitions:
        for seg in p.segments:
            if seg.layout is not None:
                return seg.layout
    raise StoreError("the log has no segments yet, so its layout is unknown")


class ArrowLog(LogReader):
    """The event log, open for writing. One writer per partition, across processes."""

    def __init__(
        self,
        root: Path,
        layout: Layout,
        config: LogConfig,
        writers: dict[int, PartitionWriter],
        partitions: int,
    ):
        readers = [
            writers[p].reader if p in writers else PartitionReader(root / str(p), p, layout)
            for p in range(partitions)
        ]
        super().__init__(readers, layout)
        self.root = root
        self.config = config
        self._writers = writers
        self._pool = ThreadPoolExecutor(len(writers)) if len(writers) > 1 else None

    @classmethod
    def open(  # type: ignore[override]
        cls,
        data_dir: str | Path,
        layout: Layout,
        config: LogConfig | None = None,
        *,
        only: int | None = None,
    ) -> ArrowLog:
        """Open (creating if needed) the log in `DIR/log`, recovering torn tails.

        With `only`, just that partition is opened for writing (the others can be
        read): how a shard of a dataflow owns its partition while other processes
        own theirs.
        """
        config = config or LogConfig()
        root = log_dir(data_dir)
        manifest = read_manifest(root)
        if manifest is None:
            partitions = config.partitions or 1
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f"manifest.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "partitions": partitions}))
            tmp.replace(DataDir(data_dir).manifest)
        else:
            partitions = manifest["partitions"]
            if config.partitions is not None and config.partitions != partitions:
                raise DataDirError(
                    f"{root} has {partitions} partitions, but {config.partitions} were asked "
                    "for; the count is fixed when a log is created (omit it to use the log's)"
                )
        if only is not None and not 0 <= only < partitions:
            raise DataDirError(f"partition {only}: the log has partitions 0 to {partitions - 1}")
        writers: dict[int, PartitionWriter] = {}
        try:
            for p in range(partitions) if only is None else (only,):
                writers[p] = PartitionWriter(root / str(p), p, layout, config)
        except BaseException:
            for w in writers.values():
                w.close()
            raise
        return cls(root, layout, config, writers, partitions)

    @property
    def recoveries(self) -> list[Recovery]:
        """Torn tails cut off when the log was opened."""
        return [r for w in self._writers.values() for r in w.recoveries]

    def watermarks(self) -> dict[int, int]:
        """As `LogReader.watermarks`; a partition written here answers from its
        writer, without re-reading (and re-mapping) the segment it just appended to."""
        found = super().watermarks() if len(self._writers) < len(self._partitions) else {}
        found.update({p: w.next_position for p, w in self._writers.items()})
        return dict(sorted(found.items()))

    def last_version(self, aggregate_id: str, *, aggregate_type: str | None = None) -> int:
        key = self.stream(aggregate_id, aggregate_type)
        p = partition_of(aggregate_id_of(key), len(self._partitions))
        writer = self._writers.get(p)
        if writer is not None:  # the writer knows without reading
            return writer.last_version(key)
        return self._partitions[p].last_version(key)

    def append(self, events: Sequence[NewEvent]) -> Positions:
        """Append a batch; durable under the fsync policy when this returns.

        Raises ConcurrencyError when an aggregate's events do not follow its last
        version; the other aggregates' events are appended all the same.
        """
        if not events:
            return Positions(0, ())
        if self.partitions == 1:
            return self.append_partition(0, events)
        started = time.perf_counter()
        positions, conflicts = self._append_partitioned(events, self.partitions)
        APPEND_SECONDS.observe(time.perf_counter() - started)
        if conflicts:
            raise ConcurrencyError(conflicts, positions)
        return positions

    def append_partition(
        self, partition: int, events: Sequence[NewEvent], note: bytes = b""
    ) -> Positions:
        """Append events that all belong to `partition`: the caller routed them with
        `partition_of`, as a dataflow's shard does. Otherwise as `append`.

        `note`, opaque bytes, is kept with the batch (in its Arrow custom metadata, which
        other readers ignore), as durable as its events, if any of them are written;
        `partition(p).notes(from_position)` reads the notes back. A shard keeps there
        the answers to the batch's commands that appended nothing."""
        writer = self._writer(partition)
        started = time.perf_counter()
        offsets, conflicts = writer.append(events, note)
        writer.sync()
        APPEND_SECONDS.observe(time.perf_counter() - started)
        positions = Positions(partition, offsets)
        if conflicts:
            raise ConcurrencyError(conflicts, positions)
        return positions

    def _writer(self, partition: int) -> PartitionWriter:
        try:
            return self._writers[partition]
        except KeyError:
            raise StoreError(
                f"partition {partition} is not open for writing here (opened with only={next(iter(self._writers))})"
            ) from None

    def _append_partitioned(
        self, events: Sequence[NewEvent], n: int
    ) -> tuple[Positions, list[VersionConflict]]:
        groups: dict[int, list[int]] = {}
        for i, e in enumerate(events):
            groups.setdefault(partition_of(e.aggregate_id, n), []).append(i)
        partitions = [0] * len(events)
        offsets: list[int | None] = [None] * len(events)
        conflicts: list[VersionConflict] = []
        for p, idx in groups.items():
            found_offsets, found = self._writer(p).append([events[i] for i in idx])
            conflicts.extend(found)
            for i, o in zip(idx, found_offsets, strict=True):
                partitions[i] = p
                offsets[i] = o
        positions = Positions(partitions, offsets)
        # Group commit: one fsync per touched partition, all at once (fsync drops the GIL).
        touched = [self._writers[p] for p in groups]
        if self._pool is not None and len(touched) > 1:
            list(self._pool.map(PartitionWriter.sync, touched))
        else:
            for w in touched:
                w.sync()
        return positions, conflicts

    def flush(self) -> None:
        """fsync everything written so far, whatever the policy."""
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        """Close every partition (releasing its lock) even if one fails to; then raise
        the first failure."""
        failed: BaseException | None = None
        for w in self._writers.values():
            try:
                w.close()
            except BaseException as err:  # re-raised below, once every lock is released
                failed = failed or err
        if self._pool is not None:
            self._pool.shutdown()
        if failed is not None:
            raise failed

    def __enter__(self) -> ArrowLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
