"""Declaring views and maintaining them from the log, exactly once.

A view is declared as SQL (`View`, parsed by `parse_view` into a `ViewDef`) or as a
`PythonProjection`; `Projections` keeps them in the data directory's DuckDB file and
applies micro-batches of the log to them (`follow` keeps doing so as the log grows, and
publishes what it applied for other processes: `read_published`). `view_lags` says how
far behind the log each view is.
"""

from queries._views._follow import (
    PublishedCollector,
    follow,
    published_positions,
    published_views,
    read_published,
    read_watermark,
    request_rebuild,
)
from queries._views._functions import (
    AVG,
    COUNT,
    DIALECT,
    SUM,
    Aggregation,
    Function,
    average,
    is_aggregate,
)
from queries._views._lag import Lag, view_lags
from queries._views._metrics import MAINTENANCE_SECONDS, VIEW_EVENTS, ViewsCollector
from queries._views._projections import Declared, Projections, PythonProjection, View
from queries._views._viewdef import Column, ViewDef, group_key, parse_aggregation, parse_view

__all__ = [
    "AVG",
    "COUNT",
    "DIALECT",
    "MAINTENANCE_SECONDS",
    "SUM",
    "VIEW_EVENTS",
    "Aggregation",
    "Column",
    "Declared",
    "Function",
    "Lag",
    "Projections",
    "PublishedCollector",
    "PythonProjection",
    "View",
    "ViewDef",
    "ViewsCollector",
    "average",
    "follow",
    "group_key",
    "is_aggregate",
    "parse_aggregation",
    "parse_view",
    "published_positions",
    "published_views",
    "read_published",
    "read_watermark",
    "request_rebuild",
    "view_lags",
]
