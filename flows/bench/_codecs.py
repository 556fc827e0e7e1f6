"""`cqrsflow bench codecs`: the log's Arrow layout against JSON and msgpack, and its size.

The same bank events (`bank_batches`) go through three codecs, each from the event
objects to bytes and from bytes back to event objects:

- JSON, with the standard library's `json`, one object per event as JSON Lines hold it;
- msgpack, with `msgpack`, one map per event (the event id as 16 raw bytes);
- the log's Arrow layout: `Layout.encode` of each batch of 1,000 written as an IPC
  stream, read back and decoded by `Layout.decode`; and, the way DuckDB and polars read
  it, read back to columns without making a Python object per event (zero-copy).

Every event carries the same envelope in each codec: aggregate id and type, version,
event type, event id, command id, correlation id, timestamp and the payload's fields.
On disk: the bytes of a log holding the events (segments, batch directories,
manifest) against the same events as JSON Lines and as a msgpack stream.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pyarrow as pa

from flows import bank
from flows._progress import Report
from flows.bench._harness import Figure, interleaved, rate, timed
from flows.bench._store import Scale, bank_batches, write_bank_log
from store import Layout, NewEvent

JSON = "JSON (stdlib json)"
MSGPACK = "msgpack (msgpack-python)"


def _fields(payload: Any) -> dict[str, Any]:
    if isinstance(payload, msgspec.Struct):
        return msgspec.structs.asdict(payload)
    return dict(vars(payload)) if hasattr(payload, "__dict__") else _slots(payload)


def _slots(payload: Any) -> dict[str, Any]:
    return {name: getattr(payload, name) for name in type(payload).__slots__}


def _record(e: NewEvent, event_id: Any) -> dict[str, Any]:
    return {
        "aggregate_id": e.aggregate_id,
        "aggregate_type": bank.AGGREGATE_TYPE,
        "version": e.version,
        "event_type": type(e.payload).__name__,
        "event_id": event_id,
        "command_id": e.command_id,
        "correlation_id": e.correlation_id,
        "timestamp": e.timestamp,
        "payload": _fields(e.payload),
    }


_CLASSES = {cls.__name__: cls for cls in bank.EVENTS}


def _event(r: dict[str, Any], event_id: bytes) -> NewEvent:
    return NewEvent(
        r["aggregate_id"],
        r["version"],
        _CLASSES[r["event_type"]](**r["payload"]),
        event_id,
        r["command_id"],
        r["timestamp"],
        r["correlation_id"],
    )


def json_encode(events: list[NewEvent]) -> list[bytes]:
    return [json.dumps(_record(e, e.event_id.hex())).encode() for e in events]


def json_decode(records: list[bytes]) -> list[NewEvent]:
    out = []
    for raw in records:
        r = json.loads(raw)
        out.append(_event(r, bytes.fromhex(r["event_id"])))
    return out


def msgpack_encode(events: list[NewEvent]) -> list[bytes]:
    pack = msgpack.Packer().pack
    return [pack(_record(e, e.event_id)) for e in events]


def msgpack_decode(records: list[bytes]) -> list[NewEvent]:
    out = []
    for raw in records:
        r = msgpack.unpackb(raw)
        out.append(_event(r, r["event_id"]))
    return out


def arrow_encode(batches: list[list[NewEvent]], layout: Layout) -> pa.Buffer:
    """The batches as the log stores them: one IPC stream of `Layout.encode` batches."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, layout.disk_schema) as writer:
        position = 0
        for events in batches:
            writer.write_batch(layout.encode(events, position))
            position += len(events)
    return sink.getvalue()


def arrow_columns(stream: pa.Buffer) -> list[pa.RecordBatch]:
    """Read back to Arrow columns: no copy, no Python object per event."""
    return list(pa.ipc.open_stream(stream))


def arrow_decode(stream: pa.Buffer, layout: Layout) -> list[Any]:
    out: list[Any] = []
    for batch in pa.ipc.open_stream(stream):
        out.extend(layout.decode(layout.to_read(batch), 0))
    return out


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def bench_codecs(scale: Scale, workdir: Path, progress: Report) -> list[Figure]:
    layout = bank.layout()
    n = scale.codec_events
    batches = list(bank_batches(n, accounts=max(n // 20, 1)))
    events = [e for batch in batches for e in batch]

    # Check once that every codec gives back the events it was given.
    as_json, as_msgpack = json_encode(events), msgpack_encode(events)
    stream = arrow_encode(batches, layout)
    assert json_decode(as_json) == events and msgpack_decode(as_msgpack) == events
    decoded = arrow_decode(stream, layout)
    assert [(d.aggregate_id, d.version, d.payload) for d in decoded] == [
        (e.aggregate_id, e.version, e.payload) for e in events
    ]

    def run(fn: Callable[[], object]) -> Callable[[], float]:
        return lambda: rate(n, timed(fn))

    progress(f"codecs: {n:,} events encoded as JSON, msgpack and the log's Arrow layout")
    enc_json, _ = interleaved(scale.runs, run(lambda: json_encode(events)))
    enc_msgpack, _ = interleaved(scale.runs, run(lambda: msgpack_encode(events)))
    enc_arrow, _ = interleaved(scale.runs, run(lambda: arrow_encode(batches, layout)))
    progress(f"codecs: {n:,} events decoded from each")
    dec_json, _ = interleaved(scale.runs, run(lambda: json_decode(as_json)))
    dec_msgpack, _ = interleaved(scale.runs, run(lambda: msgpack_decode(as_msgpack)))
    dec_arrow, _ = interleaved(scale.runs, run(lambda: arrow_decode(stream, layout)))
    columns, _ = interleaved(scale.runs, run(lambda: arrow_columns(stream)))

    progress(f"bytes on disk: a log of {n:,} events vs JSON Lines and msgpack files")
    directory = Path(tempfile.mkdtemp(dir=workdir))
    write_bank_log(directory, n, max(n // 20, 1), progress)
    on_disk = _disk_bytes(directory) / n
    jsonl = directory / "events.jsonl"
    jsonl.write_bytes(b"".join(r + b"\n" for r in as_json))
    packed = directory / "events.msgpack"
    packed.write_bytes(b"".join(as_msgpack))

    def vs(
        what: str, unit: str, ours: list[float], better: Any, theirs: tuple[str, list[float]]
    ) -> Figure:
        return Figure(
            what,
            unit,
            tuple(ours),
            better,
            baseline_name=theirs[0],
            baseline_runs=tuple(theirs[1]),
        )

    arrow = "the log's Arrow layout"
    size = {
        JSON: sum(map(len, as_json)) / n,
        MSGPACK: sum(map(len, as_msgpack)) / n,
        arrow: stream.size / n,
    }
    return [
        vs(f"codec encode, {arrow}, vs JSON", "events/s", enc_arrow, "higher", (JSON, enc_json)),
        vs(
            f"codec encode, {arrow}, vs msgpack",
            "events/s",
            enc_arrow,
            "higher",
            (MSGPACK, enc_msgpack),
        ),
        vs(
            f"codec decode to Python objects, {arrow}, vs JSON",
            "events/s",
            dec_arrow,
            "higher",
            (JSON, dec_json),
        ),
        vs(
            f"codec decode to Python objects, {arrow}, vs msgpack",
            "events/s",
            dec_arrow,
            "higher",
            (MSGPACK, dec_msgpack),
        ),
        vs(
            f"codec decode to Arrow columns (zero-copy), {arrow}, vs msgpack to objects",
            "events/s",
            columns,
            "higher",
            (MSGPACK, dec_msgpack),
        ),
        vs(
            f"codec size, {arrow}, vs JSON",
            "bytes/event",
            [size[arrow]],
            "lower",
            (JSON, [size[JSON]]),
        ),
        vs(
            f"codec size, {arrow}, vs msgpack",
            "bytes/event",
            [size[arrow]],
            "lower",
            (MSGPACK, [size[MSGPACK]]),
        ),
        vs(
            "bytes on disk per event, the log (segments, batch directories, manifest)",
            "bytes/event",
            [on_disk],
            "lower",
            ("the same events as JSON Lines", [jsonl.stat().st_size / n]),
        ),
        vs(
            "bytes on disk per event, the log, vs a msgpack stream",
            "bytes/event",
            [on_disk],
            "lower",
            ("the same events as one msgpack stream", [packed.stat().st_size / n]),
        ),
    ]
