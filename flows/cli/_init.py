"""`cqrsflow init DIR`: a starter application to grow your own from.

It writes a module with one aggregate type and one view, its given/when/then tests, a
small commands file and a README of the next commands to type; `cqrsflow run`, `query`
and `pytest` work on it as written (a test runs exactly those).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli._common import EXIT_OK, Subparsers, Terminal, UsageError

APP = '''"""A help desk: tickets are opened, assigned, and closed once.

Your application: add aggregate types to APP, views to VIEWS, and run it with
``cqrsflow run app.py:APP --commands commands.jsonl --data data``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from flows import Aggregate, App, Decision, Rejected
from queries import View

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


# Commands: what someone asks for. Decoded from each record's "data" and validated there.
class OpenTicket(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Text


class AssignTicket(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    to: Text


class CloseTicket(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


# Events: what happened. They are the log's columns; never change one in place (add a
# field with a default, rename with App(renamed=...), or add an Upcaster).
class TicketOpened(msgspec.Struct, frozen=True):
    title: str


class TicketAssigned(msgspec.Struct, frozen=True):
    to: str


class TicketClosed(msgspec.Struct, frozen=True):
    pass


class Ticket(msgspec.Struct, frozen=True):
    status: Literal["new", "open", "closed"] = "new"
    assignee: str = ""


def decide(command: Any, state: Ticket) -> Decision:
    if isinstance(command, OpenTicket):
        if state.status != "new":
            return Rejected(f"the ticket is already {state.status}")
        return [TicketOpened(command.title)]
    if state.status != "open":
        return Rejected(f"the ticket is {'not open' if state.status == 'new' else 'closed'}")
    if isinstance(command, AssignTicket):
        if command.to == state.assignee:
            return Rejected(f"the ticket is already assigned to {state.assignee}")
        return [TicketAssigned(command.to)]
    if isinstance(command, CloseTicket):
        return [TicketClosed()]
    return Rejected(f"unknown command {type(command).__name__}")


def evolve(state: Ticket, event: Any) -> Ticket:
    if isinstance(event, TicketOpened):
        return Ticket("open")
    if isinstance(event, TicketAssigned):
        return Ticket(state.status, event.to)
    if isinstance(event, TicketClosed):
        return Ticket("closed", state.assignee)
    return state


TICKET = Aggregate(
    name="Ticket",
    initial=Ticket(),
    decide=decide,
    evolve=evolve,
    commands=(OpenTicket, AssignTicket, CloseTicket),
    events=(TicketOpened, TicketAssigned, TicketClosed),
)

VIEWS = (
    View(
        "tickets",
        """
        SELECT aggregate_id AS ticket,
               arg_max_null(title, version) FILTER (WHERE event_type = 'TicketOpened')
                   AS title,
               arg_max_null(CASE event_type WHEN 'TicketClosed' THEN 'closed'
                                            ELSE 'open' END, version) AS status,
               arg_max_null("to", version) FILTER (WHERE event_type = 'TicketAssigned')
                   AS assignee
        FROM events GROUP BY aggregate_id
        """,
        description="every ticket's title, status and assignee",
    ),
)

APP = App("helpdesk", (TICKET,), VIEWS)
'''

TESTS = '''"""Given these events, when this command, then these events (or a rejection)."""

from app import (
    TICKET,
    AssignTicket,
    CloseTicket,
    OpenTicket,
    TicketAssigned,
    TicketClosed,
    TicketOpened,
)
from flows.testing import given


def test_a_new_ticket_opens() -> None:
    given(TICKET).when(OpenTicket("printer on fire")).then(TicketOpened("printer on fire"))


def test_an_open_ticket_is_assigned_and_closed() -> None:
    opened = TicketOpened("printer on fire")
    given(TICKET, opened).when(AssignTicket("sam")).then(TicketAssigned("sam"))
    given(TICKET, opened).when(CloseTicket()).then(TicketClosed())


def test_a_closed_ticket_takes_nothing() -> None:
    closed = (TicketOpened("printer on fire"), TicketClosed())
    given(TICKET, *closed).when(AssignTicket("sam")).then_rejected("closed")
'''

COMMANDS = "".join(
    line + "\n"
    for line in (
        '{"command_id": "c1", "type": "OpenTicket", "aggregate_id": "T-1", "data": {"title": "printer on fire"}}',
        '{"command_id": "c2", "type": "OpenTicket", "aggregate_id": "T-2", "data": {"title": "no coffee"}}',
        '{"command_id": "c3", "type": "AssignTicket", "aggregate_id": "T-1", "data": {"to": "sam"}}',
        '{"command_id": "c4", "type": "CloseTicket", "aggregate_id": "T-1", "data": {}}',
        '{"command_id": "c5", "type": "AssignTicket", "aggregate_id": "T-1", "data": {"to": "kim"}}',
        '{"command_id": "c6", "type": "OpenTicket", "aggregate_id": "T-3", "data": {"title": ""}}',
    )
)

README = """# helpdesk: a cqrsflow application

`app.py` is the application (one aggregate type, `Ticket`, and one view, `tickets`),
`test_app.py` its tests, `commands.jsonl` a few commands (one is rejected, one invalid).
The next three commands:

    cqrsflow run app.py:APP --commands commands.jsonl --data data
    cqrsflow query --data data "SELECT * FROM tickets ORDER BY ticket"
    python -m pytest

`data/` then holds the log, the views, and a result per command in `data/results`.
"""

FILES = {"app.py": APP, "test_app.py": TESTS, "commands.jsonl": COMMANDS, "README.md": README}


def add_parser(sub: Subparsers) -> None:
    init = sub.add_parser(
        "init",
        help="write a starter application into a new directory",
        description="Write a starter application into DIR: app.py (one aggregate type and "
        "one view), test_app.py (its given/when/then tests), commands.jsonl and a README "
        "of the next commands to type.",
    )
    init.add_argument("dir", type=Path, metavar="DIR", help="a new or empty directory")
    init.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    target: Path = args.dir
    taken = [name for name in FILES if (target / name).exists()]
    if taken:
        raise UsageError(
            f"{target}: {', '.join(taken)} already there; pick a new directory (nothing "
            "was written)"
        )
    target.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (target / name).write_text(text)
    term.out.print(
        f"wrote a starter application to {target}: {', '.join(FILES)}. Next:\n"
        f"  cd {target}\n"
        "  cqrsflow run app.py:APP --commands commands.jsonl --data data\n"
        '  cqrsflow query --data data "SELECT * FROM tickets ORDER BY ticket"\n'
        "  python -m pytest",
        highlight=False,
    )
    return EXIT_OK
