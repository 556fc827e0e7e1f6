"""What every sub-command shares: exit codes, the usage error, the terminal, common flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from store import DataDir

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or bad input: exit code 2."""


@dataclass(frozen=True, slots=True)
class Terminal:
    """Where a sub-command writes (its results; progress and errors), and the
    arguments it was given (a cluster run passes them on to its children)."""

    out: Console
    err: Console
    argv: Sequence[str] | None


class Subparsers(Protocol):
    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


Handler = Callable[[argparse.Namespace, Terminal], int]


def endpoint_flags(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=port,
        help=f"serve /metrics, /healthz and /readyz on this port (default {port}; 0: any "
        "free port; -1: none)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)"
    )
    parser.add_argument(
        "--ready-lag",
        type=float,
        default=30.0,
        help="/readyz fails while a view is more than this many seconds behind (default 30)",
    )


def require_log(data: Path) -> None:
    if not DataDir(data).has_log():
        raise UsageError(
            f"{data}: no event log here (expected {DataDir(data).manifest}); "
            "pass the --data directory a flow wrote to"
        )


def say(console: Console) -> Callable[[str], None]:
    return lambda message: console.print(message, style="dim", highlight=False)


APP_HELP = "the application: MODULE:ATTR, path/to/file.py:ATTR, or an example (bank, shop)"


def app_flag(parser: argparse.ArgumentParser) -> None:
    """``--app APP``: which application; without it, the one the data directory records."""
    parser.add_argument(
        "--app",
        metavar="APP",
        help=f"{APP_HELP}; default: the one recorded in the data directory by `cqrsflow run`",
    )
