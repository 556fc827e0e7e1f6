"""Events that evolve: a log written by one version of an application, read by the next.

A small library domain (a Book is lent and returned) is written by version 1 through
the real flow; version 2 changes one event (a field added with a default, a field
removed, the type renamed, or a field reshaped by an upcaster) and then runs on the same
data directory. Each change is checked where old events are read: the flow's
rehydration (its decisions), `read_stream`, the views, and a rebuild of the views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import RawBatch
from flows import (
    Aggregate,
    App,
    AppError,
    DeadLetter,
    FlowConfig,
    Rejected,
    Result,
    Upcaster,
    command_flow,
)
from flows.notebook import open_data
from queries import Projections, View, ViewDefinitionError
from store import ArrowLog, LogConfig, LogReader, NewEvent


class LendBook(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    member: str


class ReturnBook(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class Book(msgspec.Struct, frozen=True):
    lent_to: str = ""
    due_days: int = 0
    returns: int = 0


def library(
    lent: type,
    returned: type,
    *,
    renamed: dict[str, type] | None = None,
    reads: tuple[str, ...] | None = None,
    **app: Any,
) -> App:
    """The library with these two event classes (each version of the test defines its
    own), and a view that reads every field they have (or those `reads` names)."""

    def decide(command: Any, state: Book) -> Any:
        if isinstance(command, LendBook):
            if state.lent_to:
                return Rejected(f"already lent to {state.lent_to}")
            return [_lent(lent, command.member)]
        if not state.lent_to:
            return Rejected("the book is not lent")
        return [returned()]

    def evolve(state: Book, event: Any) -> Book:
        if isinstance(event, lent):
            member = getattr(event, "member", None) or getattr(event, "member_name", "")
            return Book(member, getattr(event, "due_days", 0), state.returns)
        if isinstance(event, returned):
            return Book("", 0, state.returns + 1)
        raise AssertionError(f"evolve was handed {event!r}")  # never a dict

    book = Aggregate("Book", Book(), decide, evolve, (LendBook, ReturnBook), (lent, returned))
    fields = set(reads or {f for cls in (lent, returned) for f in cls.__struct_fields__})
    columns = ", ".join(f"max({f}) AS max_{f}" for f in sorted(fields))
    view = View(
        "books",
        f"SELECT aggregate_id AS book, count(*) AS events, {columns}, "
        f"count(*) FILTER (WHERE event_type = '{returned.__name__}') AS returns "
        "FROM events GROUP BY aggregate_id",
    )
    return App("library", (book,), (view,), renamed=renamed or {}, **app)


def _lent(cls: type, member: str) -> Any:
    if "member_name" in cls.__struct_fields__:
        return cls(member_name=member)
    return cls(member=member)


def record(command_id: str, kind: str, book: str, **data: Any) -> bytes:
    doc = {"command_id": command_id, "type": kind, "aggregate_id": book, "data": data}
    return msgspec.json.encode(doc)


def run(app: App, data: Path, *records: bytes) -> dict[str, Result]:
    results: list[list[Result]] = []
    dead: list[list[DeadLetter]] = []
    source = TestingSource([RawBatch("test", "jsonl", list(records), list(range(len(records))))])
    config = FlowConfig(data, log=LogConfig(partitions=2))
    run_main(command_flow(app, source, TestingSink(results), TestingSink(dead), config))
    assert dead == []
    return {r.command_id: r for rs in results for r in rs}


def views(app: App, data: Path) -> list[tuple[Any, ...]]:
    reader = LogReader.open(data, app.layout())
    projections = Projections.open(data, app.views, app.layout(), reader=reader)
    try:
        projections.catch_up(reader)
        return projections.con.execute(
            f"SELECT * FROM {projections.table('books')} ORDER BY book"
        ).fetchall()
    finally:
        projections.close()


def rebuilt(app: App, data: Path) -> list[tuple[Any, ...]]:
    reader = LogReader.open(data, app.layout())
    projections = Projections.open(data, app.views, app.layout(), reader=reader)
    try:
        projections.rebuild("books")
        projections.catch_up(reader)
        return projections.con.execute(
            f"SELECT * FROM {projections.table('books')} ORDER BY book"
        ).fetchall()
    finally:
        projections.close()


def write_version_1(app: App, data: Path) -> None:
    """b1 lent and returned, b2 lent: written by version 1, views maintained."""
    found = run(
        app,
        data,
        record("c1", "LendBook", "b1", member="ann"),
        record("c2", "ReturnBook", "b1"),
        record("c3", "LendBook", "b2", member="bob"),
    )
    assert {r.status for r in found.values()} == {"accepted"}
    views(app, data)  # maintained from the old layout before the change


# -- version 1 of each event (module level: the log names classes by __name__) --------


class BookLent(msgspec.Struct, frozen=True):
    member: str


class BookReturned(msgspec.Struct, frozen=True):
    pass


V1 = library(BookLent, BookReturned)


def test_a_field_added_with_a_default_reads_old_events_with_it(tmp_path: Path) -> None:
    write_version_1(V1, tmp_path)

    class BookLent(msgspec.Struct, frozen=True):
        member: str
        due_days: int = 14

    v2 = library(BookLent, BookReturned)
    found = run(
        v2,
        tmp_path,
        record("c4", "ReturnBook", "b2"),  # rehydrates b2 from its version-1 event
        record("c5", "LendBook", "b1", member="cy"),
    )
    assert [found[c].status for c in ("c4", "c5")] == ["accepted", "accepted"]
    reader = LogReader.open(tmp_path, v2.layout())
    (old, *_) = reader.decode(reader.read_stream("b2"))
    assert old.payload == BookLent("bob", 14)
    # the views see the default, not NULL: b2's only lending is a version-1 event
    expected = [("b1", 3, 14, "cy", 1), ("b2", 2, 14, "bob", 1)]
    assert views(v2, tmp_path) == expected
    assert rebuilt(v2, tmp_path) == expected


def test_a_removed_field_is_ignored(tmp_path: Path) -> None:
    class BookLent(msgspec.Struct, frozen=True):
        member: str
        note: str = "handle with care"

    v1 = library(BookLent, BookReturned)  # its view reads `note`
    write_version_1(v1, tmp_path)

    class BookLent(msgspec.Struct, frozen=True):  # type: ignore[no-redef]
        member: str

    v2 = library(BookLent, BookReturned)
    found = run(v2, tmp_path, record("c4", "ReturnBook", "b2"))
    assert found["c4"].status == "accepted"
    reader = LogReader.open(tmp_path, v2.layout())
    assert [e.payload for e in reader.decode(reader.read_stream("b1"))] == [
        BookLent("ann"),
        BookReturned(),
    ]
    # the view's old version (reading `note`) is frozen until the new one replaces it
    expected = [("b1", 2, "ann", 1), ("b2", 2, "bob", 1)]
    assert views(v2, tmp_path) == expected == rebuilt(v2, tmp_path)


def test_a_renamed_event_type_is_read_under_its_new_name(tmp_path: Path) -> None:
    write_version_1(V1, tmp_path)

    class BookGivenBack(msgspec.Struct, frozen=True):
        pass

    v2 = library(BookLent, BookGivenBack, renamed={"BookReturned": BookGivenBack})
    found = run(
        v2,
        tmp_path,
        record("c4", "LendBook", "b1", member="cy"),  # b1 was returned: it can be lent
        record("c5", "ReturnBook", "b1"),
        record("c6", "ReturnBook", "b1"),  # and returned only once
    )
    assert [found[c].status for c in ("c4", "c5", "c6")] == ["accepted", "accepted", "rejected"]
    reader = LogReader.open(tmp_path, v2.layout())
    history = reader.decode(reader.read_stream("b1"))
    assert [e.event_type for e in history] == ["BookLent", "BookGivenBack"] * 2
    assert all(not isinstance(e.payload, dict) for e in history)
    # the old events count under the new name, in the views and in a rebuild
    expected = [("b1", 4, "cy", 2), ("b2", 1, "bob", 0)]
    assert views(v2, tmp_path) == expected == rebuilt(v2, tmp_path)
    # and in a notebook
    with open_data(tmp_path, v2) as notebook:
        assert [e.event_type for e in notebook.events("b1")] == ["BookLent", "BookGivenBack"] * 2
        assert notebook.state("b1", aggregate_type="Book") == Book("", 0, 2)
        assert notebook.history("b1")["returns"].to_list() == [0, 1, 1, 2]


def test_an_upcaster_reshapes_old_events(tmp_path: Path) -> None:
    class BookLent(msgspec.Struct, frozen=True):
        member_name: str

    write_version_1(library(BookLent, BookReturned), tmp_path)

    class BookLent(msgspec.Struct, frozen=True):  # type: ignore[no-redef]
        member: str
        due_days: int

    upcast = Upcaster("BookLent", 1, lambda old: {"member": old["member_name"], "due_days": 7})
    v2 = library(BookLent, BookReturned, upcasters=(upcast,))
    found = run(v2, tmp_path, record("c4", "LendBook", "b2", member="cy"))
    assert found["c4"].reason == "already lent to bob"  # b2's old event, upcast
    reader = LogReader.open(tmp_path, v2.layout())
    assert reader.decode(reader.read_stream("b2"))[0].payload == BookLent("bob", 7)
    expected = [("b1", 2, 7, "ann", 1), ("b2", 1, 7, "bob", 0)]
    assert views(v2, tmp_path) == expected == rebuilt(v2, tmp_path)


def test_a_changed_field_without_an_upcaster_is_refused_when_the_flow_starts(
    tmp_path: Path,
) -> None:
    write_version_1(V1, tmp_path)

    class BookLent(msgspec.Struct, frozen=True):
        member: int  # was a str

    with pytest.raises(AppError, match=r"field 'member' is string .* Upcaster\('BookLent', "):
        run(library(BookLent, BookReturned), tmp_path)


def test_an_unknown_event_type_is_refused_when_the_flow_starts(tmp_path: Path) -> None:
    write_version_1(V1, tmp_path)

    class BookGivenBack(msgspec.Struct, frozen=True):
        pass

    with pytest.raises(AppError) as refused:
        run(library(BookLent, BookGivenBack), tmp_path)
    message = str(refused.value)
    assert "'BookReturned'" in message and ".arrow" in message  # the type and the segment
    assert "renamed={'BookReturned': NewClass}" in message  # and the fix


def test_a_snapshot_is_not_used_once_an_upcaster_changes(tmp_path: Path) -> None:
    up7 = Upcaster("BookLent", 1, lambda old: {**old, "due_days": 7})
    up9 = Upcaster("BookLent", 1, lambda old: {**old, "due_days": 9})

    class BookLent(msgspec.Struct, frozen=True):
        member: str
        due_days: int

    a, b = (
        library(BookLent, BookReturned, upcasters=(up7,)),
        library(BookLent, BookReturned, upcasters=(up9,)),
    )
    book = a.aggregates[0]
    assert a.state_fingerprint(book) != b.state_fingerprint(b.aggregates[0])
    assert a.state_fingerprint(book) == a.state_fingerprint(book)


# -- a property: views over a log of mixed layouts equal a rebuild ------------------------


class BookGivenBack(msgspec.Struct, frozen=True):
    pass


class _Lent2(msgspec.Struct, frozen=True):
    member: str
    due_days: int = 14


_Lent2.__name__ = _Lent2.__qualname__ = "BookLent"  # version 2 of BookLent


def _versions() -> list[App]:
    """Three versions of the library: as written; a field added; a type renamed."""
    return [
        library(BookLent, BookReturned),
        library(_Lent2, BookReturned),
        library(_Lent2, BookGivenBack, renamed={"BookReturned": BookGivenBack}),
    ]


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.lists(st.integers(0, 3), min_size=1, max_size=25)),
        min_size=1,
        max_size=5,
    )
)
def test_views_over_a_mixed_layout_log_equal_a_rebuild(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[tuple[int, list[int]]]
) -> None:
    data = tmp_path_factory.mktemp("mixed")
    apps = _versions()
    chunks = sorted(chunks, key=lambda c: c[0])  # an application only moves forward
    newest = apps[chunks[-1][0]]
    versions: dict[str, int] = {}
    lent: set[str] = set()
    reader = None
    projections = None
    n = 0
    try:
        for version, books in chunks:
            app = apps[version]
            lent_cls, returned_cls = app.aggregates[0].events
            events = []
            for b in books:
                book = f"b{b}"
                versions[book] = versions.get(book, 0) + 1
                payload = returned_cls() if book in lent else lent_cls(member=f"m{n}")
                lent.symmetric_difference_update({book})
                events.append(
                    NewEvent(book, versions[book], payload, n.to_bytes(16, "big"), f"c{n}", n)
                )
                n += 1
            with ArrowLog.open(data, app.layout(), LogConfig(partitions=2)) as log:
                log.append(events)
            if projections is None:
                reader = LogReader.open(data, newest.layout())
                projections = Projections.open(data, newest.views, newest.layout(), reader=reader)
            assert reader is not None
            reader.refresh()
            projections.catch_up(reader)  # maintained chunk by chunk, across layouts
        assert projections is not None and reader is not None
        table = projections.table("books")
        live = projections.con.execute(f"SELECT * FROM {table} ORDER BY book").fetchall()
        projections.rebuild("books")
        projections.catch_up(reader)
        table = projections.table("books")
        again = projections.con.execute(f"SELECT * FROM {table} ORDER BY book").fetchall()
        assert live == again and sum(row[1] for row in live) == n
    finally:
        if projections is not None:
            projections.close()


def test_a_view_definition_error_names_the_view_and_the_log_gives_the_layout(
    tmp_path: Path,
) -> None:
    write_version_1(V1, tmp_path)
    bad = View("overdue", "SELECT aggregate_id, max(due_days) AS d FROM events GROUP BY ALL")
    with pytest.raises(ViewDefinitionError, match=r"view 'overdue': .*due_days"):
        Projections.open(tmp_path, [bad], V1.layout())
    # without a layout, the log's own (never a default domain's)
    projections = Projections.open(tmp_path, V1.views)
    try:
        assert projections.layout.aggregate_types == ("Book",)
    finally:
        projections.close()
