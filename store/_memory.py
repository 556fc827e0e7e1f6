"""The in-memory event log: the executable specification of the log's contract.

It keeps every append as one Arrow batch in a list and answers every question by
looking at all of them. It is slow on purpose and short enough to read in one go;
the conformance suite in ``tests/log_contract.py`` runs against it and against the
Arrow log, so the two must agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from store._errors import ConcurrencyError, VersionConflict
from store._layout import Layout
from store._log import partition_of
from store._model import NewEvent, Position, Positions, RecordedEvent
from store._streams import SEP, aggregate_id_of, aggregate_type_of, stream_key


class MemoryLog:
    """A log held in memory; same behaviour as `ArrowLog`, none of its speed."""

    def __init__(self, layout: Layout, partitions: int = 1):
        self.layout = layout
        self.partitions = partitions
        self._batches: list[list[pa.RecordBatch]] = [[] for _ in range(partitions)]
        self._versions: dict[str, int] = {}
        self._where: dict[tuple[str, int], tuple[bytes, Position]] = {}

    def watermarks(self) -> dict[int, int]:
        return {p: sum(b.num_rows for b in batches) for p, batches in enumerate(self._batches)}

    def append(self, events: Sequence[NewEvent]) -> Positions:
        conflicts: dict[str, VersionConflict] = {}
        existing: dict[int, Position] = {}
        expected = dict(self._versions)
        self.layout.encode(events, 0)  # refuses an event class the layout does not have
        keys = self.layout.stream_keys(events)
        for i, e in enumerate(events):
            key = keys[i]
            last = expected.get(key, 0)
            known = self._where.get((key, e.version))
            if e.version == last + 1:
                expected[key] = e.version
            elif known is not None and known[0] == e.event_id:
                existing[i] = known[1]
            elif key not in conflicts:
                conflicts[key] = VersionConflict(key, e.version, last)
        positions: list[Position | None] = [None] * len(events)
        by_partition: dict[int, list[int]] = {}
        for i, e in enumerate(events):
            if i not in existing and keys[i] not in conflicts:
                by_partition.setdefault(partition_of(e.aggregate_id, self.partitions), []).append(i)
        for p, idx in by_partition.items():
            first = self.watermarks()[p]
            batch = self.layout.encode([events[i] for i in idx], first)
            self._batches[p].append(self.layout.to_read(batch))
            for offset, i in enumerate(idx):
                e = events[i]
                positions[i] = Position(p, first + offset)
                self._versions[keys[i]] = e.version
                self._where[(keys[i], e.version)] = (
                    e.event_id,
                    Position(p, first + offset),
                )
        for i, position in existing.items():
            positions[i] = position
        result = Positions(
            [0 if p is None else p.partition for p in positions],
            [None if p is None else p.offset for p in positions],
        )
        if conflicts:
            raise ConcurrencyError(list(conflicts.values()), result)
        return result

    def read_all(
        self,
        from_position: int | Mapping[int, int] = 0,
        *,
        event_types: Sequence[str] | None = None,
        since: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        for p, batches in enumerate(self._batches):
            start = from_position if isinstance(from_position, int) else from_position.get(p, 0)
            for batch in batches:
                keep = pc.greater_equal(batch.column("position"), start)
                if event_types is not None:
                    names = batch.column("event_type").cast(pa.string())
                    keep = pc.and_(keep, pc.is_in(names, pa.array(list(event_types), pa.string())))
                if since is not None:
                    stamps = batch.column("timestamp").cast(pa.int64())
                    keep = pc.and_(keep, pc.greater_equal(stamps, since))
                kept = batch.filter(keep)
                if kept.num_rows:
                    yield kept

    def stream(self, aggregate_id: str, aggregate_type: str | None = None) -> str:
        """A stream's key: as `LogReader.stream`."""
        if aggregate_type is not None:
            return stream_key(aggregate_type, aggregate_id)
        if SEP in aggregate_id:
            return aggregate_id
        (only,) = self.layout.aggregate_types  # a bare id: the log's only type
        return stream_key(only, aggregate_id)

    def read_stream(
        self, aggregate_id: str, from_version: int = 1, *, aggregate_type: str | None = None
    ) -> pa.Table:
        key = self.stream(aggregate_id, aggregate_type)
        p = partition_of(aggregate_id_of(key), self.partitions)
        table = pa.Table.from_batches(self._batches[p], schema=self.layout.read_schema)
        keep = pc.and_(
            pc.and_(
                pc.equal(table.column("aggregate_id"), aggregate_id_of(key)),
                pc.equal(table.column("aggregate_type").cast(pa.string()), aggregate_type_of(key)),
            ),
            pc.greater_equal(table.column("version"), from_version),
        )
        return table.filter(keep)

    def read_streams(self, wanted: Mapping[str, int]) -> pa.Table:
        tables = [self.read_stream(key, v) for key, v in wanted.items()]
        table = pa.concat_tables([self.layout.read_schema.empty_table(), *tables])
        # the contract: position order within each partition
        keys = [
            (partition_of(a, self.partitions), p)
            for a, p in zip(
                table.column("aggregate_id").to_pylist(),
                table.column("position").to_pylist(),
                strict=True,
            )
        ]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return table.take(pa.array(order, pa.int64()))

    def last_version(self, aggregate_id: str, *, aggregate_type: str | None = None) -> int:
        return self._versions.get(self.stream(aggregate_id, aggregate_type), 0)

    def decode(self, data: pa.Table | pa.RecordBatch) -> list[RecordedEvent]:
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        out: list[RecordedEvent] = []
        for batch in table.to_batches():
            for i in range(batch.num_rows):
                row = batch.slice(i, 1)
                p = partition_of(row.column("aggregate_id")[0].as_py(), self.partitions)
                out.extend(self.layout.decode(row, p))
        return out

    def close(self) -> None:
        """Nothing to release; here so both logs share one contract."""
