"""Command records in, typed commands or clear refusals out.

A command record (JSON or msgpack) has ``command_id``, ``type``, ``aggregate_id``,
``data`` (an object), and optionally ``expected_version`` and ``correlation_id``.
The envelope and then ``data`` are decoded straight into typed structs by msgspec,
which validates as it decodes; anything that does not fit becomes `Invalid` with a
reason that names the field, the value and what was expected, e.g.

    data.amount: Expected `int` > 0, got -5
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, Union

import msgspec

from connectors import Format
from flows._app import App, as_app
from flows._domain import Aggregate

MAX_RECORD_BYTES = 64 * 1024

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00]+$")]
# msgspec checks a pattern by calling Python's `re` per string: 0.8 us of a 2.3 us
# decode. The one-pass decoder leaves NUL out and `Parser.parse` checks it with `in`.
_FastId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


_Version = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
_Correlation = Annotated[str, msgspec.Meta(max_length=256)]


class CommandRecord(msgspec.Struct, forbid_unknown_fields=True):
    command_id: _Id
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    aggregate_id: _Id
    data: msgspec.Raw
    expected_version: _Version | None = None
    correlation_id: _Correlation | None = None


def _typed_records(commands: dict[str, type]) -> Any:
    """One struct per command type, tagged by `type`: valid records decode in one pass."""
    variants = tuple(
        msgspec.defstruct(
            f"{name}Record",
            [
                ("command_id", _FastId),
                ("aggregate_id", _FastId),
                ("data", cls),
                ("expected_version", _Version | None, None),
                ("correlation_id", _Correlation | None, None),
            ],
            tag=name,
            tag_field="type",
            forbid_unknown_fields=True,
        )
        for name, cls in commands.items()
    )
    return Union[variants]  # noqa: UP007  (a runtime union of generated types)


class Command(NamedTuple):
    """A command that passed validation, ready for its aggregate's decider.

    A named tuple: immutable, and built once per command at a fraction of a frozen
    dataclass's cost."""

    command_id: str
    aggregate_id: str
    payload: Any
    expected_version: int | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that is not a valid command, and why."""

    reason: str
    command_id: str | None = None
    aggregate_id: str | None = None
    aggregate_type: str | None = None  # when the record's type names a known command


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_FIELD = re.compile(r"Object (?P<kind>missing required|contains unknown) field `(?P<field>.+)`$")


class Parser:
    """Decodes and validates command records for an application (or one aggregate type):
    a record's ``type`` names one command of one of its aggregate types."""

    def __init__(self, app: App | Aggregate[Any], max_record_bytes: int = MAX_RECORD_BYTES):
        self.app = as_app(app)
        self.max_record_bytes = max_record_bytes
        command_types = {
            name: cls
            for aggregate in self.app.aggregates
            for name, cls in aggregate.command_types.items()
        }
        self._envelope: dict[
            str, msgspec.json.Decoder[CommandRecord] | msgspec.msgpack.Decoder[CommandRecord]
        ] = {
            "jsonl": msgspec.json.Decoder(CommandRecord),
            "msgpack": msgspec.msgpack.Decoder(CommandRecord),
        }
        self._data: dict[
            str, dict[str, msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]]
        ] = {
            "jsonl": {n: msgspec.json.Decoder(c) for n, c in command_types.items()},
            "msgpack": {n: msgspec.msgpack.Decoder(c) for n, c in command_types.items()},
        }
        self._types = ", ".join(command_types)
        self._aggregate_of_type = {
            name: a.name for a in self.app.aggregates for name in a.command_types
        }
        typed = _typed_records(command_types)
        self._fast: dict[str, msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]] = {
            "jsonl": msgspec.json.Decoder(typed),
            "msgpack": msgspec.msgpack.Decoder(typed),
        }

    def parse(self, raw: bytes, fmt: Format = "jsonl") -> Command | Invalid:
        if len(raw) <= self.max_record_bytes:
            try:  # the common case: a valid record, decoded and checked in one pass
                r = self._fast[fmt].decode(raw)
                if "\x00" not in r.command_id and "\x00" not in r.aggregate_id:
                    return Command(
                        r.command_id, r.aggregate_id, r.data, r.expected_version, r.correlation_id
                    )
            except _UNDECODABLE:
                pass  # the slower path below says exactly what is wrong
        return self._explain(raw, fmt)

    def _explain(self, raw: bytes, fmt: Format) -> Command | Invalid:
        if len(raw) > self.max_record_bytes:
            return Invalid(
                f"record is {len(raw):,} bytes; at most {self.max_record_bytes:,} are accepted"
            )
        try:
            record = self._envelope[fmt].decode(raw)
        except _UNDECODABLE as err:
            return self._invalid(raw, fmt, err, prefix="")
        decoder = self._data[fmt].get(record.type)
        if decoder is None:
            return Invalid(
                f"type: {record.type!r} is not a command of {self.app.name}; "
                f"expected one of {self._types}",
                record.command_id,
                record.aggregate_id,
            )
        try:
            payload = decoder.decode(record.data)
        except _UNDECODABLE as err:
            invalid = self._invalid(bytes(record.data), fmt, err, prefix="data")
            aggregate = self._aggregate_of_type[record.type]
            return Invalid(invalid.reason, record.command_id, record.aggregate_id, aggregate)
        return Command(
            record.command_id,
            record.aggregate_id,
            payload,
            record.expected_version,
            record.correlation_id,
        )

    def _invalid(self, raw: bytes, fmt: Format, err: Exception, prefix: str) -> Invalid:
        """Name the field, the value found there and what was expected."""
        message = str(err)
        found = _generic(raw, fmt)
        ids = found if isinstance(found, dict) and not prefix else {}
        command_id, aggregate_id = _usable(ids.get("command_id")), _usable(ids.get("aggregate_id"))
        if isinstance(err, RecursionError):
            return Invalid("record: nested too deeply", command_id, aggregate_id)
        if isinstance(err, UnicodeError):
            return Invalid(
                f"{prefix or 'record'}: a string is not valid UTF-8", command_id, aggregate_id
            )
        if not isinstance(err, msgspec.ValidationError):
            what = "JSON" if fmt == "jsonl" else "msgpack"
            where = f"{prefix}: " if prefix else ""
            return Invalid(f"{where}malformed {what}: {message}", command_id, aggregate_id)
        match = _PATH.search(message)
        path = match.group("path") if match else ""
        expected = _PATH.sub("", message)
        named = _FIELD.match(expected)
        if named:  # a missing or unknown field: name it, not the object around it
            path += "." + named.group("field")
            what = (
                "missing (required)"
                if named.group("kind") == "missing required"
                else "unknown field"
            )
            return Invalid(f"{(prefix + path).lstrip('.')}: {what}", command_id, aggregate_id)
        field = (prefix + path).lstrip(".") or "record"
        value = _lookup(found, path)
        if value is _MISSING or isinstance(value, dict | list):
            return Invalid(f"{field}: {expected}", command_id, aggregate_id)
        if ", got " in expected:
            return Invalid(f"{field}: {expected} ({_show(value)})", command_id, aggregate_id)
        return Invalid(f"{field}: {expected}, got {_show(value)}", command_id, aggregate_id)


_MISSING = object()
# What decoding untrusted bytes can raise: msgspec's errors, and two of Python's that
# its C code lets through (deep nesting, strings that are not UTF-8).
_UNDECODABLE = (msgspec.DecodeError, RecursionError, UnicodeError)


def _generic(raw: bytes, fmt: Format) -> Any:
    try:
        return msgspec.json.decode(raw) if fmt == "jsonl" else msgspec.msgpack.decode(raw)
    except _UNDECODABLE:
        return _MISSING


def _usable(value: Any) -> str | None:
    """An id worth carrying into a result: one that would itself pass validation."""
    if isinstance(value, str) and 0 < len(value) <= 256 and "\x00" not in value:
        return value
    return None


def _lookup(doc: Any, path: str) -> Any:
    """The value at a msgspec error path like `.data.amount` or `[3]`."""
    current = doc
    for key in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        name, index = key
        try:
            current = current[name] if name else current[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return current


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
