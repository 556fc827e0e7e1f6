"""The README's "Your own application", followed step by step through the CLI, as
subprocesses in a fresh directory: init, run, query, serve, pytest, then the schema
change of that section (a field added, a type renamed, an upcaster) over the old log.
Also: two aggregate types in one run, and an application refused on another's data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import msgspec

ROOT = Path(__file__).resolve().parent.parent


def cqrsflow(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "CQRSFLOW_TOKEN": ""},
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def query(cwd: Path, sql: str, *where: str) -> list[dict[str, Any]]:
    out = ok(cqrsflow(cwd, "query", *(where or ("--data", "data")), "--format", "json", sql))
    return [json.loads(line) for line in out.splitlines()]


def statuses(data: Path) -> list[str]:
    lines = (data / "results").glob("*.jsonl")
    return [json.loads(x)["status"] for p in sorted(lines) for x in p.read_text().splitlines()]


# The section's schema change, applied to the starter's app.py and test_app.py.
CHANGES = [
    ("from flows import Aggregate, App,", "from flows import Aggregate, App, Upcaster,"),
    (
        "class TicketOpened(msgspec.Struct, frozen=True):\n    title: str\n",
        "class TicketOpened(msgspec.Struct, frozen=True):\n    title: str\n"
        '    priority: str = "normal"\n',
    ),
    (
        "class TicketAssigned(msgspec.Struct, frozen=True):\n    to: str\n",
        "class TicketAssigned(msgspec.Struct, frozen=True):\n    assignee: str\n",
    ),
    ("Ticket(state.status, event.to)", "Ticket(state.status, event.assignee)"),
    ('arg_max_null("to", version)', "arg_max_null(assignee, version)"),
    ("TicketClosed", "TicketResolved"),
    (
        'APP = App("helpdesk", (TICKET,), VIEWS)',
        'APP = App(\n    "helpdesk", (TICKET,), VIEWS,\n'
        '    renamed={"TicketClosed": TicketResolved},\n'
        '    upcasters=(Upcaster("TicketAssigned", 1, lambda old: {"assignee": old["to"]}),),\n)',
    ),
]


def change(path: Path) -> None:
    text = path.read_text()
    for old, new in CHANGES:  # the alias is written after the rename
        text = text.replace(old, new)
    path.write_text(text)


def test_the_readme_walk_through(tmp_path: Path) -> None:
    ok(cqrsflow(tmp_path, "init", "helpdesk"))
    home = tmp_path / "helpdesk"
    assert sorted(p.name for p in home.iterdir()) == [
        "README.md",
        "app.py",
        "commands.jsonl",
        "test_app.py",
    ]
    said = ok(cqrsflow(home, "run", "app.py:APP", "--commands", "commands.jsonl", "--data", "data"))
    assert "6 commands" in said and "4 accepted, 1 rejected, 1 invalid" in said
    assert json.loads((home / "data" / "app.json").read_text())["name"] == "helpdesk"
    tickets = query(home, "SELECT * FROM tickets ORDER BY ticket")
    assert tickets == [
        {"ticket": "T-1", "title": "printer on fire", "status": "closed", "assignee": "sam"},
        {"ticket": "T-2", "title": "no coffee", "status": "open", "assignee": None},
    ]
    # serve, without --app: the data directory says which application it holds
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "flows.cli", "serve", "--data", "data"),
            *("--port", "0", "--metrics-port", "-1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=home,
        env={**os.environ, "CQRSFLOW_TOKEN": ""},
    )
    try:
        assert server.stdout is not None
        line = next((x for x in server.stdout if "serving SQL" in x), "")
        assert " at grpc://" in line, server.stderr.read() if server.stderr else ""
        url = line.split(" at ")[1].split()[0]
        sql = "SELECT count(*) AS n FROM tickets WHERE status = 'open'"
        assert query(home, sql, "--connect", url) == [{"n": 1}]
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        cwd=home,
        check=False,
    )
    assert tests.returncode == 0 and "3 passed" in tests.stdout, tests.stdout + tests.stderr

    # the schema change, then more commands on the same data directory
    change(home / "app.py")
    change(home / "test_app.py")
    more = [
        {"command_id": "c7", "type": "AssignTicket", "aggregate_id": "T-2", "data": {"to": "kim"}},
        {"command_id": "c8", "type": "CloseTicket", "aggregate_id": "T-1", "data": {}},
        {"command_id": "c9", "type": "CloseTicket", "aggregate_id": "T-2", "data": {}},
    ]
    (home / "more.jsonl").write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in more))
    said = ok(cqrsflow(home, "run", "app.py:APP", "--commands", "more.jsonl", "--data", "data"))
    # T-1 was closed by a TicketClosed event, now read as TicketResolved: closing again
    # is refused, so the old events were folded, not skipped
    assert "2 accepted, 1 rejected" in said, said
    sql = "SELECT ticket, status, assignee FROM tickets ORDER BY ticket"
    assert query(home, sql) == [
        {"ticket": "T-1", "status": "closed", "assignee": "sam"},  # upcast from "to"
        {"ticket": "T-2", "status": "closed", "assignee": "kim"},
    ]
    old = query(home, "SELECT priority FROM events WHERE event_type = 'TicketOpened'")
    assert old == [{"priority": "normal"}, {"priority": "normal"}]  # the added default
    tail = ok(cqrsflow(home, "log", "tail", "--data", "data", "-n", "10"))
    assert '"TicketResolved"' in tail and '"TicketClosed"' not in tail
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        cwd=home,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_two_aggregate_types_in_one_run_and_one_id_in_both(tmp_path: Path) -> None:
    """The shop: a Product and an Order share the id "x-1" and are two streams."""

    def rec(cid: str, kind: str, agg: str, **data: Any) -> bytes:
        doc = {"command_id": cid, "type": kind, "aggregate_id": agg, "data": data}
        return msgspec.json.encode(doc) + b"\n"

    line = {"sku": "x-1", "quantity": 2, "price": 300}
    (tmp_path / "c.jsonl").write_bytes(
        rec("c1", "AddProduct", "x-1", name="lamp", price=300, stock=5)
        + rec("c2", "PlaceOrder", "x-1", customer="ann", lines=[line])
        + rec("c3", "ReserveStock", "x-1", order_id="x-1", quantity=2)
        + rec("c4", "PayOrder", "x-1", amount=600)
        + rec("c5", "PlaceOrder", "x-1", customer="bob", lines=[line])  # the same order
    )
    ok(cqrsflow(tmp_path, "run", "shop", "--commands", "c.jsonl", "--data", "d"))
    results = {}
    for p in (tmp_path / "d" / "results").glob("*.jsonl"):
        for x in p.read_text().splitlines():
            r = json.loads(x)
            results[r["command_id"]] = r
    assert [results[c]["status"] for c in ("c1", "c2", "c3", "c4", "c5")] == [
        "accepted", "accepted", "accepted", "accepted", "rejected",
    ]  # fmt: skip
    # each type's stream has its own versions, and results say which type
    assert [(results[c]["aggregate_type"], results[c]["version"]) for c in ("c1", "c2", "c3")] == [
        ("Product", 1),
        ("Order", 2),  # OrderPlaced and one LineAdded
        ("Product", 2),
    ]
    assert results["c5"]["reason"] == "the order is already paid"
    assert query(tmp_path, "SELECT sku, available FROM stock", "--data", "d") == [
        {"sku": "x-1", "available": 3}
    ]
    assert query(tmp_path, "SELECT order_id, status FROM orders", "--data", "d") == [
        {"order_id": "x-1", "status": "paid"}
    ]


def test_another_application_is_refused_on_a_data_directory(tmp_path: Path) -> None:
    ok(cqrsflow(tmp_path, "generate", "shop", "--commands", "50", "--products", "5", "-o", "s"))
    ok(cqrsflow(tmp_path, "run", "shop", "--commands", "s", "--data", "d"))
    ok(cqrsflow(tmp_path, "generate", "bank", "--commands", "50", "--accounts", "5", "-o", "b"))
    refused = cqrsflow(tmp_path, "run", "bank", "--commands", "b", "--data", "d")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "cqrsflow: d belongs to application 'shop' (flows.shop:APP), not 'bank' (bank): give "
        "'bank' a data directory of its own, or use flows.shop:APP here"
    ]
    for command in (["query", "--data", "d", "SELECT 1"], ["projections", "list", "--data", "d"]):
        refused = cqrsflow(tmp_path, *command, "--app", "bank")
        assert refused.returncode == 2 and "belongs to application 'shop'" in refused.stderr
    # no command created the bank's views in the shop's database
    with duckdb.connect(str(tmp_path / "d" / "projections.duckdb"), read_only=True) as con:
        names = {
            n
            for (n,) in con.sql(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        }
    assert "balances" not in names and {"stock", "orders"} <= names
    assert statuses(tmp_path / "d").count("accepted") > 0


def test_bytewax_run_runs_the_application_named_by_cqrsflow_app(tmp_path: Path) -> None:
    ok(cqrsflow(tmp_path, "init", "helpdesk"))
    home = tmp_path / "helpdesk"
    env = {
        **os.environ,
        "CQRSFLOW_APP": "app.py:APP",
        "CQRSFLOW_COMMANDS": "commands.jsonl",
        "CQRSFLOW_DATA": "data",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows:flow"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(statuses(home / "data")) == ["accepted"] * 4 + ["invalid", "rejected"]
    assert json.loads((home / "data" / "app.json").read_text())["name"] == "helpdesk"
    unset = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows:flow"],
        env={k: v for k, v in env.items() if k != "CQRSFLOW_APP"},
        cwd=home,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert unset.returncode != 0 and "set CQRSFLOW_APP" in unset.stderr
