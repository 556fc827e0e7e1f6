"""The columnar layout of the log: envelope columns plus typed payload columns.

One row is one event. The envelope columns are, in order:

==================  =============================  ==========================================
column              Arrow type (as read)           meaning
==================  =============================  ==========================================
position            int64                          gap-free offset within the partition, from 0
aggregate_id        string                         the aggregate the event belongs to
aggregate_type      dictionary<int8, string>       e.g. ``Account``
version             int64                          the aggregate's version after the event, from 1
event_type          dictionary<int16, string>      the event class's name, e.g. ``Deposited``
event_id            fixed_size_binary(16)          a UUID
command_id          string                         the command that caused the event
correlation_id      string (nullable)              the business process it belongs to
timestamp           timestamp[us, UTC]             when the event was decided
==================  =============================  ==========================================

After them come the payload columns, derived from the event classes' annotations
(``int`` → int64, ``float`` → float64, ``bool``, ``str``, ``bytes``, ``datetime`` →
timestamp[us, UTC], ``date`` → date32; ``X | None`` is the same column, nullable).
A field becomes the column of its own name, shared by every event type that has a
field of that name and type (so ``amount`` of ``Deposited`` and of ``Withdrawn`` is
one column); a name that clashes with the envelope or with another type's field of a
different type becomes ``EventType.field``. Fields with no Arrow type (lists, dicts,
``Any``) are stored as msgpack bytes. Rows of other event types hold nulls there.

On disk the two dictionary columns are stored as their integer codes, and the
dictionaries live in the segment's schema metadata (key ``cqrsflow.layout``), so
that every record batch can be decoded on its own at its byte offset; readers
always see them as dictionary columns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import operator
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store._errors import SchemaError
from store._model import NewEvent, RecordedEvent
from store._records import NO_DEFAULT, is_record_class, record_defaults, record_fields
from store._streams import SEP

FORMAT_VERSION = 1
METADATA_KEY = b"cqrsflow.layout"

ENVELOPE_NAMES = (
    "position",
    "aggregate_id",
    "aggregate_type",
    "version",
    "event_type",
    "event_id",
    "command_id",
    "correlation_id",
    "timestamp",
)
TIMESTAMP = pa.timestamp("us", tz="UTC")
_AGG_CODE = pa.int8()
_TYPE_CODE = pa.int16()
_ENVELOPE_DISK = [
    pa.field("position", pa.int64(), nullable=False),
    pa.field("aggregate_id", pa.string(), nullable=False),
    pa.field("aggregate_type", _AGG_CODE, nullable=False),
    pa.field("version", pa.int64(), nullable=False),
    pa.field("event_type", _TYPE_CODE, nullable=False),
    pa.field("event_id", pa.binary(16), nullable=False),
    pa.field("command_id", pa.string(), nullable=False),
    pa.field("correlation_id", pa.string()),
    pa.field("timestamp", TIMESTAMP, nullable=False),
]
_AGG_INDEX = ENVELOPE_NAMES.index("aggregate_type")
# NewEvent is a named tuple; integer fields go through numpy at half pyarrow's cost.
_VERSION = operator.itemgetter(NewEvent._fields.index("version"))
_TIMESTAMP = operator.itemgetter(NewEvent._fields.index("timestamp"))
_TYPE_INDEX = ENVELOPE_NAMES.index("event_type")

_SCALARS: dict[Any, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    str: pa.string(),
    bytes: pa.binary(),
    dt.datetime: TIMESTAMP,
    dt.date: pa.date32(),
}


@dataclasses.dataclass(frozen=True, slots=True)
class PayloadField:
    """Where one field of one event type is stored."""

    name: str
    column: str
    arrow_type: pa.DataType
    msgpack: bool
    # What an event written before the field existed reads as (its class's default);
    # NO_DEFAULT where the class has none, and for layouts read from disk.
    default: Any = dataclasses.field(default=NO_DEFAULT, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Upcaster:
    """Turns the payload of one stored version of an event type into the next version's:
    ``upcast(fields) -> fields``, plain dicts. Upcasters of a type chain, version by
    version, up to its class: a type with upcasters for versions 1 and 2 is at version
    3, and an event stored at version 1 is read through both. `event_type` is the
    class's name (after a rename, the new one)."""

    event_type: str
    version: int
    upcast: Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class EventType:
    """An event type as the log knows it: name, aggregate type, fields, class if known,
    the version its events are written at, and the names it had before."""

    name: str
    aggregate_type: str
    fields: tuple[PayloadField, ...]
    cls: type | None
    version: int = 1
    renamed_from: tuple[str, ...] = ()


def _field_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """The Arrow type of an annotation and whether it falls back to msgpack."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _field_type(inner[0])
        return pa.binary(), True
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    return pa.binary(), True


class Layout:
    """The log's columns for a set of event classes, and the batch codec.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Deposited:
    ...     amount: int
    >>> layout = Layout.from_classes({"Account": [Deposited]})
    >>> layout.read_schema.field("amount").type
    DataType(int64)
    """

    def __init__(self, event_types: Sequence[EventType]):
        self.event_types = tuple(event_types)
        self.aggregate_types = tuple(dict.fromkeys(t.aggregate_type for t in self.event_types))
        if len(self.aggregate_types) > 127:
            raise SchemaError(f"{len(self.aggregate_types)} aggregate types: at most 127 fit")
        if len(self.event_types) > 32767:
            raise SchemaError(f"{len(self.event_types)} event types: at most 32767 fit")
        self._type_code = {t.name: i for i, t in enumerate(self.event_types)}
        self._agg_code = {a: i for i, a in enumerate(self.aggregate_types)}
        self._code_by_class = {t.cls: i for i, t in enumerate(self.event_types) if t.cls}
        self._agg_dictionary = pa.array(self.aggregate_types, pa.string())
        # An event class belongs to one aggregate type, so its code gives the type's.
        self._aggregate_of_type: np.ndarray = np.array(
            [self._agg_code[t.aggregate_type] for t in self.event_types], dtype=np.int8
        )
        self._type_dictionary = pa.array([t.name for t in self.event_types], pa.string())
        # Stream keys (`store._streams`): an event's id and its aggregate type.
        self._key_suffix_of_class = {
            t.cls: SEP + t.aggregate_type for t in self.event_types if t.cls is not None
        }
        self._key_suffixes = pa.array([SEP + a for a in self.aggregate_types], pa.string())

        columns: dict[str, pa.DataType] = {}
        contributors: dict[str, list[tuple[int, str]]] = {}
        for code, et in enumerate(self.event_types):
            for f in et.fields:
                columns.setdefault(f.column, f.arrow_type)
                contributors.setdefault(f.column, []).append((code, f.name))
        self.payload_columns = tuple(columns)
        self._contributors = contributors
        self._payload_types = columns
        self._msgpack_columns = {
            f.column for et in self.event_types for f in et.fields if f.msgpack
        }
        meta = {METADATA_KEY: self.to_json().encode()}
        payload = [pa.field(c, t) for c, t in columns.items()]
        self.disk_schema = pa.schema(_ENVELOPE_DISK + payload, metadata=meta)
        read_envelope = list(_ENVELOPE_DISK)
        read_envelope[_AGG_INDEX] = pa.field(
            "aggregate_type", pa.dictionary(_AGG_CODE, pa.string()), nullable=False
        )
        read_envelope[_TYPE_INDEX] = pa.field(
            "event_type", pa.dictionary(_TYPE_CODE, pa.string()), nullable=False
        )
        self.read_schema = pa.schema(read_envelope + payload, metadata=meta)
        self._extract = self._compile_extractor()
        # (event type, stored version) -> the upcaster to the next version
        self.upcasters: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}

    # -- construction -------------------------------------------------------

    @classmethod
    def from_classes(
        cls,
        aggregates: Mapping[str, Sequence[type]],
        *,
        renamed: Mapping[str, type] | None = None,
        upcasters: Sequence[Upcaster] = (),
    ) -> Layout:
        """Derive the layout from event classes (dataclasses or msgspec Structs)
        grouped by aggregate type; `renamed` maps an event type's earlier names to its
        class, and `upcasters` read its earlier versions (see `store._evolve`)."""
        found: list[tuple[str, str, type, list[tuple[str, pa.DataType, bool, Any]]]] = []
        seen: dict[str, str] = {}
        for aggregate_type, classes in aggregates.items():
            for event_cls in classes:
                if not is_record_class(event_cls):
                    raise SchemaError(
                        f"event class {event_cls!r}: expected a dataclass or a msgspec.Struct"
                    )
                name = event_cls.__name__
                if name in seen:
                    raise SchemaError(
                        f"event type {name!r} is declared for both {seen[name]!r} and "
                        f"{aggregate_type!r}: event type names must be unique"
                    )
                seen[name] = aggregate_type
                defaults = record_defaults(event_cls)
                fields = [
                    (n, *_field_type(t), defaults.get(n, NO_DEFAULT))
                    for n, t in record_fields(event_cls)
                ]
                found.append((aggregate_type, name, event_cls, fields))
        versions = upcaster_versions(upcasters, seen)
        earlier = earlier_names(renamed or {}, seen)
        # A field name gets its own column unless its type clashes with a column
        # already claimed under that name (or with an envelope column).
        claimed: dict[str, pa.DataType] = {}
        event_types = []
        for aggregate_type, name, event_cls, fields in found:
            laid_out = []
            for fname, arrow_type, packed, default in fields:
                column = fname
                if fname in ENVELOPE_NAMES or claimed.get(fname, arrow_type) != arrow_type:
                    column = f"{name}.{fname}"
                claimed.setdefault(column, arrow_type)
                laid_out.append(PayloadField(fname, column, arrow_type, packed, default))
            event_types.append(
                EventType(
                    name,
                    aggregate_type,
                    tuple(laid_out),
                    event_cls,
                    versions.get(name, 1),
                    earlier.get(name, ()),
                )
            )
        layout = cls(event_types)
        layout.upcasters = {(u.event_type, u.version): u.upcast for u in upcasters}
        return layout

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> Layout:
        """Rebuild the layout a segment was written with, without its classes."""
        raw = (schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise SchemaError("schema has no cqrsflow layout metadata: not a cqrsflow segment")
        doc = json.loads(raw)
        if doc.get("format") != FORMAT_VERSION:
            raise SchemaError(
                f"segment layout format {doc.get('format')!r}: this version of cqrsflow "
                f"reads format {FORMAT_VERSION}; upgrade cqrsflow to read this data"
            )
        by_column = {f.name: f.type for f in schema}
        return cls(
            [
                EventType(
                    et["name"],
                    et["aggregate_type"],
                    tuple(
                        PayloadField(f["name"], f["column"], by_column[f["column"]], f["msgpack"])
                        for f in et["fields"]
                    ),
                    None,
                    int(et.get("version", 1)),  # layouts written before versions: 1
                )
                for et in doc["event_types"]
            ]
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "event_types": [
                    {
                        "name": et.name,
                        "aggregate_type": et.aggregate_type,
                        **({"version": et.version} if et.version != 1 else {}),
                        "fields": [
                            {"name": f.name, "column": f.column, "msgpack": f.msgpack}
                            for f in et.fields
                        ],
                    }
                    for et in self.event_types
                ],
            },
            sort_keys=True,
        )

    def same_as(self, other: Layout) -> bool:
        return bool(self.disk_schema.equals(other.disk_schema, check_metadata=True))

    def aggregate_codes(self, type_codes: np.ndarray) -> np.ndarray:
        """The aggregate type code of each event type code."""
        codes: np.ndarray = self._aggregate_of_type[type_codes]
        return codes

    def payload_type(self, column: str) -> pa.DataType:
        return self._payload_types[column]

    def payload_codes(self) -> dict[int, list[int]]:
        """Per payload column (by index in the schema), the event type codes that have it."""
        index = {name: i for i, name in enumerate(self.disk_schema.names)}
        return {
            index[column]: [code for code, _ in contributors]
            for column, contributors in self._contributors.items()
        }

    # -- encoding -----------------------------------------------------------

    def encode(self, events: Sequence[NewEvent], first_position: int) -> pa.RecordBatch:
        """Build one on-disk record batch from event objects, positions from `first_position`."""
        n = len(events)
        try:
            codes, payload_values = self._extract([e.payload for e in events])
        except KeyError as err:
            raise SchemaError(
                f"event payload class {err.args[0].__name__!r} is not one of this log's "
                f"event classes ({', '.join(t.name for t in self.event_types)})"
            ) from None
        type_codes = np.asarray(codes, dtype=np.int16)
        try:
            event_ids = pa.array([e.event_id for e in events], pa.binary(16))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            bad = next(
                e.event_id
                for e in events
                if not isinstance(e.event_id, bytes) or len(e.event_id) != 16
            )
            raise SchemaError(f"event_id {bad!r}: expected 16 bytes, e.g. uuid4().bytes") from None
        arrays: list[pa.Array] = [
            pa.array(np.arange(first_position, first_position + n, dtype=np.int64)),
            pa.array([e.aggregate_id for e in events], pa.string()),
            pa.array(self._aggregate_of_type[type_codes]),
            pa.array(np.fromiter(map(_VERSION, events), np.int64, n)),
            pa.array(type_codes),
            event_ids,
            pa.array([e.command_id for e in events], pa.string()),
            pa.array([e.correlation_id for e in events], pa.string()),
            pa.array(np.fromiter(map(_TIMESTAMP, events), np.int64, n)).view(TIMESTAMP),
        ]
        for column, values in zip(self.payload_columns, payload_values, strict=True):
            if column in self._msgpack_columns:
                values = [None if v is None else _packb(v, column) for v in values]
            arrays.append(pa.array(values, self._payload_types[column]))
        return pa.RecordBatch.from_arrays(arrays, schema=self.disk_schema)

    def _compile_extractor(self) -> Callable[[list[Any]], tuple[list[int], list[list[Any]]]]:
        """A function that, in one pass over the payloads, lists each event's type code
        and each payload column's values (None where the type has no such field).

        Generated, like dataclasses' own methods, because this is the hot loop of an
        append: a dict lookup and one call per event, plain appends inside.
        """
        columns = range(len(self.payload_columns))
        body = ["def extract(payloads):", "    codes = []", "    code = codes.append"]
        body += [f"    c{j} = []\n    a{j} = c{j}.append" for j in columns]
        table = []
        for k, et in enumerate(self.event_types):
            if et.cls is None:
                continue
            field_of = {f.column: f.name for f in et.fields}
            fill = [f"code({k})"] + [
                f"a{j}(p.{field_of[c]})" if c in field_of else f"a{j}(None)"
                for j, c in enumerate(self.payload_columns)
            ]
            body.append(f"    def f{k}(p):\n        " + "; ".join(fill))
            table.append(f"T{k}: f{k}")
        body.append(f"    fill = {{{', '.join(table)}}}")
        body.append("    for p in payloads:")
        body.append("        fill[p.__class__](p)")
        body.append(f"    return codes, [{', '.join(f'c{j}' for j in columns)}]")
        namespace: dict[str, Any] = {
            f"T{k}": et.cls for k, et in enumerate(self.event_types) if et.cls is not None
        }
        exec("\n".join(body), namespace)
        return namespace["extract"]  # type: ignore[no-any-return]

    # -- stream keys --------------------------------------------------------

    def stream_keys(self, events: Sequence[NewEvent]) -> list[str]:
        """Each event's stream key (its aggregate id and type, see `store.stream_key`).
        Call after `encode`, which names an event class this layout does not have."""
        suffix = self._key_suffix_of_class
        return [e.aggregate_id + suffix[e.payload.__class__] for e in events]

    def batch_keys(self, batch: pa.RecordBatch) -> pa.Array:
        """Each row's stream key, for a batch of this layout (on disk or as read)."""
        codes = batch.column(_AGG_INDEX)
        if pa.types.is_dictionary(codes.type):
            codes = codes.indices
        suffixes = self._key_suffixes.take(codes)
        return pc.binary_join_element_wise(batch.column(1), suffixes, "")

    # -- decoding -----------------------------------------------------------

    def to_read(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Turn an on-disk batch into the batch readers see (dictionary columns)."""
        # Two set_column calls: a third of the cost of rebuilding from all columns.
        schema = self.read_schema
        batch = batch.set_column(
            _AGG_INDEX,
            schema.field(_AGG_INDEX),
            pa.DictionaryArray.from_arrays(
                batch.column(_AGG_INDEX), self._agg_dictionary, safe=False
            ),
        )
        return batch.set_column(
            _TYPE_INDEX,
            schema.field(_TYPE_INDEX),
            pa.DictionaryArray.from_arrays(
                batch.column(_TYPE_INDEX), self._type_dictionary, safe=False
            ),
        )

    def decode(self, batch: pa.RecordBatch | pa.Table, partition: int) -> list[RecordedEvent]:
        """Python event objects for the rows of a read batch (or table)."""
        if batch.num_rows == 0:
            return []
        col = {name: batch.column(name) for name in batch.schema.names}
        positions = col["position"].to_pylist()
        agg_ids = col["aggregate_id"].to_pylist()
        agg_types = col["aggregate_type"].cast(pa.string()).to_pylist()
        versions = col["version"].to_pylist()
        event_types = col["event_type"].cast(pa.string()).to_pylist()
        event_ids = col["event_id"].to_pylist()
        command_ids = col["command_id"].to_pylist()
        correlation_ids = col["correlation_id"].to_pylist()
        timestamps = col["timestamp"].cast(pa.int64()).to_pylist()
        payload_values: dict[str, list[Any]] = {}
        by_name = {et.name: et for et in self.event_types}
        wanted = {f.column for name in set(event_types) for f in by_name[name].fields}
        for column in wanted:
            values = col[column].to_pylist()
            if column in self._msgpack_columns:
                values = [None if v is None else msgpack.unpackb(v) for v in values]
            payload_values[column] = values
        out = []
        for i, name in enumerate(event_types):
            et = by_name[name]
            kwargs = {f.name: payload_values[f.column][i] for f in et.fields}
            payload = et.cls(**kwargs) if et.cls is not None else kwargs
            out.append(
                RecordedEvent(
                    partition=partition,
                    position=positions[i],
                    aggregate_id=agg_ids[i],
                    aggregate_type=agg_types[i],
                    version=versions[i],
                    event_type=name,
                    payload=payload,
                    event_id=uuid.UUID(bytes=event_ids[i]),
                    command_id=command_ids[i],
                    timestamp=timestamps[i],
                    correlation_id=correlation_ids[i],
                )
            )
        return out


def upcaster_versions(upcasters: Sequence[Upcaster], types: Mapping[str, str]) -> dict[str, int]:
    """Each upcast event type's current version: one past its last upcaster, whose
    versions must run 1, 2, ... without a gap (an event at any of them can be read)."""
    by_type: dict[str, list[int]] = {}
    for u in upcasters:
        if u.event_type not in types:
            raise SchemaError(
                f"upcaster of {u.event_type!r} version {u.version}: no event class of that "
                f"name (the event types are {', '.join(types)}); name the class it upcasts to"
            )
        by_type.setdefault(u.event_type, []).append(u.version)
    for name, found in by_type.items():
        if sorted(found) != list(range(1, len(found) + 1)):
            raise SchemaError(
                f"upcasters of {name!r}: versions {sorted(found)}; expected one for each of "
                f"1 to {len(found)}, each turning that version's fields into the next's"
            )
    return {name: len(found) + 1 for name, found in by_type.items()}


def earlier_names(
    renamed: Mapping[str, type], types: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """Each event type's earlier names, from `renamed` (old name -> class)."""
    out: dict[str, tuple[str, ...]] = {}
    for old, cls in renamed.items():
        new = getattr(cls, "__name__", repr(cls))
        if new not in types:
            raise SchemaError(
                f"renamed {old!r} to {new!r}: {new!r} is not an event class of the layout"
            )
        if old in types:
            raise SchemaError(
                f"renamed {old!r} to {new!r}: {old!r} is still an event class; an event type "
                "has one name at a time"
            )
        out[new] = (*out.get(new, ()), old)
    return out


def _packb(value: Any, column: str) -> bytes:
    try:
        return msgpack.packb(value)  # type: ignore[no-any-return]
    except TypeError as err:
        raise SchemaError(
            f"payload field {column!r}: value {value!r} has no Arrow type and cannot be "
            f"msgpack-encoded ({err}); use int, float, bool, str, bytes, datetime, date, "
            "or lists and dicts of them"
        ) from None
