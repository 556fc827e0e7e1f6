"""The read side: the event log in DuckDB (views and the query layer build on this)."""

from queries._tables import register_log

__all__ = ["register_log"]
