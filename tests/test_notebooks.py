"""The notebooks run top to bottom on a fresh machine, and `flows.notebook`, the API
they use, answers from the log what the views and the domain say."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import polars as pl
import pyarrow as pa
import pytest
from nbclient import NotebookClient
from view_data import bank_events, write_log

from flows.bank import ACCOUNT, Account
from flows.notebook import DataDir, diff, open_data
from queries import ProjectionsBusy
from store import NewEvent

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook_per_topic() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_event_log.ipynb",
        "02_views_and_queries.ipynb",
        "03_time_travel.ipynb",
        "04_performance.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_notebook_has_committed_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `python3` kernel that runs this interpreter (whatever kernels the machine has
    installed elsewhere), with Jupyter's and the notebooks' files under `tmp_path`."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched first
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # The notebooks make their data directories with tempfile: here, not in /tmp.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, kernel: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(kernel)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in shown if o.output_type == "error"]
    if path.stem != "02_views_and_queries":  # the others plot
        assert any("image/png" in o.get("data", {}) for o in shown)


# -- flows.notebook ------------------------------------------------------------------

EVENTS = bank_events(5, accounts=40, events=3000)


@pytest.fixture
def data(tmp_path: Path) -> Iterator[DataDir[Account]]:
    write_log(tmp_path, EVENTS)
    with open_data(tmp_path) as opened:
        yield opened


def _events_of(account: str) -> list[NewEvent]:
    return [e for e in EVENTS if e.aggregate_id == account]


def test_state_at_a_version_and_at_a_moment(data: DataDir[Account]) -> None:
    account = "acct-0007"
    mine = _events_of(account)
    for version in (1, len(mine) // 2, len(mine)):
        expected = ACCOUNT.fold(e.payload for e in mine[:version])
        assert data.state(account, version=version) == expected
        stamp = mine[version - 1].timestamp
        assert isinstance(stamp, int)
        assert data.state(account, at=stamp) == expected
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=stamp)
        assert data.state(account, at=moment) == expected
        assert data.state(account, at=moment.replace(tzinfo=None)) == expected  # naive: UTC
    assert data.state(account) == ACCOUNT.fold(e.payload for e in mine)
    assert data.state(account, version=0) == ACCOUNT.initial
    with pytest.raises(ValueError, match="there is no"):
        data.state(account, version=len(mine) + 1)
    with pytest.raises(KeyError, match="no events"):
        data.state("acct-nobody")


def test_history_gives_the_state_after_each_version(data: DataDir[Account]) -> None:
    mine = _events_of("acct-0003")
    history = data.history("acct-0003")
    assert history["version"].to_list() == list(range(1, len(mine) + 1))
    assert history["balance"].to_list() == [
        ACCOUNT.fold(e.payload for e in mine[:n]).balance for n in range(1, len(mine) + 1)
    ]
    assert history["event_type"][0] == "AccountOpened"


def _rounded(frame: pl.DataFrame) -> pl.DataFrame:
    """Float aggregates summed in another order may differ in the last bits."""
    return frame.with_columns(pl.col(pl.Float64).round(6))


KEYS = {
    "balances": ["account"],
    "account_status": ["account"],
    "daily_totals": ["day", "event_type"],
}


def test_a_view_as_of_the_log_s_end_is_the_live_view(data: DataDir[Account]) -> None:
    for name, keys in KEYS.items():
        live = _rounded(data.query(f"SELECT * FROM {name}"))
        computed = _rounded(data.view_as_of(name, data.positions()))
        assert live.height > 0
        assert diff(live, computed, keys).is_empty(), name


def test_a_view_as_of_earlier_positions_is_what_the_view_held_then(tmp_path: Path) -> None:
    write_log(tmp_path, EVENTS[:2000])
    with open_data(tmp_path) as data:
        then = data.positions()
        held = data.query("SELECT * FROM balances")
        write_log(tmp_path, bank_events(5, accounts=40, events=1000, first=2000))
        data.refresh()
        assert sum(data.positions().values()) == 3000
        assert diff(held, data.view_as_of("balances", then), ["account"]).is_empty()
        # Read-your-writes, with the positions of the last events as results give them.
        last = ",".join(f"{p}:{n - 1}" for p, n in data.positions().items())
        now = data.query("SELECT * FROM balances", after=last)
        changed = diff(held, now, ["account"])
        assert set(changed["change"]) == {"changed"} and changed.height > 0
        # A cut by time: the events recorded at or before the 1000th one's timestamp.
        stamp = EVENTS[999].timestamp
        assert isinstance(stamp, int)
        counted = data.view_as_of("SELECT count(*) AS n FROM events", at=stamp)
        assert counted["n"].to_list() == [1000]
        assert data.view_as_of("SELECT count(*) AS n FROM Deposited", {})["n"].to_list() == [0]


def test_diff_says_what_was_added_removed_and_changed() -> None:
    old = pa.table({"k": [1, 2, 3, 4], "v": ["a", "b", None, "d"], "w": [1.0, 2.0, 3.0, 4.0]})
    new = pl.DataFrame({"k": [2, 3, 4, 5], "v": ["b", "c", "d", "e"], "w": [2.0, 3.0, 4.5, 5.0]})
    found = diff(old, new, ["k"])
    assert found.columns == ["change", "k", "v", "v_old", "w", "w_old"]
    assert found.select("change", "k").rows() == [
        ("added", 5),
        ("changed", 3),  # a NULL that became a value is a change
        ("changed", 4),
        ("removed", 1),
    ]
    assert found.filter(pl.col("k") == 4).row(0) == ("changed", 4, "d", "d", 4.5, 4.0)
    assert diff(old, old, ["k"]).is_empty()
    with pytest.raises(ValueError, match="different columns"):
        diff(old, new.drop("w"), ["k"])


def test_query_explains_caches_and_reads_the_log_through_polars_and_duckdb(
    data: DataDir[Account],
) -> None:
    plan = data.query("SELECT avg(amount) FROM Withdrawn", explain=True)
    assert plan.filter("chosen")["target"].to_list() == ["daily_totals"]
    sql = "SELECT count(*) AS n FROM account_status"
    hits = data.layer.result_hits
    assert data.query(sql).equals(data.query(sql))
    assert data.layer.result_hits == hits + 1  # the second from the result cache
    assert data.log().select(pl.len()).collect().item() == len(EVENTS)
    assert data.relation().aggregate("count(*)").fetchall() == [(len(EVENTS),)]


def test_query_says_to_ask_the_server_while_another_process_holds_the_views(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, EVENTS[:500])
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, duckdb
                con = duckdb.connect({str(tmp_path / "projections.duckdb")!r})
                print("holding", flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:  # leaving closes its stdin, and it lets go
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        with open_data(tmp_path) as data:
            with pytest.raises(ProjectionsBusy, match=r'connect="grpc://127\.0\.0\.1:8815"'):
                data.query("SELECT * FROM balances")
            # The log is read without any lock: still there.
            assert data.log().select(pl.len()).collect().item() == 500
