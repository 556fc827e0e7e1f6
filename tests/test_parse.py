"""Command records: valid ones become typed commands, every other one a clear refusal."""

from __future__ import annotations

from typing import Any

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from connectors import Format
from flows import MAX_RECORD_BYTES, Command, Invalid, Parser
from flows.bank import ACCOUNT, CloseAccount, Deposit, OpenAccount, Withdraw

PARSER = Parser(ACCOUNT)
FORMATS: list[Format] = ["jsonl", "msgpack"]


def record(**changes: Any) -> dict[str, Any]:
    """A valid Deposit record, with `changes` (a value of `...` removes that field)."""
    doc: dict[str, Any] = {
        "command_id": "cmd-1",
        "type": "Deposit",
        "aggregate_id": "acct-1",
        "data": {"amount": 5},
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def encode(doc: Any, fmt: Format) -> bytes:
    return msgspec.json.encode(doc) if fmt == "jsonl" else msgspec.msgpack.encode(doc)


def parse(doc: Any, fmt: Format = "jsonl") -> Command | Invalid:
    return PARSER.parse(encode(doc, fmt), fmt)


def reason_of(result: Command | Invalid) -> str:
    assert isinstance(result, Invalid), f"expected Invalid, got {result!r}"
    return result.reason


# -- valid records -------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("type_", "data", "payload"),
    [
        ("OpenAccount", {"owner": "ann", "overdraft_limit": 100}, OpenAccount("ann", 100)),
        ("OpenAccount", {"owner": "ann"}, OpenAccount("ann", 0)),
        ("Deposit", {"amount": 5}, Deposit(5)),
        ("Withdraw", {"amount": 10**15}, Withdraw(10**15)),
        ("CloseAccount", {}, CloseAccount()),
    ],
)
def test_a_valid_record_becomes_a_typed_command(
    fmt: Format, type_: str, data: dict[str, Any], payload: Any
) -> None:
    doc = record(type=type_, data=data, expected_version=3, correlation_id="corr-9")
    assert parse(doc, fmt) == Command("cmd-1", "acct-1", payload, 3, "corr-9")


@pytest.mark.parametrize("fmt", FORMATS)
def test_expected_version_and_correlation_id_are_optional(fmt: Format) -> None:
    assert parse(record(), fmt) == Command("cmd-1", "acct-1", Deposit(5), None, None)
    assert parse(record(expected_version=None, correlation_id=None), fmt) == Command(
        "cmd-1", "acct-1", Deposit(5), None, None
    )


def test_a_record_of_exactly_the_size_limit_is_accepted() -> None:
    raw = encode(record(), "jsonl")
    padded = raw[:-1] + b" " * (MAX_RECORD_BYTES - len(raw)) + b"}"
    assert len(padded) == MAX_RECORD_BYTES
    assert isinstance(PARSER.parse(padded), Command)
    assert reason_of(PARSER.parse(padded + b" ")) == (
        "record is 65,537 bytes; at most 65,536 are accepted"
    )


# -- records that cannot be read -------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "raw", "reason"),
    [
        ("jsonl", encode(record(), "jsonl")[:-3], "malformed JSON: Input data was truncated"),
        (
            "msgpack",
            encode(record(), "msgpack")[:-3],
            "malformed msgpack: Input data was truncated",
        ),
        ("jsonl", b"", "malformed JSON: Input data was truncated"),
        ("msgpack", b"", "malformed msgpack: Input data was truncated"),
        (
            "jsonl",
            b"\xff\xfe\x00\x01garbage",
            "malformed JSON: JSON is malformed: invalid character (byte 0)",
        ),
        (
            "msgpack",
            b"\xc1\xc1",
            "malformed msgpack: MessagePack data is malformed: invalid opcode '\\xc1' (byte 0)",
        ),
    ],
    ids=[
        "json-truncated",
        "msgpack-truncated",
        "json-empty",
        "msgpack-empty",
        "json-garbage",
        "msgpack-garbage",
    ],
)
def test_an_unreadable_record_is_malformed(fmt: Format, raw: bytes, reason: str) -> None:
    assert PARSER.parse(raw, fmt) == Invalid(reason)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_oversize_record_is_refused_before_decoding(fmt: Format) -> None:
    raw = encode(record(padding="x" * MAX_RECORD_BYTES), fmt)
    assert PARSER.parse(raw, fmt) == Invalid(
        f"record is {len(raw):,} bytes; at most 65,536 are accepted"
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ([1, 2], "record: Expected `object`, got `array`"),
        (42, "record: Expected `object`, got `int` (42)"),
        ("cmd", "record: Expected `object`, got `str` ('cmd')"),
    ],
    ids=["array", "int", "str"],
)
def test_a_record_that_is_not_an_object_is_invalid(fmt: Format, doc: Any, reason: str) -> None:
    assert parse(doc, fmt) == Invalid(reason)


# -- records with a bad field ----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # wrong types: the field, the expected type, the value found
        ({"data": {"amount": "5"}}, "data.amount: Expected `int`, got `str` ('5')"),
        ({"data": {"amount": 5.0}}, "data.amount: Expected `int`, got `float` (5.0)"),
        ({"data": {"amount": True}}, "data.amount: Expected `int`, got `bool` (True)"),
        ({"expected_version": "3"}, "expected_version: Expected `int | null`, got `str` ('3')"),
        ({"correlation_id": 5}, "correlation_id: Expected `str | null`, got `int` (5)"),
        (
            {"type": "OpenAccount", "data": {"owner": ["ann"]}},
            "data.owner: Expected `str`, got `array`",
        ),
        # out of range
        ({"data": {"amount": -5}}, "data.amount: Expected `int` >= 1, got -5"),
        ({"data": {"amount": 0}}, "data.amount: Expected `int` >= 1, got 0"),
        (
            {"data": {"amount": 10**15 + 1}},
            "data.amount: Expected `int` <= 1000000000000000, got 1000000000000001",
        ),
        ({"expected_version": -1}, "expected_version: Expected `int` >= 0, got -1"),
        (
            {"type": "OpenAccount", "data": {"owner": "ann", "overdraft_limit": -1}},
            "data.overdraft_limit: Expected `int` >= 0, got -1",
        ),
        # missing and unknown fields are named, not the object around them
        ({"aggregate_id": ...}, "aggregate_id: missing (required)"),
        ({"data": ...}, "data: missing (required)"),
        ({"data": {}}, "data.amount: missing (required)"),
        ({"type": "OpenAccount", "data": {}}, "data.owner: missing (required)"),
        ({"priority": 1}, "priority: unknown field"),
        ({"data": {"amount": 5, "memo": "rent"}}, "data.memo: unknown field"),
        # data must be an object
        ({"data": [5]}, "data: Expected `object`, got `array`"),
        ({"data": 5}, "data: Expected `object`, got `int` (5)"),
        ({"data": "amount=5"}, "data: Expected `object`, got `str` ('amount=5')"),
        # an unknown command type lists the known ones
        (
            {"type": "Transfer"},
            "type: 'Transfer' is not a command of Account; "
            "expected one of OpenAccount, Deposit, Withdraw, CloseAccount",
        ),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "reason",
)
def test_a_bad_field_is_named_with_its_value_and_what_was_expected(
    fmt: Format, changes: dict[str, Any], reason: str
) -> None:
    assert reason_of(parse(record(**changes), fmt)) == reason


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_null_where_an_object_belongs_is_invalid(fmt: Format) -> None:
    # msgspec names null `null` in JSON and `None` in msgpack
    null = "null" if fmt == "jsonl" else "None"
    assert reason_of(parse(record(data=None), fmt)) == (
        f"data: Expected `object`, got `{null}` (None)"
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("changes", "field", "limit"),
    [
        ({"command_id": "c" * 257}, "command_id", 256),
        ({"aggregate_id": "a" * 10_000}, "aggregate_id", 256),
        ({"correlation_id": "r" * 257}, "correlation_id", 256),
        ({"type": "T" * 129}, "type", 128),
        ({"type": "OpenAccount", "data": {"owner": "o" * 201}}, "data.owner", 200),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_huge_string_is_refused_and_shown_cut_short(
    fmt: Format, changes: dict[str, Any], field: str, limit: int
) -> None:
    reason = reason_of(parse(record(**changes), fmt))
    assert reason.startswith(f"{field}: Expected `str` of length <= {limit}, got '")
    assert reason.endswith("...") and len(reason) < 160


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("field", ["command_id", "aggregate_id"])
def test_an_id_with_a_nul_is_invalid(fmt: Format, field: str) -> None:
    reason = reason_of(parse(record(**{field: "acct\x00-1"}), fmt))
    assert reason.startswith(f"{field}: Expected `str` matching regex ")
    assert reason.endswith(r"got 'acct\x00-1'")


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_id_is_invalid(fmt: Format) -> None:
    assert reason_of(parse(record(command_id=""), fmt)) == (
        "command_id: Expected `str` of length >= 1, got ''"
    )


def test_a_msgpack_key_that_is_not_a_string_is_invalid() -> None:
    assert reason_of(parse({1: "x"}, "msgpack")).startswith("record: Expected `str`, got `int`")


def test_an_integer_of_thousands_of_digits_is_invalid() -> None:
    raw = b'{"command_id":"c","type":"Deposit","aggregate_id":"a","data":{"amount":%s}}'
    assert PARSER.parse(raw % (b"9" * 5000)) == Invalid(
        "data.amount: Integer value out of range", "c", "a", "Account"
    )


# -- which ids an Invalid carries -------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "changes",
    [
        {"type": "Transfer"},
        {"data": {"amount": -5}},
        {"data": [1]},
        {"priority": 1},
        {"expected_version": "3"},
    ],
    ids=repr,
)
def test_an_invalid_record_carries_its_ids_when_they_were_readable(
    fmt: Format, changes: dict[str, Any]
) -> None:
    result = parse(record(**changes), fmt)
    assert isinstance(result, Invalid)
    assert (result.command_id, result.aggregate_id) == ("cmd-1", "acct-1")


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_id_of_the_wrong_type_is_not_carried(fmt: Format) -> None:
    assert parse(record(command_id=7), fmt) == Invalid(
        "command_id: Expected `str`, got `int` (7)", None, "acct-1"
    )
    assert parse(record(aggregate_id=...), fmt) == Invalid(
        "aggregate_id: missing (required)", "cmd-1", None
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_unreadable_record_carries_no_ids(fmt: Format) -> None:
    result = PARSER.parse(encode(record(), fmt)[:-2], fmt)
    assert isinstance(result, Invalid)
    assert (result.command_id, result.aggregate_id) == (None, None)


# -- records that crash the parser (bugs in flows/_parse.py: see the report) -------


def splice(doc: Any, fmt: Format, raw: bytes) -> bytes:
    """`doc` encoded, with the string "SPLICE" in it (a key or a value) replaced by `raw`."""
    encoded = encode(doc, fmt)
    assert encoded.count(encode("SPLICE", fmt)) == 1
    return encoded.replace(encode("SPLICE", fmt), raw)


# one place for each code path that decodes: the envelope, `data`, and the generic decode
# that finds the value for the message after a failure
PLACES = {
    "record": "SPLICE",
    "command_id": record(command_id="SPLICE"),
    "data.owner": record(type="OpenAccount", data={"owner": "SPLICE"}),
    "unknown field": record(extra="SPLICE"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("place", PLACES)
def test_a_string_that_is_not_utf8_is_invalid_not_a_crash(fmt: Format, place: str) -> None:
    # msgspec raises UnicodeDecodeError here, which is not a msgspec.DecodeError
    not_utf8 = b'"\xff\xfe"' if fmt == "jsonl" else b"\xa2\xff\xfe"
    result = PARSER.parse(splice(PLACES[place], fmt, not_utf8), fmt)
    assert isinstance(result, Invalid) and result.reason


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("place", PLACES)
def test_a_deeply_nested_record_is_invalid_not_a_crash(fmt: Format, place: str) -> None:
    # 2,000 levels take 4 KB, far below the size limit; past the interpreter's recursion
    # limit msgspec raises RecursionError, which is not a msgspec.DecodeError
    depth = 2_000
    nested = b"[" * depth + b"]" * depth if fmt == "jsonl" else b"\x91" * depth + b"\x90"
    result = PARSER.parse(splice(PLACES[place], fmt, nested), fmt)
    assert isinstance(result, Invalid) and result.reason


def test_an_unknown_field_with_a_backtick_in_its_name_is_named_whole() -> None:
    assert reason_of(parse(record(**{"a`b": 1}))) == "a`b: unknown field"


# -- fuzz: nothing raises ----------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
_plausible_data = st.fixed_dictionaries(
    {}, optional={"amount": values | st.integers(), "owner": values, "overdraft_limit": values}
)
records = st.fixed_dictionaries(
    {
        "command_id": st.text(max_size=300) | values,
        "type": st.sampled_from(list(ACCOUNT.command_types)) | values,
        "aggregate_id": st.text(max_size=300) | values,
        "data": _plausible_data | values,
    },
    optional={
        "expected_version": st.integers(-5, 2**63) | values,
        "correlation_id": st.text() | values,
        "extra": values,
    },
)


def _never_raises(raw: bytes, fmt: Format) -> None:
    result = PARSER.parse(raw, fmt)
    if isinstance(result, Invalid):
        assert isinstance(result.reason, str) and result.reason
    else:
        assert isinstance(result, Command)
        assert isinstance(result.payload, tuple(ACCOUNT.commands))


@pytest.mark.parametrize("fmt", FORMATS)
@hypothesis.given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(fmt: Format, raw: bytes) -> None:
    _never_raises(raw, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@hypothesis.given(doc=values)
def test_arbitrary_values_never_raise(fmt: Format, doc: Any) -> None:
    _never_raises(encode(doc, fmt), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@hypothesis.given(doc=records)
def test_records_with_the_right_keys_and_any_values_never_raise(fmt: Format, doc: Any) -> None:
    try:
        raw = encode(doc, fmt)
    except OverflowError:  # an integer msgpack cannot hold: no such record can arrive
        hypothesis.reject()
    _never_raises(raw, fmt)


VALID = [
    record(type="OpenAccount", data={"owner": "ann", "overdraft_limit": 100}, expected_version=0),
    record(type="Withdraw", data={"amount": 7}, correlation_id="corr-9"),
    record(type="CloseAccount", data={}),
]


@pytest.mark.parametrize("fmt", FORMATS)
@hypothesis.given(
    doc=st.sampled_from(VALID),
    edits=st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 3), st.binary(max_size=3)),
        min_size=1,
        max_size=4,
    ),
)
def test_a_valid_record_with_bytes_changed_never_raises(
    fmt: Format, doc: Any, edits: list[tuple[int, int, bytes]]
) -> None:
    raw = bytearray(encode(doc, fmt))
    for at, cut, new in edits:  # replace `cut` bytes at `at` by `new`
        at %= len(raw) + 1
        raw[at : at + cut] = new
    _never_raises(bytes(raw), fmt)
