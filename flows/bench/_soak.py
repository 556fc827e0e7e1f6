"""`cqrsflow bench soak`: hours (or minutes) of steady load, watching for slow leaks.

The setup is the production one, in real processes: `cqrsflow serve` holds the views
and answers Flight queries, and `cqrsflow run bank --commands -` beside it decides a
steady stream of commands written to its stdin (the run leaves the views to the
server). Meanwhile query threads ask the server a mix of point lookups and
aggregates, and every few seconds the resident memory of both process trees is read
from /proc.

It reports throughput, command -> result latency (from when each command was due, so
a feeder that falls behind shows as latency, as it would for a client), query
latency, resident memory after warm-up and at the end and the growth between them,
and errors: a query that failed, a command that came back invalid, a process that
exited badly. After warm-up the memory of a healthy flow stays flat: its caches and
its idempotency memory are bounded.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flows._progress import Report
from flows._workload import bank_commands, encoder
from flows.bench._harness import Figure, rate
from store import DataDir

DEFAULT_RATE = 2_000.0  # commands/s: steady, and well within a shared 2-core machine
QUERY_THREADS = 4
ACCOUNTS = 20_000
SAMPLE_EVERY_S = 2.0
TICK_S = 0.01  # the feeder writes what is due every tick
START_GUARD_S = 120.0  # a server that never says where it listens is an error, not a hang


@dataclass
class _Load:
    """What the threads measured; each list is appended by one thread only."""

    due: dict[str, float] = field(default_factory=dict)  # command id -> when it was due
    latencies_ms: list[float] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    rss_mb: list[tuple[float, float, float]] = field(default_factory=list)  # t, run, serve
    sent: int = 0
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    query_errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)  # the load ends
    finished: threading.Event = field(default_factory=threading.Event)  # all answered

    def error(self, what: str) -> None:
        self.errors.append(what)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and everything below it, in MB (Linux /proc)."""
    total = 0
    for p in (pid, *_descendants(pid)):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue  # gone meanwhile
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _descendants(pid: int) -> Iterator[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return
    for child in map(int, children):
        yield child
        yield from _descendants(child)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def _start_server(data: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    err = open(log, "wb")  # noqa: SIM115 (the child keeps it; closed with the process)
    proc = subprocess.Popen(
        _cli("serve", "--data", str(data), "--port", "0", "--metrics-port", "-1"),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    err.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + START_GUARD_S
    for line in proc.stdout:
        if "serving SQL over Arrow Flight at " in line:
            return proc, line.split(" at ")[1].split()[0]
        if time.monotonic() > deadline:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"cqrsflow serve did not start: {log.read_text()[-2000:]}")


def _feed(run: subprocess.Popen[bytes], load: _Load, per_s: float, started: float) -> None:
    """Write commands to the run's stdin at `per_s`, each one due at start + k / per_s."""
    assert run.stdin is not None
    encode = encoder("jsonl")
    records = bank_commands(10**12, ACCOUNTS, seed=11)
    sent = 0
    try:
        while not load.stop.is_set():
            owed = int((time.perf_counter() - started) * per_s) - sent
            if owed <= 0:
                time.sleep(TICK_S)
                continue
            chunk = []
            for _ in range(owed):
                record = next(records)
                assert isinstance(record, dict)
                load.due[record["command_id"]] = started + sent / per_s
                chunk.append(encode(record))
                sent += 1
            run.stdin.write(b"".join(chunk))
            run.stdin.flush()
            load.sent = sent
    except (BrokenPipeError, OSError) as err:
        load.error(f"the run stopped reading its commands: {err}")
    finally:
        with contextlib.suppress(OSError):
            run.stdin.close()  # the end of the input: the run drains and exits


def _tail_results(results: Path, load: _Load, skip: dict[Path, int]) -> None:
    """Match result lines, as they are written, to when their commands were due."""
    offsets = dict(skip)
    partial: dict[Path, bytes] = {}
    while True:
        finished = load.finished.is_set()
        for path in sorted(results.glob("*.jsonl")):
            with open(path, "rb") as f:
                f.seek(offsets.get(path, 0))
                chunk = f.read()
            if not chunk:
                continue
            offsets[path] = offsets.get(path, 0) + len(chunk)
            now = time.perf_counter()
            *lines, partial[path] = (partial.get(path, b"") + chunk).split(b"\n")
            for line in lines:
                doc = json.loads(line)
                due = load.due.pop(doc["command_id"], None)
                if due is None:
                    continue  # not one of ours (the set-up run's)
                load.latencies_ms.append((now - due) * 1000)
                load.answered += 1
                if doc["status"] == "invalid":
                    load.error(f"command {doc['command_id']} came back invalid: {doc['reason']}")
        if finished:
            return
        time.sleep(0.005)


def _query(url: str, load: _Load, seed: int) -> None:
    from queries import FlightQueryClient

    rng = random.Random(seed)
    with FlightQueryClient(url, timeout=30.0) as client:
        while not load.stop.is_set():
            sql = _query_sql(rng)
            started = time.perf_counter()
            try:
                client.query(sql)
            except Exception as err:  # every failure is a figure of the soak
                load.error(f"query {sql!r}: {type(err).__name__}: {err}")
                load.query_errors += 1
                time.sleep(0.1)
                continue
            load.query_ms.append((time.perf_counter() - started) * 1000)


def _query_sql(rng: random.Random) -> str:
    """A point lookup on a view, or an aggregate the planner answers from one."""
    account = f"acct-{rng.randrange(ACCOUNTS):07d}"
    return rng.choice(
        [
            f"SELECT balance FROM balances WHERE account = '{account}'",
            "SELECT event_type, count(*) AS n FROM events GROUP BY event_type",
            f"SELECT sum(amount) AS s FROM Deposited WHERE aggregate_id = '{account}'",
            "SELECT count(*) AS n FROM balances WHERE balance < 0",
        ]
    )


def _sample(load: _Load, run_pid: int, serve_pid: int, started: float, progress: Report) -> None:
    while not load.stop.wait(SAMPLE_EVERY_S):
        t = time.perf_counter() - started
        load.rss_mb.append((t, rss_mb(run_pid), rss_mb(serve_pid)))
        _, run_mb, serve_mb = load.rss_mb[-1]
        progress(
            f"{t:,.0f} s: {load.answered:,} answered, {len(load.query_ms):,} queries, "
            f"RSS run {run_mb:,.0f} MB, serve {serve_mb:,.0f} MB, {len(load.errors)} errors"
        )


def _set_up(data: Path, progress: Report) -> None:
    """A log to serve: every account opened (the server needs a log to start)."""
    opens = data.parent / "opens.jsonl"
    encode = encoder("jsonl")
    with open(opens, "wb") as f:
        for k in range(ACCOUNTS):
            record = {
                "command_id": f"open-{k}",
                "type": "OpenAccount",
                "aggregate_id": f"acct-{k:07d}",
                "data": {"owner": f"owner {k}", "overdraft_limit": 100 * (k % 3)},
            }
            f.write(encode(record))
    progress(f"opening {ACCOUNTS:,} accounts")
    done = subprocess.run(
        _cli("run", "bank", "--commands", str(opens), "--data", str(data), "--metrics-port", "-1"),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"setting up the soak's log failed: {done.stderr[-2000:]}")


def bench_soak(
    minutes: float,
    workdir: Path,
    progress: Report,
    *,
    commands_per_s: float = DEFAULT_RATE,
    query_threads: int = QUERY_THREADS,
) -> list[Figure]:
    """Steady commands and concurrent queries for `minutes`; see the module docstring."""
    if minutes <= 0:
        raise ValueError(f"minutes {minutes}: expected a positive duration")
    data = workdir / "soak" / "data"
    data.parent.mkdir(parents=True, exist_ok=True)
    _set_up(data, progress)
    results = DataDir(data).results
    before = {p: p.stat().st_size for p in results.glob("*.jsonl")}
    server, url = _start_server(data, data.parent / "serve.err")
    run_err = open(data.parent / "run.err", "wb")  # noqa: SIM115 (closed below)
    run = subprocess.Popen(
        _cli("run", "bank", "--commands", "-", "--data", str(data), "--metrics-port", "-1"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=run_err,
    )
    load = _Load()
    duration = minutes * 60
    warm_up = max(min(10.0, duration / 2), duration / 4)
    progress(
        f"soak: {commands_per_s:,.0f} commands/s and {query_threads} query threads for "
        f"{duration:,.0f} s (warm-up {warm_up:,.0f} s)"
    )
    started = time.perf_counter()
    threads = [
        threading.Thread(target=_feed, args=(run, load, commands_per_s, started), daemon=True),
        threading.Thread(target=_tail_results, args=(results, load, before), daemon=True),
        threading.Thread(
            target=_sample, args=(load, run.pid, server.pid, started, progress), daemon=True
        ),
        *(
            threading.Thread(target=_query, args=(url, load, seed), daemon=True)
            for seed in range(query_threads)
        ),
    ]
    try:
        for t in threads:
            t.start()
        while time.perf_counter() - started < duration and run.poll() is None:
            time.sleep(0.2)
        if run.poll() is not None:
            load.error(f"cqrsflow run exited early with {run.returncode}")
        elapsed = time.perf_counter() - started
        load.stop.set()
        feeder, tail, *others = threads
        feeder.join()
        code = run.wait(timeout=300)  # stdin closed: it answers what it read, then ends
        if code:
            load.error(f"cqrsflow run exited with {code}: {_last_line(data.parent / 'run.err')}")
        deadline = time.monotonic() + 60
        while load.due and time.monotonic() < deadline:
            time.sleep(0.05)  # the last results, written before the run ended
        load.finished.set()
        tail.join(timeout=60)
        for t in others:
            t.join(timeout=60)
        if load.due:
            load.error(f"{len(load.due):,} commands sent were never answered")
    finally:
        load.stop.set()
        load.finished.set()
        if run.poll() is None:
            run.kill()
            run.wait()
        run_err.close()
        server.terminate()
        try:
            if server.wait(timeout=60):
                load.error(f"cqrsflow serve exited with {server.returncode}")
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            load.error("cqrsflow serve did not stop on SIGTERM")
        if server.stdout is not None:
            server.stdout.close()
    for what in load.errors[:10]:
        progress(f"error: {what}")
    return _figures(load, elapsed, warm_up, commands_per_s)


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(nothing on stderr)"


def _rss_at(samples: list[tuple[float, float, float]], t: float) -> tuple[float, float]:
    """The first sample at or after `t` (the last one if none)."""
    for when, run_mb, serve_mb in samples:
        if when >= t:
            return run_mb, serve_mb
    return samples[-1][1], samples[-1][2]


def _figures(load: _Load, elapsed: float, warm_up: float, per_s: float) -> list[Figure]:
    samples = load.rss_mb or [(0.0, float("nan"), float("nan"))]
    warm_run, warm_serve = _rss_at(samples, warm_up)
    end_run, end_serve = samples[-1][1], samples[-1][2]
    quarters = [_rss_at(samples, elapsed * q / 4) for q in (1, 2, 3, 4)]

    def ms(name: str, values: list[float], q: float) -> Figure:
        return Figure(name, "ms", (_percentile(values, q),), "lower")

    figures = [
        Figure(
            f"soak: commands answered (offered {per_s:,.0f}/s)",
            "commands/s",
            (rate(load.answered, elapsed),),
            "higher",
        ),
        ms("soak: command -> result latency p50", load.latencies_ms, 0.5),
        ms("soak: command -> result latency p99", load.latencies_ms, 0.99),
        ms("soak: command -> result latency p99.9", load.latencies_ms, 0.999),
        Figure(
            "soak: queries answered", "queries/s", (rate(len(load.query_ms), elapsed),), "higher"
        ),
        ms("soak: query latency p50", load.query_ms, 0.5),
        ms("soak: query latency p99", load.query_ms, 0.99),
        *(
            Figure(f"soak: RSS of run at {q * 25}% of the time", "MB", (mb,), "lower")
            for q, (mb, _) in enumerate(quarters, 1)
        ),
        Figure("soak: RSS of run after warm-up", "MB", (warm_run,), "lower"),
        Figure("soak: RSS of run at the end", "MB", (end_run,), "lower"),
        Figure("soak: RSS growth of run after warm-up", "MB", (end_run - warm_run,), "lower"),
        Figure("soak: RSS of serve after warm-up", "MB", (warm_serve,), "lower"),
        Figure("soak: RSS of serve at the end", "MB", (end_serve,), "lower"),
        Figure("soak: RSS growth of serve after warm-up", "MB", (end_serve - warm_serve,), "lower"),
        Figure("soak: errors", "errors", (float(len(load.errors)),), "lower", target=0.0),
        Figure("soak: failed queries", "errors", (float(load.query_errors),), "lower", target=0.0),
    ]
    return figures
