"""The read side's exceptions: one root, each message says what to do about it.

QueryError
 ├── ViewDefinitionError   a view definition that cannot be maintained incrementally
 ├── QueryRefused          a statement that query serving does not run (not read-only)
 ├── QueryTimeout          a query, or a wait for freshness, that ran out of time
 ├── PoolExhausted         no connection became free within the acquire timeout
 ├── CircuitOpen           the pool stopped serving after repeated failures
 └── ProjectionsBusy       another process owns the projections database
"""

from __future__ import annotations


class QueryError(Exception):
    """Root of every error raised by `queries`."""


class ViewDefinitionError(QueryError):
    """A view definition outside what can be maintained incrementally; says which part."""


class QueryRefused(QueryError):
    """A statement query serving refuses: DDL, DML, COPY, ATTACH, PRAGMA/SET, file or
    network access."""


class QueryTimeout(QueryError):
    """A query, or a wait for the views to reach a log position, took too long."""


class PoolExhausted(QueryError):
    """Every connection stayed busy for the whole acquire timeout."""


class CircuitOpen(QueryError):
    """The connection pool's circuit breaker is open after repeated failures."""


class ProjectionsBusy(QueryError):
    """The projections database is held by another process (DuckDB allows one writer)."""
