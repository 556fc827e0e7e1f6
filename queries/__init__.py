"""The read side: materialized views in DuckDB, maintained from the log, and the query
layer that answers SQL from them.

Declare views with `View` (SQL) or `PythonProjection`; `Projections.open(DIR, views)`
keeps them in DIR/projections.duckdb and `catch_up`/`follow` applies the log to them.
"""

from queries._errors import (
    CircuitOpen,
    PoolExhausted,
    ProjectionsBusy,
    QueryError,
    QueryRefused,
    QueryTimeout,
    ViewDefinitionError,
)
from queries._projections import Lag, Projections, PythonProjection, View
from queries._tables import event_tables, register_log
from queries._viewdef import Aggregation, Column, ViewDef, parse_view

__all__ = [
    "Aggregation",
    "CircuitOpen",
    "Column",
    "Lag",
    "PoolExhausted",
    "Projections",
    "ProjectionsBusy",
    "PythonProjection",
    "QueryError",
    "QueryRefused",
    "QueryTimeout",
    "View",
    "ViewDefinitionError",
    "ViewDef",
    "event_tables",
    "parse_view",
    "register_log",
]
