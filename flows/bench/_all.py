"""`cqrsflow bench all`: every suite, three tables, DESIGN.md's targets, JSON and markdown.

The suites are registered here by name with the function that measures them; one that
cannot run here (`SuiteUnavailable`: the peer library is not installed) is reported in
one line instead of failing the others.

`bench all` runs every suite but `soak` (it takes minutes) in one process, sharing
what they can: `read` and `query` measure the same log, written once, and the peer's
comparison uses the commands/s that `commands` measured. Each suite's CPU and wall
seconds are recorded around it. Its figures then go to three tables by what they
measure (throughput, latency, resources), and each row of DESIGN.md's performance
table is checked against the figures that measure it.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.table import Table

from flows.bench._cache import bench_cache
from flows.bench._codecs import bench_codecs
from flows.bench._flow import bench_commands
from flows.bench._harness import Figure, SuiteUnavailable, fmt, fmt_ratio, machine, render, wide
from flows.bench._peer import bench_peer
from flows.bench._query import bench_query
from flows.bench._soak import bench_soak
from flows.bench._store import SCALES, bench_read, bench_write, build_log
from flows.bench._views import VIEW_SCALES, bench_projections

if TYPE_CHECKING:
    from flows._progress import Report

SECTIONS = ("throughput", "latency", "resources")
Section = Literal["throughput", "latency", "resources"]
FORMAT = "cqrsflow-bench-all/1"


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    function: Callable[..., list[Figure]]
    help: str
    # What sizes it: a `Scale` (SCALES), a `ViewScale` (VIEW_SCALES), or minutes.
    sized_by: Literal["scale", "views", "minutes"] = "scale"


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("write", bench_write, "appends against raw pyarrow; fsync"),
        Suite("read", bench_read, "scans, decoding, read_stream, snapshots"),
        Suite("commands", bench_commands, "the command flow, latency, RSS"),
        Suite(
            "projections",
            bench_projections,
            "view maintenance against a raw DuckDB upsert",
            sized_by="views",
        ),
        Suite("query", bench_query, "the query layer against raw DuckDB"),
        Suite("codecs", bench_codecs, "Arrow vs JSON vs msgpack; size"),
        Suite("peer", bench_peer, "against the eventsourcing library"),
        Suite("cache", bench_cache, "the query result caches"),
        Suite("soak", bench_soak, "a long steady run (not in `all`)", sized_by="minutes"),
    )
}

# What `bench all` runs, in order: `commands` before `peer`, which reuses its figure,
# and before anything else that starts a child process (its peak RSS is the children's).
IN_ALL = ("commands", "write", "read", "query", "projections", "codecs", "peer", "cache")


def run_suite(
    name: str, scale: str, workdir: Path, progress: Report, minutes: float = 5.0, **shared: Any
) -> list[Figure]:
    """Run one registered suite at a named scale (or for `minutes`)."""
    suite = SUITES[name]
    if suite.sized_by == "minutes":
        return suite.function(minutes, workdir, progress)
    if suite.sized_by == "views":
        return suite.function(VIEW_SCALES[scale], workdir, progress)
    return suite.function(SCALES[scale], workdir, progress, **shared)


# -- the three tables ------------------------------------------------------------


def section_of(figure: Figure) -> Section:
    """Rates are throughput, times are latency, the rest (MB, bytes, CPU s) resources.
    A snapshot load is a time, but the issue's throughput table lists it: it is how
    fast a cold aggregate starts."""
    if figure.unit.endswith("/s") or figure.name.startswith("snapshot load"):
        return "throughput"
    if figure.unit in ("ms", "µs"):
        return "latency"
    return "resources"


# -- DESIGN.md's performance table -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One row of DESIGN.md's performance table, the suite that measures it and its
    figures (by the start of their names). Met when every one of those figures that
    carries a target or a ratio target meets it."""

    what: str
    target: str
    suite: str
    figures: tuple[str, ...]


TARGETS = (
    Target(
        "append from Python event objects, fsync never",
        "≥ 1,000,000 events/s; ≥ 0.9 x raw pyarrow build+write of the same events",
        "write",
        ("append from Python objects, fsync never",),
    ),
    Target(
        "append, fsync per batch of 1,000",
        "≥ 500,000 events/s",
        "write",
        ("append, fsync per batch",),
    ),
    Target(
        "full zero-copy log scan, checksums verified",
        "≥ 50,000,000 events/s; ≥ 0.9 x raw `pa.memory_map` scan",
        "read",
        ("full zero-copy log scan",),
    ),
    Target(
        "queries through Flight SQL (ADBC), cached answer",
        "≥ 0.5 x the in-process query layer (baseline: in-process, same run)",
        "query",
        ("queries through Flight SQL (ADBC), cached answer",),
    ),
    Target("read one aggregate of 10k events among 10M", "≤ 5 ms", "read", ("read_stream of ",)),
    Target("snapshot load", "≤ 1 ms", "read", ("snapshot load",)),
    Target(
        "commands end to end (parse → decide → durable append → result), 1 worker",
        "≥ 0.5 x the user's own code alone (≈ 300,000 commands/s here); baseline: "
        "decode + decide + evolve of the same commands in a bare loop",
        "commands",
        ("commands end to end (parse",),
    ),
    Target(
        "commands, 10M over 1M aggregates (most of them cold)",
        "≥ 0.5 x the hot rate (baseline: the hot workload of the same run)",
        "commands",
        ("commands over many aggregates, mostly cold",),
    ),
    Target(
        "2 processes on a 2-core machine",
        "≥ 1.6 x one process (baseline: one process, same input)",
        "commands",
        ("commands end to end, 2 processes",),
    ),
    Target(
        "command → result latency at a steady 50k commands/s",
        "p50 ≤ 1.5 ms, p99 ≤ 10 ms, p99.9 ≤ 25 ms",
        "commands",
        ("command -> result latency",),
    ),
    Target(
        "view maintenance",
        "≥ 500,000 events/s; ≥ 0.8 x raw DuckDB upsert of the same batches",
        "projections",
        ("view maintenance",),
    ),
    Target(
        "planner overhead on a plan-cache hit", "≤ 50 µs", "query", ("planner, plan-cache hit",)
    ),
    Target("cached query results", "≥ 200,000 queries/s", "query", ("cached query results",)),
    Target(
        "uncached point lookup on a view",
        "≥ 0.8 x raw DuckDB prepared lookup",
        "query",
        ("uncached point lookup on a view",),
    ),
    Target(
        "aggregate query from a view vs base log scan, 10M events",
        "≥ 100 x faster than the planner's own base-scan plan",
        "query",
        ("aggregate from a view",),
    ),
    Target("memory, 10M commands over 1M aggregates", "RSS ≤ 500 MB", "commands", ("peak RSS,",)),
    Target(
        "peer: the `eventsourcing` library with SQLite, same workload",
        "≥ 100 x its commands/s",
        "peer",
        ("peer: commands end to end",),
    ),
)


def _measured(f: Figure) -> str:
    text = f"{fmt(f.value, f.unit)} {f.unit}"
    if f.ratio is not None:
        text += f", {fmt_ratio(f.ratio)} {f.baseline_name}"
    return text


def check_targets(figures: Sequence[Figure], skipped: dict[str, str]) -> list[dict[str, Any]]:
    """Each DESIGN.md target with the figures measuring it and whether it is met.

    `met` is None only when nothing judged it: `note` then says why (its suite was
    skipped or failed, with the reason)."""
    out = []
    for t in TARGETS:
        found = [f for f in figures if f.name.startswith(t.figures)]
        judged = [f.met for f in found if f.met is not None]
        note = None
        if not found:
            note = f"bench {t.suite}: " + skipped.get(t.suite, "not run")
        elif not judged:
            note = "measured, but no figure carries this target"
        out.append(
            {
                "what": t.what,
                "target": t.target,
                "suite": t.suite,
                "met": all(judged) if judged else None,
                "note": note,
                "figures": [
                    {
                        "name": f.name,
                        "value": f.value,
                        "unit": f.unit,
                        "baseline": f.baseline,
                        "ratio": f.ratio,
                        "met": f.met,
                        "measured": _measured(f),
                    }
                    for f in found
                ],
            }
        )
    return out


# -- running everything ----------------------------------------------------------


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class AllReport:
    scale: str
    started: str
    figures: dict[str, list[Figure]] = field(default_factory=dict)  # by suite
    suites: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped(self) -> dict[str, str]:
        return {s["name"]: s["reason"] for s in self.suites if s["status"] != "ok"}

    @property
    def failed(self) -> list[str]:
        return [s["name"] for s in self.suites if s["status"] == "failed"]

    def all_figures(self) -> list[Figure]:
        return [f for figures in self.figures.values() for f in figures]

    def sections(self) -> dict[str, list[Figure]]:
        out: dict[str, list[Figure]] = {s: [] for s in SECTIONS}
        for f in self.all_figures():
            out[section_of(f)].append(f)
        return out

    def targets(self) -> list[dict[str, Any]]:
        return check_targets(self.all_figures(), self.skipped)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AllReport:
        """A report back from its JSON (to write its markdown again, say); figures are
        grouped under one name, since the JSON keeps them by section, not by suite."""
        figures = [Figure.from_json(f) for section in doc["sections"].values() for f in section]
        return cls(doc["scale"], doc["started"], {"all": figures}, doc["suites"], doc["seconds"])

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "scale": self.scale,
            "started": self.started,
            "seconds": self.seconds,
            "machine": machine(),
            "sections": {
                name: [f.to_json() for f in figures] for name, figures in self.sections().items()
            },
            "targets": self.targets(),
            "suites": self.suites,
            "skipped": [
                {"suite": s["name"], "status": s["status"], "reason": s["reason"]}
                for s in self.suites
                if s["status"] != "ok"
            ],
        }


def bench_all(
    scale: str, workdir: Path, progress: Report, suites: Iterable[str] = IN_ALL
) -> AllReport:
    """Every suite in `suites` at `scale`; one that cannot run is recorded with why."""
    report = AllReport(scale, datetime.now(UTC).isoformat(timespec="seconds"))
    started = time.perf_counter()
    shared_log: Path | None = None
    for name in suites:
        progress(f"bench {name} ({SUITES[name].help})")
        cpu, wall = _cpu(), time.perf_counter()
        status, reason = "ok", None
        try:
            extra: dict[str, Any] = {}
            if name in ("read", "query"):
                if shared_log is None:  # written once, counted in the first suite's time
                    shared_log = Path(tempfile.mkdtemp(dir=workdir, prefix="log-"))
                    build_log(shared_log, SCALES[scale], progress)
                extra["log"] = shared_log
            if name == "peer":
                ours = [
                    f
                    for f in report.figures.get("commands", [])
                    if f.name.startswith("commands end to end (parse")
                ]
                if ours:
                    extra["ours_commands"] = ours[0].runs
            work = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{name}-"))
            report.figures[name] = run_suite(name, scale, work, progress, **extra)
        except SuiteUnavailable as err:
            status, reason = "skipped", str(err)
        except Exception as err:  # one suite's failure must not lose the others' figures
            status, reason = "failed", f"{type(err).__name__}: {err}"
        wall = time.perf_counter() - wall
        cpu = _cpu() - cpu
        report.suites.append(
            {
                "name": name,
                "status": status,
                "reason": reason,
                "seconds": wall,
                "cpu_seconds": cpu,
                "figures": len(report.figures.get(name, [])),
            }
        )
        if status == "ok":
            report.figures[name].append(Figure(f"CPU seconds, bench {name}", "s", (cpu,), "lower"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.figures.setdefault("all", []).append(
        Figure("memory: peak RSS of the bench process itself", "MB", (peak,), "lower")
    )
    report.seconds = time.perf_counter() - started
    return report


# -- showing it --------------------------------------------------------------------


def render_all(report: AllReport, console: Console) -> None:
    console = wide(console)
    for name, figures in report.sections().items():
        render(f"{name.capitalize()} ({report.scale})", figures, console)
    table = Table(title="DESIGN.md targets", title_justify="left")
    for col in ("what", "target", "measured", "met"):
        table.add_column(col)
    for t in report.targets():
        measured = "; ".join(f["measured"] for f in t["figures"]) or (t["note"] or "")
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "—"}[t["met"]]
        table.add_row(t["what"], t["target"], measured, met)
    console.print(table)
    for suite, reason in report.skipped.items():
        console.print(f"[yellow]skipped[/] bench {suite}: {reason}", highlight=False)
    console.print(f"{len(report.all_figures())} figures in {report.seconds:.0f} s", highlight=False)


BEGIN, END = "<!-- bench all: begin -->", "<!-- bench all: end -->"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: AllReport) -> str:
    m = machine()
    lines = [
        BEGIN,
        f"`cqrsflow bench all --scale {report.scale}`, started {report.started}, took "
        f"{report.seconds:.0f} s; Python {m['python']} on {m['platform']}, {m['cpus']} CPUs.",
        "",
    ]
    header = "| figure | median | unit | target | baseline | baseline median | ratio | met |"
    for name, figures in report.sections().items():
        lines += [f"### {name.capitalize()}", "", header, "|---|--:|---|--:|---|--:|--:|---|"]
        for f in figures:
            target = ""
            if f.target is not None:
                target = ("≥ " if f.better == "higher" else "≤ ") + fmt(f.target, f.unit)
            ratio = fmt_ratio(f.ratio, f.ratio_target)
            met = {True: "yes", False: "**no**", None: ""}[f.met]
            lines.append(
                f"| {_md(f.name)} | {fmt(f.value, f.unit)} | {f.unit} | {target} | "
                f"{_md(f.baseline_name or '')} | {fmt(f.baseline, f.unit) if f.baseline else ''} "
                f"| {ratio} | {met} |"
            )
        lines.append("")
    lines += [
        "### DESIGN.md targets",
        "",
        "| what | target | measured | met |",
        "|---|---|---|---|",
    ]
    for t in report.targets():
        measured = "<br>".join(_md(f"{f['name']}: {f['measured']}") for f in t["figures"])
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(
            f"| {_md(t['what'])} | {_md(t['target'])} | {measured or _md(t['note'] or '')} "
            f"| {met} |"
        )
    lines.append("")
    lines += [
        f"- {s['status']}: bench {s['name']}: {_md(s['reason'])}"
        for s in report.suites
        if s["status"] != "ok"
    ]
    lines += [
        "",
        "### Suites",
        "",
        "| suite | status | wall s | CPU s | figures |",
        "|---|---|--:|--:|--:|",
        *(
            f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} "
            f"| {s['figures']} |"
            for s in report.suites
        ),
        END,
    ]
    return "\n".join(lines) + "\n"


def write_markdown(report: AllReport, path: Path) -> None:
    """Write the report; into an existing file with the markers, only between them, so
    the text written around it by hand (the method, the machine) stays."""
    text = markdown(report)
    if path.exists():
        old = path.read_text()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            text = head + text.rstrip("\n") + rest.split(END, 1)[1]
    path.write_text(text)
