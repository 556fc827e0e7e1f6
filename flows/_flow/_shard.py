"""The decide step of one shard: its aggregates' states, its log partition, its results.

A shard owns one partition of the log (routing by `partition_of(aggregate_id)`) and
decides the commands of every aggregate type of the application whose streams are in
it. A stream is an aggregate type and an id (its key, `store.stream_key`): the cache,
the versions and the snapshots are per stream. It handles commands a batch at a time:

1. aggregates not in the cache are rehydrated, all of the batch's at once: their
   latest snapshots, then the events after them, read through the log's index in one
   gather per segment (a new aggregate costs nothing: the log knows it has none);
2. each command is decided against its aggregate's state (as left by earlier commands
   of the same batch); a decider or evolver that raises rejects that command only;
3. all the batch's events are appended as one Arrow batch and made durable;
4. only then are the new states written into the cache (write-through: a state is
   never ahead of the log) and the results emitted, with each command's log position.

Idempotency. A shard remembers where the events of its last commands are (at least
`ShardConfig.remembered` of them, and those found in the log when an aggregate is
rehydrated), so a command sent again gets the same result, rebuilt from the log, and
appends nothing. A command that appended nothing (a rejection) has its answer made
durable before it is given: in the note of its batch's events (the same write and
fsync), or, in a batch with no events, in the partition's decisions journal
(`DIR/decisions/<partition>/`). It too is answered the same way again, after a crash
as well. The memory is the shard's, not each aggregate's, so it stays bounded however
many aggregates there are.

After a crash, a restarted flow resumes its input from its last checkpoint. The
commands between that checkpoint and the crash are answered from the log: the last
`remembered` are recalled when the shard opens (`_recall`), and a longer rewind reads
the log's tail since the checkpoint's watermark (`replay_from`), notes included.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa

from flows._app import App, as_app
from flows._domain import Aggregate, Rejected
from flows._flow._metrics import REHYDRATIONS
from flows._parse import Command
from flows._results import Result
from queries import Cache, Policy, make_cache
from store import (
    ArrowLog,
    ConcurrencyError,
    Journal,
    NewEvent,
    Positions,
    RecordedEvent,
    SnapshotPolicy,
    SnapshotStore,
    split_stream,
    stream_key,
)


@dataclass(frozen=True, slots=True)
class ShardConfig:
    # Aggregates kept in memory by one shard. With the default 4 partitions a process
    # holds 200,000 states: ~35 MB per 50,000 (entry, key, state, the cache's links).
    cache_size: int = 50_000
    cache_bytes: int | None = None  # and their states' size, as weighed by `weigh_entry`
    cache_policy: Policy = "lru"  # lru | lfu | arc (queries.make_cache)
    warm: int = 0  # on open, pre-load this many of the partition's busiest aggregates
    warm_seconds: float = 5.0  # for at most this long
    snapshot_every: int = 100  # events between snapshots of an aggregate
    remembered: int = 50_000  # at least this many accepted commands are remembered


@dataclass(frozen=True, slots=True)
class _Kind:
    """One aggregate type as the shard decides it."""

    aggregate: Aggregate[Any]
    suffix: str  # stream key = aggregate id + suffix
    state_type: type
    fingerprint: str  # of its snapshots


class _Entry:
    __slots__ = ("state", "version")

    def __init__(self, state: Any, version: int):
        self.state = state
        self.version = version


def weigh_entry(entry: _Entry) -> int:
    """An aggregate's bytes in the cache, for its byte bound: its state as msgpack plus
    a fixed share for the entry, its key and the cache's bookkeeping."""
    return 160 + len(msgspec.msgpack.encode(entry.state))


def event_id(command_id: str, index: int) -> bytes:
    """Deterministic: deciding the same command again gives the same event ids, so the
    log recognises a re-append of the same events."""
    return hashlib.blake2b(f"{command_id}\x00{index}".encode(), digest_size=16).digest()


class Shard:
    """Decides the commands of one log partition's aggregates."""

    def __init__(
        self,
        app: App | Aggregate[Any],
        log: ArrowLog,
        partition: int,
        snapshots: SnapshotStore,
        config: ShardConfig,
        clock: Any,
        *,
        decisions: Journal,
    ):
        self.app = app = as_app(app)
        self.log = log
        self.partition = partition
        self.snapshots = snapshots
        self.config = config
        self.policy = SnapshotPolicy(config.snapshot_every)
        self._clock = clock  # () -> int, UTC microseconds
        self._kinds = {
            a.name: _Kind(a, stream_key(a.name, ""), type(a.initial), app.state_fingerprint(a))
            for a in app.aggregates
        }
        # Each command class's aggregate type: one dict lookup per command.
        self._kind_of = {c: self._kinds[a.name] for a in app.aggregates for c in a.commands}
        self._cache: Cache[str, _Entry] = make_cache(
            config.cache_policy,
            config.cache_size,
            config.cache_bytes,
            weigh=weigh_entry,
            name=f"aggregate-{partition}",
            tier="L1",
        )
        # The remembered commands, in two generations: when the young one is full it
        # becomes the old one and the old one is dropped, so between `remembered` and
        # twice that many are kept; plain dicts, with no per-entry eviction. Each maps
        # a command id to where its answer is: (first position << 16) + the count of
        # its events in the log; with a count of 0, in the note of the batch at that
        # position; negative, the bitwise NOT of its location in the journal. An int,
        # not the Result, a fifth of the memory; a command sent again (rare) has its
        # result rebuilt. The journal's generations follow the dicts'.
        self.decisions = decisions
        self._recent: dict[str, int] = {}
        self._older: dict[str, int] = {}
        for generation, location, (command_id, *_) in decisions.records():
            young = generation == decisions.generations[-1]
            (self._recent if young else self._older)[command_id] = ~location
        self._recall()
        self.replayed: dict[str, Result] = {}
        self.rehydrations = 0

    @property
    def evictions(self) -> int:
        """Aggregate states evicted from this shard's cache to bound its memory."""
        return self._cache.evictions

    @property
    def watermark(self) -> int:
        """The partition's next position: everything below it is durable."""
        return self.log.watermarks()[self.partition]

    def replay_from(self, watermark: int) -> None:
        """Answer commands found in the log at or after `watermark` from the log: their
        events, and the answers with no events in the batches' notes."""
        for batch in self.log.read_all({self.partition: watermark}):
            for e in self.log.decode(batch):
                if e.partition == self.partition:
                    _fold_result(self.replayed, e)
        for _, record in self._noted(watermark):
            self.replayed[record[0]] = _from_record(record)

    # -- the batch ------------------------------------------------------------

    def handle(self, commands: Sequence[Command]) -> list[Result]:
        """Decide a batch of this shard's commands; results in the same order."""
        cache = self._cache
        # The batch's entries, kept here: making room for a cold aggregate may evict
        # another aggregate of the same batch from the cache.
        entries: dict[str, _Entry] = {}
        cold = []
        kind_of = self._kind_of
        kinds = [kind_of[c.payload.__class__] for c in commands]
        keys = [c.aggregate_id + k.suffix for c, k in zip(commands, kinds, strict=True)]
        wanted = set(keys)
        get = cache.get
        for agg in wanted:
            entry = get(agg)
            if entry is None:
                cold.append(agg)
            else:
                entries[agg] = entry
        if cold:
            entries.update(self._rehydrate(cold))
        results: list[Result | None] = [None] * len(commands)
        pending: dict[str, tuple[Any, int]] = {}
        staged: list[NewEvent] = []
        # per accepted command: its index, its id, its stream, its last event, their
        # types, its aggregate type
        staged_by: list[tuple[int, str, str, int, list[str], str]] = []
        # Which commands were answered before, and which come twice in this batch: found
        # with set operations for the whole batch, so a fresh command costs no lookups.
        ids = [c.command_id for c in commands]
        unique = set(ids)
        known = (unique & self._recent.keys()) | (unique & self._older.keys())
        if self.replayed:
            known |= unique & self.replayed.keys()
        in_batch: dict[str, int] | None = {} if len(unique) < len(ids) else None
        now = self._clock()
        for i, command in enumerate(commands):
            command_id, agg, payload, expected, correlation = command
            key = keys[i]
            aggregate = kinds[i].aggregate
            if known and command_id in known:
                results[i] = self._answered(command_id)
                continue
            if in_batch is not None:
                if command_id in in_batch:
                    continue  # answered below with the first one's result
                in_batch[command_id] = i
            tentative = pending.get(key)
            if tentative is None:
                entry = entries[key]
                state, version = entry.state, entry.version
            else:
                state, version = tentative
            if expected is not None and expected != version:
                results[i] = _rejected(
                    command,
                    f"expected version {expected}, but {agg} is at version {version}",
                    aggregate.name,
                )
                continue
            try:
                decision = aggregate.decide(payload, state)
                if isinstance(decision, Rejected):
                    results[i] = _rejected(command, decision.reason, aggregate.name)
                    continue
                if type(decision) is not list:  # a tuple, a generator: iterated twice below
                    decision = list(decision)
                evolve = aggregate.evolve
                for event in decision:
                    state = evolve(state, event)
            except Exception as err:  # a faulty decider rejects this command only
                reason = f"the decider raised {type(err).__name__}: {err}"
                results[i] = _rejected(command, reason, aggregate.name)
                continue
            if not decision:
                results[i] = Result(
                    command_id, "accepted", agg, version, None, [], None, aggregate.name
                )
                continue
            k = 0
            types = []
            for event in decision:
                k += 1
                staged.append(
                    NewEvent(
                        agg,
                        version + k,
                        event,
                        event_id(command_id, k),
                        command_id,
                        now,
                        correlation,
                    )
                )
                types.append(event.__class__.__name__)
            pending[key] = (state, version + k)
            staged_by.append((i, command_id, key, len(staged) - 1, types, aggregate.name))
        decided = [
            r for r in results if r is not None and r.position is None and r.command_id not in known
        ]
        # Answers with nothing in the log (rejections): durable before they are given,
        # in the note of the batch's events, or the journal if there are none.
        if staged:
            self._append(commands, staged, staged_by, pending, entries, results, decided)
        elif decided:
            self._journal(decided)
        if decided:
            self._roll()
        if in_batch is not None:
            for i, command in enumerate(commands):
                if results[i] is None:  # the same command id twice in one batch
                    results[i] = results[in_batch[command.command_id]]
        return results  # type: ignore[return-value]

    def _append(
        self,
        commands: Sequence[Command],
        staged: list[NewEvent],
        staged_by: list[tuple[int, str, str, int, list[str], str]],
        pending: dict[str, tuple[Any, int]],
        entries: dict[str, _Entry],
        results: list[Result | None],
        decided: list[Result],
    ) -> None:
        positions: Positions
        first = self.watermark
        note = msgspec.msgpack.encode([_record(r) for r in decided]) if decided else b""
        try:
            positions = self.log.append_partition(self.partition, staged, note)
        except ConcurrencyError as err:
            # Only another writer could cause this, and the partition's lock forbids
            # one; if it happens anyway, forget what this shard believed and say so.
            for key in {c.stream for c in err.conflicts}:
                self._cache.pop(key)
            positions = err.appended  # type: ignore[assignment]
            conflicted = {c.stream: str(c) for c in err.conflicts}
        else:
            conflicted = {}
        if decided:
            if self.watermark > first:  # written with the batch at `first`
                for r in decided:
                    self._recent[r.command_id] = _in_log(first, 0)  # type: ignore[index]
            else:  # no event was written (all conflicts): nor was the note
                self._journal(decided)
        texts = positions.texts()
        offsets = positions.offsets()
        recent = self._recent
        for i, command_id, key, last, types, aggregate_type in staged_by:
            if conflicted and key in conflicted:
                results[i] = _rejected(commands[i], conflicted[key], aggregate_type)
                continue
            results[i] = Result(
                command_id,
                "accepted",
                staged[last].aggregate_id,
                staged[last].version,
                texts[last],
                types,
                None,
                aggregate_type,
            )
            count = len(types)
            recent[command_id] = _in_log(offsets[last] - count + 1, count)  # type: ignore[operator]
        self._roll()
        every = self.policy.every
        for key, (state, version) in pending.items():
            if conflicted and key in conflicted:
                continue
            entry = entries[key]
            if version // every > entry.version // every:  # SnapshotPolicy.due, inlined
                builtins = msgspec.to_builtins(state)
                kind = self._kinds[split_stream(key)[0]]
                self.snapshots.save(key, version, builtins, kind.fingerprint)
            entry.state, entry.version = state, version

    # -- the cache ------------------------------------------------------------

    def _rehydrate(self, streams: list[str]) -> dict[str, _Entry]:
        """Bring cold streams (by key) into the cache: snapshot, then the events after it."""
        wanted: dict[str, int] = {}
        entries: dict[str, _Entry] = {}
        for key in streams:
            kind = self._kinds[split_stream(key)[0]]
            last = self.log.last_version(key)
            entry = entries[key] = _Entry(kind.aggregate.initial, 0)
            if last == 0:
                continue  # a new stream: nothing to read
            # A snapshot exists only once a multiple of the interval was crossed.
            snapshot = (
                self.snapshots.load(key, kind.fingerprint)
                if last >= self.config.snapshot_every
                else None
            )
            if snapshot is not None:
                entry.state = msgspec.convert(snapshot.state, kind.state_type)
                entry.version = snapshot.version
            if entry.version < last:
                wanted[key] = entry.version + 1
        if wanted:
            self.rehydrations += len(wanted)
            REHYDRATIONS.inc(len(wanted))
            found: dict[str, tuple[int, int]] = {}  # command id -> its last position, count
            kinds = self._kinds
            for e in self.log.decode(self.log.read_streams(wanted)):
                entry = entries[e.aggregate_id + kinds[e.aggregate_type].suffix]
                entry.state = kinds[e.aggregate_type].aggregate.evolve(entry.state, e.payload)
                entry.version = e.version
                seen = found.get(e.command_id)
                found[e.command_id] = (e.position, 1 if seen is None else seen[1] + 1)
            for command_id, (last, count) in found.items():
                self._remember(command_id, last - count + 1, count)
        put = self._cache.put
        for key, entry in entries.items():
            put(key, entry)
        return entries

    def warm(self) -> int:
        """Pre-load the partition's busiest aggregates of its recent history (up to
        `ShardConfig.warm`, for at most `warm_seconds`): the first batches after a
        restart then find them in the cache. How many were loaded."""
        wanted, budget = self.config.warm, self.config.warm_seconds
        if wanted <= 0 or self.watermark == 0:
            return 0
        deadline = time.monotonic() + budget
        # Recent history: the last events of the partition, ten per wanted aggregate.
        start = max(0, self.watermark - 10 * wanted)
        counts: Counter[str] = Counter()
        for batch in self.log.partition(self.partition).batches(start):
            ids = batch.column(1).to_pylist()
            types = batch.column(2).cast(pa.string()).to_pylist()
            counts.update(map(stream_key, types, ids))
        busiest = [agg for agg, _ in counts.most_common(wanted) if agg not in self._cache]
        loaded = 0
        for i in range(0, len(busiest), 1000):
            if time.monotonic() >= deadline:
                break
            chunk = busiest[i : i + 1000]
            self._rehydrate(chunk)
            loaded += len(chunk)
        return loaded

    def _answered(self, command_id: str) -> Result:
        """The result of a command handled before, rebuilt from its events in the log."""
        where = self._recent.get(command_id) or self._older.get(command_id)
        if where is None:
            return self.replayed[command_id]
        if where < 0:
            return _from_record(self.decisions.read(~where))
        first, count = where >> 16, where & 0xFFFF
        if count == 0:  # in the note of the batch at `first`
            for _, record in self._noted(first):
                if record[0] == command_id:
                    return _from_record(record)
        stop = first + count
        found: dict[str, Result] = {}
        for batch in self.log.partition(self.partition).batches(first):
            start = batch.column(0)[0].as_py()
            if start >= stop:
                break
            for e in self.log.decode(batch.slice(0, stop - start)):
                if e.command_id == command_id:
                    _fold_result(found, e)
        return found[command_id]

    def _recall(self) -> None:
        """Remember the commands of the partition's last `remembered` events (as the old
        generation). After a crash the input may bring them again, and an aggregate
        restored from a snapshot taken after them could not tell they were handled."""
        start = max(0, self.watermark - self.config.remembered)
        older = self._older
        last, first, count = None, 0, 0
        for batch in self.log.partition(self.partition).batches(start):
            positions = batch.column(0).to_pylist()
            for position, command_id in zip(positions, batch.column(6).to_pylist(), strict=True):
                if command_id == last:  # a command's events are contiguous
                    count += 1
                    continue
                if last is not None:
                    older[last] = _in_log(first, count)
                last, first, count = command_id, position, 1
        if last is not None:
            older[last] = _in_log(first, count)
        for first, record in self._noted(start):
            older[record[0]] = _in_log(first, 0)

    def _noted(self, from_position: int) -> Iterator[tuple[int, list[Any]]]:
        """The answers kept in the notes of the batches from `from_position`, with
        the first position of the batch that holds each."""
        for first, note in self.log.partition(self.partition).notes(from_position):
            for record in msgspec.msgpack.decode(note):
                yield first, record

    def _remember(self, command_id: str, first: int, count: int) -> None:
        self._recent[command_id] = _in_log(first, count)
        self._roll()

    def _journal(self, decided: list[Result]) -> None:
        """The answers of a batch that appended no event, durable in the journal."""
        locations = self.decisions.append([_record(r) for r in decided])
        self.decisions.sync()
        recent = self._recent
        for r, location in zip(decided, locations, strict=True):
            recent[r.command_id] = ~location  # type: ignore[index]

    def _roll(self) -> None:
        """A full young generation becomes the old one; the old one is forgotten."""
        if len(self._recent) >= self.config.remembered:
            self._older, self._recent = self._recent, {}
            self.decisions.rotate()

    def close(self) -> None:
        self.decisions.close()
        self.log.close()


def _in_log(first: int, count: int) -> int:
    """Where a remembered answer is in the log: the first position of its `count`
    events, or with 0, of the batch whose note holds it (see `Shard.__init__`)."""
    return (first << 16) + min(count, 0xFFFF)


def _record(r: Result) -> tuple[str | None, str, str | None, int | None, str | None, str | None]:
    """An answer with no events, as the journal and the batches' notes keep it."""
    return (r.command_id, r.status, r.aggregate_id, r.version, r.reason, r.aggregate_type)


def _from_record(record: list[Any]) -> Result:
    # Records written before streams had a type have five fields.
    command_id, status, agg, version, reason, *kind = record
    return Result(command_id, status, agg, version, None, [], reason, kind[0] if kind else None)


def _rejected(command: Command, reason: str, aggregate_type: str) -> Result:
    return Result(
        command.command_id,
        "rejected",
        command.aggregate_id,
        reason=reason,
        aggregate_type=aggregate_type,
    )


def _fold_result(results: dict[str, Result], e: RecordedEvent) -> None:
    """Fold one logged event into the result of the command that caused it."""
    found = results.get(e.command_id)
    types = [*found.events, e.event_type] if found is not None else [e.event_type]
    results[e.command_id] = Result(
        e.command_id,
        "accepted",
        e.aggregate_id,
        e.version,
        f"{e.partition}:{e.position}",
        types,
        None,
        e.aggregate_type,
    )
