"""Reading events written by an earlier layout as the application's classes read them.

Every segment records the layout it was written with. A reader opened with the
application's layout presents every batch in that layout, whatever segment it comes
from, so that rehydration, `read_stream`, the views and notebooks all see one schema:

- an event type found under an earlier name (``renamed``) reads as its class;
- a field the class added reads as the class's default (for the views too, not NULL),
  a field the class removed is not read;
- an event stored at an earlier version is read through the type's upcasters, version
  by version, from its stored fields to its class's;
- anything else (a type no class of the application has, a field whose type changed,
  a new field without a default, a version newer than the class) is a `SchemaError`
  that names the type, the segment and the fix, raised before any event is read.

`Conversion` is one segment layout's plan, built once; a segment written with the
application's own layout needs none (`conversion` returns None).

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Lent:
...     book: str
>>> @dataclass(frozen=True)
... class LentV2:
...     book: str
...     days: int = 14
>>> old = Layout.from_classes({"Book": [Lent]})
>>> LentV2.__name__ = "Lent"
>>> new = Layout.from_classes({"Book": [LentV2]})
>>> from store import NewEvent
>>> batch = old.encode([NewEvent("b-1", 1, Lent("dune"), bytes(16), "c1", 0)], 0)
>>> plan = conversion(new, old, "segment 0")
>>> new.decode(new.to_read(plan.convert(batch)), 0)[0].payload
LentV2(book='dune', days=14)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store._errors import SchemaError
from store._layout import ENVELOPE_NAMES, EventType, Layout, PayloadField
from store._records import NO_DEFAULT

_CODES = {"aggregate_type": pa.int8(), "event_type": pa.int16()}


@dataclass(frozen=True, slots=True)
class _TypePlan:
    disk: EventType
    app: EventType
    app_code: int
    upcast: bool  # read through upcasters (Python); else column by column (Arrow)


class Conversion:
    """How to read one segment layout's batches as the application's layout."""

    def __init__(self, app: Layout, disk: Layout, plans: Sequence[_TypePlan]) -> None:
        self.app = app
        self.disk = disk
        self._plans = {disk.event_types.index(p.disk): p for p in plans}
        code_map = np.zeros(max(len(disk.event_types), 1), np.int16)
        for code, plan in self._plans.items():
            code_map[code] = plan.app_code
        self._code_map = code_map

    def disk_codes(self, app_names: Sequence[str]) -> list[int]:
        """The segment's codes of the event types the application calls `app_names`."""
        wanted = set(app_names)
        return [code for code, p in self._plans.items() if p.app.name in wanted]

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """An on-disk batch of the segment's layout as an on-disk batch of the app's."""
        app = self.app
        disk_codes = batch.column(4).to_numpy(zero_copy_only=False)
        app_codes = self._code_map[disk_codes]
        present = np.unique(disk_codes).tolist()
        arrays: list[pa.Array] = []
        for name in ENVELOPE_NAMES:
            if name == "event_type":
                arrays.append(pa.array(app_codes, _CODES[name]))
            elif name == "aggregate_type":
                arrays.append(pa.array(app.aggregate_codes(app_codes), _CODES[name]))
            else:
                arrays.append(batch.column(name))
        upcast = {
            code: self._upcast(batch, disk_codes, code)
            for code in present
            if self._plans[code].upcast
        }
        for column in app.payload_columns:
            arrays.append(self._column(batch, disk_codes, present, column, upcast))
        return pa.RecordBatch.from_arrays(arrays, schema=app.disk_schema)

    def _column(
        self,
        batch: pa.RecordBatch,
        disk_codes: np.ndarray,
        present: list[int],
        column: str,
        upcast: dict[int, list[dict[str, Any]]],
    ) -> pa.Array:
        arrow_type = self.app.payload_type(column)
        n = batch.num_rows
        result: pa.Array = pa.nulls(n, arrow_type)
        for code in present:
            plan = self._plans[code]
            field = next((f for f in plan.app.fields if f.column == column), None)
            if field is None:
                continue
            mask = pa.array(disk_codes == code)
            if plan.upcast:
                missing = None if field.default is NO_DEFAULT else field.default
                values = [
                    _stored(fields.get(field.name, missing), field) for fields in upcast[code]
                ]
                result = pc.replace_with_mask(result, mask, pa.array(values, arrow_type))
                continue
            source = next((d for d in plan.disk.fields if d.name == field.name), None)
            if source is None:  # added since: the class's default
                value = _stored(field.default, field)
                result = pc.if_else(mask, pa.scalar(value, arrow_type), result)
            elif len(present) == 1:
                return batch.column(source.column)
            else:
                result = pc.if_else(mask, batch.column(source.column), result)
        return result

    def _upcast(
        self, batch: pa.RecordBatch, disk_codes: np.ndarray, code: int
    ) -> list[dict[str, Any]]:
        """The stored fields of the rows of one event type, upcast to the class's version."""
        plan = self._plans[code]
        rows = batch.filter(pa.array(disk_codes == code))
        stored = [e.payload for e in self.disk.decode(self.disk.to_read(rows), 0)]
        out = []
        for fields in stored:
            for version in range(plan.disk.version, plan.app.version):
                fields = self.app.upcasters[(plan.app.name, version)](dict(fields))
            out.append(fields)
        return out


def _stored(value: Any, field: PayloadField) -> Any:
    if field.msgpack and value is not None:
        return msgpack.packb(value)
    return value


def conversion(app: Layout, disk: Layout, where: str) -> Conversion | None:
    """The plan to read `disk` (a segment's layout, `where` names it) as `app`, or None
    when there is nothing to convert; a `SchemaError` naming the fix when it cannot be."""
    if disk.same_as(app):
        return None
    by_name = {et.name: (code, et) for code, et in enumerate(app.event_types)}
    for code, et in enumerate(app.event_types):
        for old in et.renamed_from:
            by_name.setdefault(old, (code, et))
    plans = []
    for dt in disk.event_types:
        found = by_name.get(dt.name)
        if found is None:
            raise SchemaError(
                f"event type {dt.name!r} ({dt.aggregate_type}) in {where} is not an event "
                f"class of the application; if it was renamed, declare renamed="
                f"{{{dt.name!r}: NewClass}}; if it is gone, keep its class: its events are "
                "still in the log"
            )
        code, at = found
        if at.aggregate_type != dt.aggregate_type:
            raise SchemaError(
                f"event type {dt.name!r} in {where} belongs to {dt.aggregate_type}, but the "
                f"application's {at.name} belongs to {at.aggregate_type}; an event type "
                "cannot move to another aggregate type"
            )
        if dt.version > at.version:
            raise SchemaError(
                f"event type {dt.name!r} in {where} is at version {dt.version}, newer than "
                f"its class (version {at.version}): a newer version of the application "
                "wrote it; run that version"
            )
        upcast = dt.version < at.version
        if not upcast:
            _check_fields(dt, at, where)
        plans.append(_TypePlan(dt, at, code, upcast))
    return Conversion(app, disk, plans)


def _check_fields(disk: EventType, app: EventType, where: str) -> None:
    stored = {f.name: f for f in disk.fields}
    for f in app.fields:
        old = stored.get(f.name)
        if old is None:
            if f.default is NO_DEFAULT:
                raise SchemaError(
                    f"event type {app.name!r}: field {f.name!r} is not in the events of "
                    f"{where} and has no default; give it a default, or add an upcaster "
                    f"Upcaster({app.name!r}, {app.version}, ...) that fills it"
                )
            continue
        if old.arrow_type != f.arrow_type or old.msgpack != f.msgpack:
            raise SchemaError(
                f"event type {app.name!r}: field {f.name!r} is {old.arrow_type} in the events "
                f"of {where} but {f.arrow_type} in its class; add an upcaster "
                f"Upcaster({app.name!r}, {app.version}, ...) that converts it"
            )
