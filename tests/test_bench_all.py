"""`cqrsflow bench all` and `cqrsflow bench compare`.

`bench all --scale small` runs once, as a user runs it (a subprocess, 40-60 s on two
cores), and its JSON and markdown are checked for their structure, never their timings:
the three tables, every figure with its unit, runs, baseline and ratio, every target of
DESIGN.md's performance table judged, the peer measured or skipped with a reason.
`bench compare` runs in-process on hand-written reports.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows import cli
from flows.bank import layout
from flows.bench import (
    BEGIN,
    END,
    SUITES,
    TARGETS,
    AllReport,
    Figure,
    Suite,
    SuiteUnavailable,
    arrow_decode,
    arrow_encode,
    bank_batches,
    bench_all,
    check_targets,
    json_decode,
    json_encode,
    msgpack_decode,
    msgpack_encode,
    peer_version,
    write_markdown,
)

DESIGN = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
# DESIGN.md rows whose figure no suite measures yet: each shows as not run, until the
# work that builds it adds the figure and takes its row out of here.
NOT_MEASURED_YET = {
    "queries through Flight SQL (ADBC), cached answer",
    "commands, 10M over 1M aggregates (most of them cold)",
    "2 processes on a 2-core machine",
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("bench")
    report, md = out / "report.json", out / "report.md"
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "bench", "all", "--scale", "small",
         "--json", str(report), "--markdown", str(md), "--workdir", str(out)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text()), md.read_text(), report


def _number(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_the_report_has_three_tables_of_complete_figures(
    small: tuple[dict[str, Any], str, Path],
) -> None:
    doc, _, _ = small
    assert doc["format"] == "cqrsflow-bench-all/1" and doc["scale"] == "small"
    assert {"python", "platform", "cpus"} <= doc["machine"].keys()
    assert list(doc["sections"]) == ["throughput", "latency", "resources"]
    figures = [f for section in doc["sections"].values() for f in section]
    assert all(doc["sections"].values())
    for f in figures:
        assert isinstance(f["name"], str) and f["unit"] and f["better"] in ("higher", "lower")
        assert f["runs"] and all(_number(r) for r in f["runs"]) and _number(f["value"])
        if f["baseline_name"] is not None:
            assert f["baseline_runs"] and _number(f["baseline"]), f["name"]
            assert f["ratio"] is None or _number(f["ratio"])
        if f["ratio_target"] is not None or f["target"] is not None:
            assert isinstance(f["met"], bool), f["name"]
    names = [f["name"] for f in figures]
    assert len(names) == len(set(names)), "names identify figures for `bench compare`"

    def section(name: str) -> str:
        return str(next(s for s, fs in doc["sections"].items() for f in fs if f["name"] == name))

    def having(start: str, baseline: str | None = None) -> list[dict[str, Any]]:
        found = [f for f in figures if f["name"].startswith(start)]
        assert found, f"no figure named {start!r}..."
        if baseline is not None:
            assert any(baseline in (f["baseline_name"] or "") for f in found), (start, baseline)
        return found

    # The throughput table, each beside its raw baseline where it has one.
    having("append from Python objects, fsync never", "raw pyarrow")
    having("append, fsync per batch", "fsync per batch")
    having("full zero-copy log scan", "memory_map")
    having("events decoded to Python objects", "to_pylist")
    having("commands end to end", "bare bytewax")
    having("view maintenance", "raw DuckDB upsert")
    having("cached query results")
    having("uncached point lookup on a view", "raw prepared DuckDB lookup")
    having("aggregate from a view", "base-scan plan")
    having("snapshot load", "msgpack")
    having("codec encode", "JSON")
    having("codec decode to Python objects", "msgpack")
    assert {section(f["name"]) for f in having("codec encode")} == {"throughput"}
    # Latency percentiles: command -> result, and queries, beside the raw lookup's.
    for kind in ("command -> result latency", "query latency, uncached point lookup"):
        found = having(kind)
        assert [f["name"].rsplit(", ", 1)[1] for f in found] == ["p50", "p95", "p99", "p99.9"]
        assert {section(f["name"]) for f in found} == {"latency"}
    having("query latency, uncached point lookup", "raw prepared DuckDB lookup")
    assert section(having("fsync latency of the disk")[0]["name"]) == "latency"
    # Resources.
    for start, unit in (
        ("peak RSS,", "MB"),
        ("CPU seconds, bench commands", "s"),
        ("bytes on disk per event", "bytes/event"),
        ("codec size", "bytes/event"),
    ):
        assert {(section(f["name"]), f["unit"]) for f in having(start)} == {("resources", unit)}
    having("bytes on disk per event", "JSON Lines")
    assert {s["name"] for s in doc["suites"]} >= {"write", "read", "commands", "query", "peer"}


def test_every_design_target_is_reported_with_its_figures_and_whether_it_is_met(
    small: tuple[dict[str, Any], str, Path],
) -> None:
    doc, _, _ = small
    targets = doc["targets"]
    assert [t["what"] for t in targets] == [t.what for t in TARGETS]
    for t in targets:
        if t["suite"] == "peer" and peer_version() is None:
            assert t["met"] is None and "pip install" in t["note"]
            continue
        if t["what"] in NOT_MEASURED_YET:
            assert t["met"] is None and t["note"] == f"bench {t['suite']}: not run", t
            assert not t["figures"]
            continue
        assert isinstance(t["met"], bool), t
        assert t["figures"] and all(_number(f["value"]) for f in t["figures"])
        assert t["met"] == all(f["met"] for f in t["figures"] if f["met"] is not None)


def test_the_peer_is_measured_or_skipped_with_a_reason(
    small: tuple[dict[str, Any], str, Path],
) -> None:
    doc, _, _ = small
    peer = [f for f in doc["sections"]["throughput"] if f["name"].startswith("peer:")]
    if peer_version() is None:
        assert not peer
        (skip,) = [s for s in doc["skipped"] if s["suite"] == "peer"]
        assert "eventsourcing" in skip["reason"] and "pip install" in skip["reason"]
        return
    commands, replay = peer
    assert "eventsourcing" in commands["baseline_name"] and "SQLite" in commands["baseline_name"]
    assert "synchronous=FULL" in commands["baseline_name"]  # durable writes
    assert commands["ratio_target"] == 100 and isinstance(commands["met"], bool)
    assert replay["unit"] == "events/s" and _number(replay["ratio"])


def test_a_report_read_back_from_its_json_is_the_same_report(
    small: tuple[dict[str, Any], str, Path],
) -> None:
    doc, _, _ = small
    again = json.loads(json.dumps(AllReport.from_json(doc).to_json()))
    assert again["sections"] == doc["sections"] and again["targets"] == doc["targets"]


def test_the_markdown_report_has_the_tables_and_the_targets(
    small: tuple[dict[str, Any], str, Path],
) -> None:
    doc, md, _ = small
    assert md.startswith(BEGIN) and md.rstrip().endswith(END)
    for heading in ("### Throughput", "### Latency", "### Resources", "### DESIGN.md targets"):
        assert heading in md
    for t in TARGETS:
        assert t.what.replace("|", "\\|") in md
    figures = sum(len(fs) for fs in doc["sections"].values())
    rows = [line for line in md.splitlines() if line.startswith("| ") and " | " in line]
    assert len(rows) >= figures + len(TARGETS)


def test_a_report_compared_with_itself_has_no_regression(
    small: tuple[dict[str, Any], str, Path],
) -> None:
    _, _, report = small
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "bench", "compare", str(report), str(report)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "0 got worse by more than 10%" in done.stdout


def test_the_targets_are_the_rows_of_designs_performance_table() -> None:
    if not DESIGN.exists():
        pytest.skip(f"{DESIGN} is not beside this checkout")
    text = DESIGN.read_text().split("## Performance targets", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]  # no header
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == [t.what for t in TARGETS]
    for (_, target, baseline), t in zip(cells, TARGETS, strict=True):
        for part in (target, baseline):
            if part and not part.startswith(("measured by", "the planner's", "bare", "raw")):
                assert part.replace("\u00d7", "x") in t.target, (part, t.target)


# -- bench compare on hand-written reports -----------------------------------------------


def _figure(name: str, value: float, better: str = "higher", **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "unit": "events/s",
        "value": value,
        "better": better,
        "ratio": None,
        "runs": [value],
        **more,
    }


def _write(path: Path, figures: list[dict[str, Any]], *, all_format: bool = True) -> str:
    if all_format:
        doc: dict[str, Any] = {
            "format": "cqrsflow-bench-all/1",
            "sections": {
                "throughput": [f for f in figures if f["better"] == "higher"],
                "latency": [f for f in figures if f["better"] == "lower"],
                "resources": [],
            },
        }
    else:
        doc = {"machine": {}, "figures": figures}
    path.write_text(json.dumps(doc))
    return str(path)


def _compare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["bench", "compare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_figure_worse_than_the_threshold_is_listed_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _write(tmp_path / "old.json", [
        _figure("append", 1000.0),
        _figure("p99 latency", 10.0, "lower", unit="ms"),
        _figure("scan", 500.0),
    ])  # fmt: skip
    new = _write(tmp_path / "new.json", [
        _figure("append", 800.0),  # 20% fewer events/s
        _figure("p99 latency", 12.5, "lower", unit="ms"),  # 25% slower
        _figure("scan", 520.0),  # better
    ])  # fmt: skip
    code, out, _ = _compare(capsys, old, new)
    assert code == 1
    assert "2 got worse by more than 10%" in out
    assert "append" in out and "20%" in out and "p99 latency" in out and "25%" in out
    assert "scan" not in out


def test_changes_within_the_threshold_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _write(tmp_path / "old.json", [_figure("append", 1000.0)])
    new = _write(tmp_path / "new.json", [_figure("append", 950.0)])  # 5% worse
    assert _compare(capsys, old, new)[0] == 0
    code, out, _ = _compare(capsys, old, new, "--threshold", "3%")
    assert code == 1 and "append" in out
    assert _compare(capsys, old, new, "--threshold", "0.06")[0] == 0


def test_ratios_to_baselines_are_judged_before_absolute_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _write(tmp_path / "old.json", [
        _figure("on a slower machine", 1000.0, ratio=0.9),
        _figure("fell behind its baseline", 1000.0, ratio=2.0),
    ])  # fmt: skip
    new = _write(tmp_path / "new.json", [
        # Half the events/s, but so is its baseline's: the machine, not the code.
        _figure("on a slower machine", 500.0, ratio=0.9),
        # The same events/s, but the baseline got faster and we did not keep up.
        _figure("fell behind its baseline", 1000.0, ratio=1.4),
    ], all_format=False)  # fmt: skip
    code, out, _ = _compare(capsys, old, new)
    assert code == 1
    assert "fell behind its baseline" in out and "ratio" in out and "30%" in out
    assert "on a slower machine" not in out.split("worse than the threshold", 1)[1]
    assert "2 figures compared (2 on their ratio to a baseline, 0 on their value)" in out


def test_figures_in_only_one_report_are_named_not_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _write(tmp_path / "old.json", [_figure("gone", 1.0), _figure("kept", 1.0)])
    new = _write(tmp_path / "new.json", [_figure("kept", 1.0), _figure("added", 1.0)])
    code, out, _ = _compare(capsys, old, new)
    assert code == 0
    assert re.search(r"only in OLD, not compared: gone", out)
    assert re.search(r"only in NEW, not compared: added", out)


@pytest.mark.parametrize(
    ("content", "threshold", "expected"),
    [
        ("not json", "10%", "not JSON"),
        ('{"rows": []}', "10%", "not a cqrsflow bench report"),
        ('{"figures": []}', "ten", "--threshold ten: expected a percentage like 10%"),
        ('{"figures": []}', "150%", "--threshold 150%"),
    ],
)
def test_bad_input_is_a_usage_error_that_says_what_was_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, threshold: str, expected: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _, err = _compare(capsys, str(bad), str(bad), "--threshold", threshold)
    assert code == 2 and expected in err and "Traceback" not in err


def test_a_missing_report_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _compare(capsys, str(tmp_path / "nope.json"), str(tmp_path / "nope.json"))
    assert code == 2 and "nope.json: no such file" in err


# -- the suite registry, targets and markdown, without running a benchmark ------------


def test_a_suite_that_cannot_run_here_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def ghost(*_: Any) -> list[Figure]:
        raise SuiteUnavailable("bench ghost: not available in this installation (needs ghostlib)")

    monkeypatch.setitem(SUITES, "ghost", Suite("ghost", ghost, "not written yet"))
    assert cli.main(["bench", "ghost", "--scale", "small"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "cqrsflow: bench ghost: not available in this installation (needs ghostlib)"
    )


def test_soak_and_cache_are_registered_with_their_flags() -> None:
    assert SUITES["soak"].sized_by == "minutes" and SUITES["cache"].sized_by == "scale"
    args = cli.parser().parse_args(["bench", "soak", "--minutes", "0.5", "--json"])
    assert (args.suite, args.minutes, args.json) == ("soak", 0.5, "-")
    args = cli.parser().parse_args(["bench", "write", "--json", "--scale", "small"])
    assert (args.suite, args.json, args.scale) == ("write", "-", "small")


def test_a_target_without_its_suite_says_why(tmp_path: Path) -> None:
    figures = [
        Figure("snapshot load", "ms", (0.5,), "lower", target=1.0),
        Figure("planner, plan-cache hit", "µs", (80.0,), "lower", target=50.0),
    ]
    targets = {t["what"]: t for t in check_targets(figures, {"peer": "not installed"})}
    assert targets["snapshot load"]["met"] is True
    assert targets["planner overhead on a plan-cache hit"]["met"] is False
    peer = targets["peer: the `eventsourcing` library with SQLite, same workload"]
    assert peer["met"] is None and peer["note"] == "bench peer: not installed"
    assert targets["view maintenance"]["note"] == "bench projections: not run"


def test_markdown_goes_between_the_markers_and_keeps_the_text_around_them(
    tmp_path: Path,
) -> None:
    report = AllReport("small", "2026-01-01T00:00:00+00:00", seconds=1.0)
    report.figures["read"] = [Figure("snapshot load", "ms", (0.5,), "lower", target=1.0)]
    report.suites.append(
        {
            "name": "read",
            "status": "ok",
            "reason": None,
            "seconds": 1.0,
            "cpu_seconds": 1.0,
            "figures": 1,
        }
    )
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Method\n\nby hand\n\n{BEGIN}\nold figures\n{END}\n\n## After\n")
    write_markdown(report, doc)
    text = doc.read_text()
    assert text.startswith("# Method\n\nby hand\n\n" + BEGIN) and text.endswith(
        END + "\n\n## After\n"
    )
    assert "old figures" not in text and "| snapshot load | 0.5 | ms | ≤ 1 |" in text


def test_every_codec_gives_back_the_events_it_was_given() -> None:
    batches = list(bank_batches(2_500, accounts=100))
    events = [e for batch in batches for e in batch]
    assert json_decode(json_encode(events)) == events
    assert msgpack_decode(msgpack_encode(events)) == events
    decoded = arrow_decode(arrow_encode(batches, layout()), layout())
    assert [(e.aggregate_id, e.version, e.payload, e.event_id.bytes) for e in decoded] == [
        (e.aggregate_id, e.version, e.payload, e.event_id) for e in events
    ]


def test_without_the_peer_library_bench_all_skips_it_saying_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The suite asks its own module whether the peer is installed.
    monkeypatch.setattr("flows.bench._peer.peer_version", lambda: None)
    report = bench_all("small", tmp_path, lambda *_: None, suites=("peer",))
    assert report.skipped == {
        "peer": 'the eventsourcing library is not installed; install it with `pip install -e ".[bench]"` to compare with it'
    }
    (peer,) = [t for t in report.targets() if t["suite"] == "peer"]
    assert peer["met"] is None and "pip install" in peer["note"]
    assert report.to_json()["skipped"] == [
        {"suite": "peer", "status": "skipped", "reason": report.skipped["peer"]}
    ]


def test_a_suite_that_fails_is_reported_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registered suite whose function cannot take a scale: it raises TypeError.
    monkeypatch.setitem(SUITES, "boom", Suite("boom", json.loads, "always fails"))
    report = bench_all("small", tmp_path, lambda *_: None, suites=("boom", "codecs"))
    assert report.failed == ["boom"] and report.skipped["boom"].startswith("TypeError: ")
    assert [s["status"] for s in report.suites] == ["failed", "ok"]
    assert any(f.name.startswith("codec encode") for f in report.all_figures())
