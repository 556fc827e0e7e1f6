"""What the planner knows: the views and the event tables, with the statistics plans are
costed by (rows per view, events in the log, the log positions each has reached)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from queries._views import ViewDef


@dataclass(frozen=True, slots=True)
class CatalogView:
    """What the planner knows of one live view."""

    name: str
    definition: ViewDef
    table: str
    keys: tuple[str, ...]  # declared keys of a rows view
    rows: int
    positions: Mapping[int, int]  # the log positions it has applied


@dataclass(frozen=True, slots=True)
class Catalog:
    """The event tables and the views, with the statistics plans are costed by."""

    views: tuple[CatalogView, ...]
    log_events: int
    log_positions: Mapping[int, int]
    type_columns: Mapping[str, dict[str, str]]  # event type -> field -> log column
