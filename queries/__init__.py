"""The read side: materialized views in DuckDB, maintained from the log, and the query
layer that answers SQL from them.

Declare views with `View` (SQL) or `PythonProjection`; `Projections.open(DIR, views)`
keeps them in DIR/projections.duckdb, `catch_up`/`follow` applies the log to them, and
`QueryLayer` answers SQL from the cheapest view (or the log), locally or served over
Arrow Flight by `FlightQueryServer`.
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
from queries._flight import FlightQueryClient, FlightQueryServer, QueryService
from queries._follow import follow, read_watermark
from queries._guard import check_read_only, harden
from queries._lag import Lag
from queries._planner import Plan, Planner
from queries._pool import ConnectionPool, PoolStats
from queries._projections import Projections, PythonProjection, View
from queries._service import QueryLayer
from queries._tables import event_tables, register_log
from queries._viewdef import Aggregation, Column, ViewDef, parse_view

__all__ = [
    "Aggregation",
    "CircuitOpen",
    "Column",
    "ConnectionPool",
    "FlightQueryClient",
    "FlightQueryServer",
    "Lag",
    "Plan",
    "Planner",
    "PoolExhausted",
    "PoolStats",
    "Projections",
    "ProjectionsBusy",
    "PythonProjection",
    "QueryError",
    "QueryLayer",
    "QueryRefused",
    "QueryService",
    "QueryTimeout",
    "View",
    "ViewDef",
    "ViewDefinitionError",
    "check_read_only",
    "event_tables",
    "follow",
    "harden",
    "parse_view",
    "read_watermark",
    "register_log",
]
