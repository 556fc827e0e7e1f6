"""One look for every progress bar: what, how far, how fast, how long still.

Quiet when the output is not a terminal (a log file wants the summary, not redraws).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _Rate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="cyan")


def progress_bar(console: Console, unit: str) -> Progress:
    """A bar per task: description, bar, percent, done/total, rate, time left."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            "{task.completed:,.0f}/{task.total:,.0f} " + unit
            if unit
            else "{task.completed:,.0f}/{task.total:,.0f}"
        ),
        _Rate(unit),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def count_records(path: Path) -> int | None:
    """How many JSON Lines records a file or directory holds; None when not countable
    (stdin, msgpack)."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or any(f.suffix in (".msgpack", ".mpk") for f in files):
        return None
    lines = 0
    for f in files:
        with open(f, "rb") as stream:
            while block := stream.read(1 << 20):
                lines += block.count(b"\n")
    return lines


@contextmanager
def answered_progress(
    console: Console, registry: CollectorRegistry, total: int | None
) -> Iterator[None]:
    """A bar of commands answered (from the run's own metrics) while the block runs."""
    if total is None or not console.is_terminal:
        yield
        return
    stop = threading.Event()
    with progress_bar(console, "commands") as bar:
        task = bar.add_task("running", total=total)

        def follow() -> None:
            while not stop.wait(0.25):
                bar.update(task, completed=_answered(registry))

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _answered(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for family in registry.collect()
        if family.name == "cqrsflow_commands"
        for s in family.samples
        if s.name == "cqrsflow_commands_total"
    )


class Report(Protocol):
    """How long work says where it is: a phase, or a count of a known total."""

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None: ...


@contextmanager
def reporting(console: Console, *, quiet: bool = False) -> Iterator[Report]:
    """Phases as lines, counted work as bars with rate and time left."""
    bar = progress_bar(console, "")
    tasks: dict[str, TaskID] = {}

    def report(message: str, done: int | None = None, total: int | None = None) -> None:
        if quiet:
            return
        if total is None:
            bar.console.print(f"[dim]… {message}[/]")
            return
        if message not in tasks:
            tasks[message] = bar.add_task(message, total=total)
        bar.update(tasks[message], completed=done)

    with bar:
        yield report
