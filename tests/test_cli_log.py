"""`cqrsflow demo` and `cqrsflow log stats|verify|tail`, run as a user would: subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def cqrsflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    done = cqrsflow("demo", "--data", str(directory), "--commands", "5000")
    assert done.returncode == 0, done.stderr
    assert "generated 5,000 commands" in done.stdout
    assert "every checksum matches" in done.stdout
    return directory


def accepted(data: Path) -> int:
    lines = b"".join(p.read_bytes() for p in (data / "results").glob("*.jsonl")).splitlines()
    return sum(1 for line in lines if json.loads(line)["status"] == "accepted")


def test_stats_counts_every_event(data: Path) -> None:
    done = cqrsflow("log", "stats", "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["events"] == accepted(data) > 4000  # the bank decides one event per command
    assert sum(doc["event_types"].values()) == doc["events"]
    assert set(doc["event_types"]) <= {"AccountOpened", "Deposited", "Withdrawn", "AccountClosed"}
    assert doc["bytes"] > 0 and doc["segments"][0]["events"] > 0


def test_tail_prints_the_last_events_as_json_lines(data: Path) -> None:
    done = cqrsflow("log", "tail", "--data", str(data), "-n", "3")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    stats = json.loads(cqrsflow("log", "stats", "--data", str(data), "--json").stdout)
    expected = []
    for _, partition in sorted(stats["partitions"].items()):
        end = partition["events"]
        expected += [end - 3, end - 2, end - 1]
    assert [line["position"] for line in lines] == expected
    assert all(line["aggregate_type"] == "Account" for line in lines)


def test_verify_passes_then_names_the_damaged_file(data: Path, tmp_path: Path) -> None:
    done = cqrsflow("log", "verify", "--data", str(data))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every checksum matches" in done.stdout
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(data), str(damaged)], check=True)
    segment = sorted((damaged / "log" / "0").glob("*.arrows"))[0]
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    segment.write_bytes(bytes(raw))
    done = cqrsflow("log", "verify", "--data", str(damaged))
    assert done.returncode == 1
    assert str(segment) in done.stdout and "checksum mismatch" in done.stdout


def test_a_directory_without_a_log_is_bad_input(tmp_path: Path) -> None:
    done = cqrsflow("log", "stats", "--data", str(tmp_path))
    assert done.returncode == 2
    assert "no event log here" in done.stderr


def test_help_explains_each_command() -> None:
    done = cqrsflow("--help")
    assert done.returncode == 0
    for command in ("demo", "log", "bench"):
        assert command in done.stdout
    assert cqrsflow("nonsense").returncode == 2
