"""The `cqrsflow` command: the outermost ring. It parses arguments, calls the library
and maps errors to exit codes; nothing of the library imports it.

One module per sub-command (`_demo`, `_generate`, `_run`, `_query`, `_serve`,
`_projections`, `_log`, `_bench`, `_top`), each with its arguments (`add_parser`) and
what it does (`command`); `_main` assembles them. The dashboard of `cqrsflow top` is pure
(`parse_snapshot` -> `compute` -> `render`), apart from its I/O, and tested directly.
"""

from flows.cli._dashboard import (
    Buckets,
    Dashboard,
    Snapshot,
    Thresholds,
    compute,
    histogram_quantile,
    parse_snapshot,
    rate,
    render,
    share,
)
from flows.cli._main import main, parser

__all__ = [
    "Buckets",
    "Dashboard",
    "Snapshot",
    "Thresholds",
    "compute",
    "histogram_quantile",
    "main",
    "parser",
    "parse_snapshot",
    "rate",
    "render",
    "share",
]
