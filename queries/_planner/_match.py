"""Answering a query from a view: the rewrite rules, on sqlglot trees.

`rewrite_onto(query, view)` returns the query rewritten to read the view's table, or
the reason it cannot. The rules:

* **source**: the query reads the view's event table, or reads one event type's table
  while the view reads `events` (the type becomes ``event_type = 'T'``);
* **filter subsumption**: every conjunct of the view's WHERE is one of the query's; the
  query's other conjuncts must be over the view's keys (they then filter its rows);
* **exact match**: the query groups by exactly the view's keys: each aggregate becomes
  the view's column, HAVING becomes WHERE, and no GROUP BY is left;
* **roll-up**: the query groups by fewer keys (or none), by each function's roll-up:
  SUM and COUNT roll up as SUM, MIN and MAX as themselves, AVG as SUM(sum)/SUM(count),
  ARG_MAX by its stored order;
* a rows view (filters and projections) answers any query over its columns.

Expressions are compared by their SQL with table qualifiers dropped and identifiers
folded to lower case, as DuckDB resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from queries._errors import ViewDefinitionError
from queries._tables import literal
from queries._views import (
    AVG,
    COUNT,
    DIALECT,
    SUM,
    Aggregation,
    Function,
    ViewDef,
    average,
    group_key,
    is_aggregate,
    parse_aggregation,
)


class NoMatch(Exception):
    """The view cannot answer the query; the message says why."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    select: exp.Select
    rule: Literal["exact match", "roll-up", "rows"]
    point_keys: int | None  # keys looked up when the filter pins every key, else None


def norm(e: exp.Expr) -> str:
    """An expression's SQL as DuckDB would resolve it, for comparing expressions."""
    e = e.copy()
    for column in e.find_all(exp.Column):
        column.set("table", None)
    for ident in e.find_all(exp.Identifier):
        ident.set("this", ident.this.lower())
        ident.set("quoted", False)
    return e.sql(DIALECT)


def conjuncts(e: exp.Expr | None) -> list[exp.Expr]:
    if e is None:
        return []
    if isinstance(e, exp.And):
        return conjuncts(e.this) + conjuncts(e.expression)
    if isinstance(e, exp.Paren):
        return conjuncts(e.this)
    return [e]


_AggKey = tuple[Function, str, str, str]


def _agg_key(a: Aggregation) -> _AggKey:
    return (
        a.function,
        norm(a.arg) if a.arg is not None else "*",
        norm(a.order) if a.order is not None else "",
        norm(a.filter) if a.filter is not None else "",
    )


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


class _Mapper:
    """Rewrites expressions over the event table into expressions over the view."""

    def __init__(self, view: ViewDef, mode: Literal["exact match", "roll-up", "rows"]):
        self.view = view
        self.mode = mode
        if view.kind == "rows":
            self.columns = {norm(c.expr): c.name for c in view.columns}
        else:
            self.columns = {norm(k.expr): k.name for k in view.keys}
        self.aggregates = {_agg_key(a): a for a in view.aggregations}

    def map(self, e: exp.Expr) -> exp.Expr:
        key = norm(e)
        if key in self.columns:
            return _col(self.columns[key])
        if is_aggregate(e) and self.mode != "rows":
            return self._aggregate(e)
        if isinstance(e, exp.Column):
            what = "column" if self.view.kind == "rows" else "GROUP BY key"
            raise NoMatch(f"{e.sql(DIALECT)} is not a {what} of the view")
        if isinstance(e, exp.Star):
            raise NoMatch("SELECT * reads columns the view does not keep")
        mapped = e.copy()
        for name, value in list(mapped.args.items()):
            if isinstance(value, exp.Expr):
                mapped.set(name, self.map(value))
            elif isinstance(value, list):
                mapped.set(name, [self.map(v) if isinstance(v, exp.Expr) else v for v in value])
        return mapped

    def _aggregate(self, e: exp.Expr) -> exp.Expr:
        try:
            wanted = parse_aggregation(self.view.name, "?", e)
        except ViewDefinitionError:
            raise NoMatch(f"{e.sql(DIALECT)}: no view column aggregates this") from None
        key = _agg_key(wanted)
        found = self.aggregates.get(key)
        if found is None and wanted.function is AVG:
            return self._avg_from_sum_and_count(e, key)
        if found is None:
            raise NoMatch(f"{e.sql(DIALECT)}: the view keeps no such aggregate")
        if self.mode == "exact match":
            return _col(found.name)
        return found.function.roll_up(found.name)

    def _avg_from_sum_and_count(self, e: exp.Expr, key: _AggKey) -> exp.Expr:
        total = self.aggregates.get((SUM, *key[1:]))
        count = self.aggregates.get((COUNT, *key[1:]))
        if total is None or count is None:
            raise NoMatch(f"{e.sql(DIALECT)}: the view keeps no AVG, nor SUM and COUNT, of this")
        if self.mode == "exact match":
            return average(_col(total.name), _col(count.name))
        # The count summed plainly: COUNT's roll-up makes no rows 0, which nullif undoes.
        return average(SUM.roll_up(total.name), SUM.roll_up(count.name))


def _point_keys(view: ViewDef, residual: list[exp.Expr]) -> int | None:
    """How many keys the filter looks up, when it pins every key with = or IN."""
    keys = (
        {norm(k.expr) for k in view.keys}
        if view.kind == "aggregate"
        else set()  # a rows view's keys are declared by name; see `declared_keys`
    )
    return _pinned(keys, residual)


def _pinned(keys: set[str], residual: list[exp.Expr]) -> int | None:
    if not keys:
        return None
    count = 1
    found: set[str] = set()
    for c in residual:
        if isinstance(c, exp.EQ) and isinstance(c.expression, exp.Literal):
            found.add(norm(c.this))
        elif isinstance(c, exp.In) and c.expressions:
            found.add(norm(c.this))
            count *= len(c.expressions)
    return count if keys <= found else None


def rewrite_onto(
    query: exp.Select,
    view: ViewDef,
    table: str,
    type_columns: dict[str, dict[str, str]],
    declared_keys: tuple[str, ...] = (),
) -> Rewrite:
    """`query` rewritten to read `table`, which holds `view`; raises NoMatch."""
    query = query.copy()
    source = _single_source(query)
    where = conjuncts(query.args["where"].this) if query.args.get("where") else []
    if source != view.source:
        if view.source == "events" and source in type_columns:
            _rename_fields(query, type_columns[source])
            where = [exp.condition(f"event_type = {literal(source)}"), *where]
        elif source == "events" and view.source in type_columns:
            # The query filters `events` to the view's type: read it as that type's table.
            typed = norm(exp.condition(f"event_type = {literal(view.source)}"))
            if typed not in {norm(c) for c in where}:
                raise NoMatch(f"the view reads only {view.source} events; the query reads all")
            where = [c for c in where if norm(c) != typed]
            fields = {column: field for field, column in type_columns[view.source].items()}
            _rename_fields(query, fields)
        else:
            raise NoMatch(f"the view reads {view.source}, the query {source}")
    view_filter = {norm(c) for c in conjuncts(view.where)}
    query_filter = {norm(c): c for c in where}
    missing = view_filter - set(query_filter)
    if missing:
        raise NoMatch(f"the view keeps only rows where {' AND '.join(sorted(missing))}")
    residual = [c for k, c in query_filter.items() if k not in view_filter]

    items = _output_items(query)
    by_alias = dict(items)
    group = query.args.get("group")
    if group is not None and group.args.get("all"):
        grouped = [e for _, e in items if not any(is_aggregate(n) for n in e.walk())]
    else:
        grouped = [group_key(g, items, by_alias) for g in (group.expressions if group else [])]
    has_aggregates = any(is_aggregate(n) for _, e in items for n in e.walk())
    mode: Literal["exact match", "roll-up", "rows"]
    if view.kind == "rows":
        mode = "rows"
    elif not grouped and not has_aggregates:
        raise NoMatch("the query reads single events; the view holds one row per group")
    else:
        keys = {norm(k.expr) for k in view.keys}
        mode = "exact match" if {norm(g) for g in grouped} == keys else "roll-up"
    mapper = _Mapper(view, mode)
    aliases = {a for a, _ in items}

    def mapped(e: exp.Expr) -> exp.Expr:
        if (
            isinstance(e, exp.Column)
            and not e.table
            and e.name in aliases
            and norm(e) not in mapper.columns
        ):
            return e  # a reference to the query's own output column
        return mapper.map(e)

    out = exp.select(*[exp.alias_(mapped(e), a, quoted=True) for a, e in items]).from_(
        exp.to_table(table)
    )
    if query.args.get("distinct") is not None:
        out.set("distinct", query.args["distinct"])
    filters = [mapper.map(c) for c in residual]
    having = query.args.get("having")
    if mode == "exact match":
        if having is not None:
            filters.append(mapped(having.this))
    else:
        if grouped:
            out = out.group_by(*[mapper.map(g) for g in grouped])
        if having is not None:
            out = out.having(mapped(having.this))
    if filters:
        out = out.where(exp.and_(*filters))
    order = query.args.get("order")
    if order is not None:
        out.set(
            "order",
            exp.Order(
                expressions=[
                    exp.Ordered(
                        this=mapped(o.this),
                        desc=o.args.get("desc"),
                        nulls_first=o.args.get("nulls_first"),
                    )
                    for o in order.expressions
                ]
            ),
        )
    for clause in ("limit", "offset"):
        if query.args.get(clause) is not None:
            out.set(clause, query.args[clause])
    if mode == "rows":
        point = _pinned({norm(_col(k)) for k in declared_keys}, filters)
    else:
        point = _point_keys(view, residual) if mode == "exact match" else None
    return Rewrite(out, mode, point)


def _output_items(query: exp.Select) -> list[tuple[str, exp.Expr]]:
    """The query's output columns and their names (unnamed expressions are named by
    their SQL)."""
    items = []
    for item in query.expressions:
        if isinstance(item, exp.Star):
            raise NoMatch("SELECT * reads columns the view does not keep")
        if isinstance(item, exp.Alias):
            items.append((item.alias, item.this))
        elif isinstance(item, exp.Column):
            items.append((item.name, item))
        else:
            items.append((item.sql(DIALECT), item))
    return items


def _single_source(query: exp.Select) -> str:
    for part in ("joins", "with_", "laterals", "windows"):
        if query.args.get(part):
            raise NoMatch(f"{part.rstrip('_').upper()} is answered by the base scan only")
    for node in query.walk():
        if isinstance(node, exp.Window):
            raise NoMatch("window functions are answered by the base scan only")
        if isinstance(node, exp.Subquery) or (isinstance(node, exp.Select) and node is not query):
            raise NoMatch("subqueries are answered by the base scan only")
    from_ = query.args.get("from_")
    table = from_.this if from_ is not None else None
    if not isinstance(table, exp.Table):
        raise NoMatch("the query does not read one event table")
    return str(table.name)


def _rename_fields(query: exp.Select, columns: dict[str, str]) -> None:
    """A type table's field names as the `events` table's column names."""
    for column in query.find_all(exp.Column):
        renamed = columns.get(column.name)
        if renamed is not None and renamed != column.name:
            column.set("this", exp.to_identifier(renamed, quoted=True))
