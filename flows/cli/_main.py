"""The `cqrsflow` command line: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 ok; 1 a runtime failure, reported as one line; 2 bad usage or bad input.
Each sub-command is a module of this package with `add_parser` (its arguments) and
`command` (what it does); this module only assembles them and reports their errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

from flows._errors import FlowError
from flows.cli import (
    _bench,
    _demo,
    _generate,
    _init,
    _log,
    _projections,
    _query,
    _run,
    _serve,
    _top,
)
from flows.cli._common import EXIT_FAILURE, EXIT_USAGE, Terminal, UsageError
from queries import QueryError, QueryRefused
from store import DataDirError, StoreError

# In the order `--help` lists them.
SUBCOMMANDS = (_demo, _init, _generate, _run, _query, _serve, _projections, _log, _bench, _top)


def parser() -> argparse.ArgumentParser:
    """The whole command line, every sub-command's arguments included."""
    root = argparse.ArgumentParser(
        prog="cqrsflow",
        description="Event sourcing as a stream-processing pipeline: commands in, events "
        "into a partitioned Arrow log, SQL views out.",
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    term = Terminal(
        Console(soft_wrap=True),  # never break a path or a message across lines
        Console(stderr=True, soft_wrap=True),
        argv,
    )
    try:
        code: int = args.handler(args, term)
        return code
    except (UsageError, FlowError, DataDirError, QueryRefused) as err:
        term.err.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_USAGE
    except (StoreError, QueryError, ConnectionError, PermissionError) as err:
        term.err.print(f"cqrsflow: {err}", markup=False, highlight=False)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a failure inside the dataflow arrives wrapped by bytewax
        cause = _root_cause(err)
        if cause is None:
            raise
        term.err.print(f"cqrsflow: {cause}", markup=False, highlight=False)
        return EXIT_FAILURE


def _root_cause(err: BaseException) -> BaseException | None:
    """The error to report in one line: the outermost StoreError, ConnectorError,
    QueryError or OSError of the chain (bytewax wraps what a step raised, and the store
    wraps the bare OSError it translated: the outer one names the file and the fix);
    None if the chain holds none, a bug to show with its traceback."""
    reported: tuple[type[BaseException], ...] = (StoreError, QueryError, OSError)
    connectors = sys.modules.get("connectors")  # none of its errors unless loaded (bytewax)
    if connectors is not None:
        reported += (connectors.ConnectorError,)
    seen: set[int] = set()
    found: BaseException | None = err
    while found is not None and id(found) not in seen:
        if isinstance(found, reported):
            return found
        seen.add(id(found))
        found = found.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main())
