"""A view definition, parsed once: what it reads, filters, groups and aggregates.

`parse_view` accepts the forms that can be maintained from a micro-batch of new events
without rereading old ones, and refuses every other with a reason naming the part:

* rows: ``SELECT <expressions> FROM <table> [WHERE ...]`` (filters and projections);
* aggregates: ``... GROUP BY <keys>`` with SUM, COUNT, MIN, MAX, AVG (kept as SUM and
  COUNT), ARG_MAX/ARG_MIN (and ``_NULL``), each optionally with ``FILTER (WHERE ...)``;
* the latest row per key: ``SELECT DISTINCT ON (<keys>) ... ORDER BY <keys>, <o> DESC``,
  which is kept as ARG_MAX_NULL(column, o) per column.

Events are only ever appended, so MIN, MAX and ARG_MAX merge with their old values;
what needs the rows a batch does not have (COUNT DISTINCT, HAVING, LIMIT, windows,
joins) is refused. The same model is what the planner matches queries against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from queries._errors import ViewDefinitionError
from queries._views._functions import (
    ARG_MAX_NULL,
    ARG_MIN_NULL,
    DIALECT,
    FUNCTIONS,
    Aggregation,
    function_of,
    is_aggregate,
)

# The functions a refusal offers; ARG_MAX and ARG_MIN stand for their _NULL forms.
_OFFERED = ", ".join(f.name.upper() for f in FUNCTIONS if not f.keep_nulls)

# A view must be a function of the log alone, or a rebuild would not reproduce it.
_VOLATILE = {
    "random",
    "rand",
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "get_current_time",
    "get_current_timestamp",
    "transaction_timestamp",
    "localtimestamp",
    "localtime",
    "today",
    "uuid",
    "gen_random_uuid",
    "nextval",
    "currval",
    "setseed",
}


@dataclass(frozen=True, slots=True)
class Column:
    """A view column made by a scalar expression over the source table."""

    name: str
    expr: exp.Expr


@dataclass(frozen=True, slots=True)
class ViewDef:
    """A parsed view: `keys` are the GROUP BY (or DISTINCT ON) columns, the view's
    primary key; a rows view has `columns` and no aggregations."""

    name: str
    sql: str
    source: str
    where: exp.Expr | None
    keys: tuple[Column, ...]
    columns: tuple[Column, ...]
    aggregations: tuple[Aggregation, ...]
    names: tuple[str, ...]  # the visible columns, in declaration order

    @property
    def kind(self) -> Literal["rows", "aggregate"]:
        return "aggregate" if self.keys or self.aggregations else "rows"


def _refuse(name: str, part: str, why: str) -> ViewDefinitionError:
    return ViewDefinitionError(f"view {name!r}: {part}: {why}")


def parse_view(name: str, sql: str, tables: set[str]) -> ViewDef:
    """Parse and check a view definition over `tables` (event table names)."""
    try:
        statements = sqlglot.parse(sql, dialect=DIALECT)
    except ParseError as err:
        raise _refuse(name, "SQL", f"cannot be parsed: {err.errors[0]['description']}") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        raise _refuse(name, "SQL", "expected one SELECT statement")
    select = statements[0]
    source = _source(name, select, tables)
    _check_clauses(name, select)
    for node in select.walk():
        _check_node(name, node)
    where = select.args.get("where")
    condition = where.this if where is not None else None
    if condition is not None and condition.find(exp.AggFunc):
        raise _refuse(name, "WHERE", "an aggregate cannot be filtered on before grouping")
    distinct = select.args.get("distinct")
    if distinct is not None:
        return _latest_per_key(name, sql, select, source, condition, distinct)
    if select.args.get("order"):
        raise _refuse(name, "ORDER BY", "a view has no order; order when you query it")
    group = select.args.get("group")
    items = _named_items(name, select)
    if group is None and not any(_aggregate_of(e) for _, e in items):
        columns = tuple(Column(n, e) for n, e in items)
        return ViewDef(name, sql, source, condition, (), columns, (), tuple(n for n, _ in items))
    return _aggregate(name, sql, select, source, condition, items, group)


def _source(name: str, select: exp.Select, tables: set[str]) -> str:
    if select.args.get("joins"):
        raise _refuse(name, "JOIN", "a view reads one event table; use a Python projection to join")
    if select.args.get("with_") or select.args.get("with"):
        raise _refuse(name, "WITH", "common table expressions are not supported in a view")
    from_ = select.args.get("from_")
    table = from_.this if from_ is not None else None
    if not isinstance(table, exp.Table) or table.args.get("db"):
        raise _refuse(name, "FROM", f"expected one of the event tables: {sorted(tables)}")
    if table.name not in tables:
        raise _refuse(
            name, "FROM", f"no event table {table.name!r}; expected one of {sorted(tables)}"
        )
    return table.name


def _check_clauses(name: str, select: exp.Select) -> None:
    for clause, why in (
        ("having", "HAVING needs every group's final value; filter when you query the view"),
        ("limit", "LIMIT depends on rows a micro-batch does not have; limit when you query"),
        ("offset", "OFFSET depends on rows a micro-batch does not have"),
        ("qualify", "QUALIFY needs whole windows; use DISTINCT ON for the latest row per key"),
    ):
        if select.args.get(clause) is not None:
            raise _refuse(name, clause.upper(), why)


def _check_node(name: str, node: exp.Expr) -> None:
    if isinstance(node, exp.Window):
        raise _refuse(name, node.sql(DIALECT), "window functions need whole partitions")
    if isinstance(node, exp.Subquery | exp.Union | exp.Intersect | exp.Except):
        raise _refuse(name, node.sql(DIALECT), "subqueries and set operations are not supported")
    if isinstance(node, exp.Func):
        fname = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
        if fname in _VOLATILE or isinstance(node, exp.Rand | exp.CurrentTimestamp | exp.Uuid):
            raise _refuse(name, node.sql(DIALECT), "volatile: a rebuild from the log would differ")
    if isinstance(node, exp.Count) and isinstance(node.this, exp.Distinct):
        raise _refuse(
            name,
            node.sql(DIALECT),
            "COUNT(DISTINCT) needs the values already counted; "
            "group by the value in a view and count its rows when you query",
        )


def _named_items(name: str, select: exp.Select) -> list[tuple[str, exp.Expr]]:
    items: list[tuple[str, exp.Expr]] = []
    for item in select.expressions:
        if isinstance(item, exp.Star):
            raise _refuse(name, "*", "list the view's columns by name")
        if isinstance(item, exp.Alias):
            items.append((item.alias, item.this))
        elif isinstance(item, exp.Column):
            items.append((item.name, item))
        else:
            raise _refuse(name, item.sql(DIALECT), "needs a name: add AS <column>")
    seen: set[str] = set()
    for column, _ in items:
        if column.startswith("__"):
            raise _refuse(name, column, "names starting with __ are kept for cqrsflow's own")
        if column in seen:
            raise _refuse(name, column, "two columns have this name")
        seen.add(column)
    return items


def _aggregate_of(expr: exp.Expr) -> bool:
    return any(is_aggregate(e) for e in expr.walk())


def parse_aggregation(view: str, column: str, expr: exp.Expr) -> Aggregation:
    condition: exp.Expr | None = None
    if isinstance(expr, exp.Filter):
        condition = expr.expression.this
        expr = expr.this
    function = function_of(expr)
    if function is None or any(
        a.find(exp.AggFunc) for a in expr.iter_expressions() if a is not expr
    ):
        raise _refuse(
            view,
            expr.sql(DIALECT),
            f"expected a grouping column or one of {_OFFERED} (optionally with FILTER); "
            "declare the parts as columns and combine them when you query",
        )
    arg, order = function.arguments(expr)
    return function.aggregation(column, arg, order, condition)


def _aggregate(
    name: str,
    sql: str,
    select: exp.Select,
    source: str,
    where: exp.Expr | None,
    items: list[tuple[str, exp.Expr]],
    group: exp.Group | None,
) -> ViewDef:
    if group is None:
        raise _refuse(
            name,
            "GROUP BY",
            "an aggregate view needs keys: add GROUP BY (a total is a view "
            "grouped by a constant-free key such as event_type)",
        )
    by_alias = dict(items)
    if group.args.get("all"):
        grouped = [e for _, e in items if not _aggregate_of(e)]
    else:
        grouped = [group_key(g, items, by_alias) for g in group.expressions]
    keyed = {g.sql(DIALECT) for g in grouped}
    keys: list[Column] = []
    aggregations: list[Aggregation] = []
    for column, expr in items:
        if _aggregate_of(expr):
            aggregations.append(parse_aggregation(name, column, expr))
        elif expr.sql(DIALECT) in keyed:
            keys.append(Column(column, expr))
        else:
            raise _refuse(
                name,
                f"column {column!r} ({expr.sql(DIALECT)})",
                "is neither a GROUP BY key nor an aggregate",
            )
    if len(keys) != len(keyed):
        raise _refuse(name, "GROUP BY", "every key must also be a column of the view")
    names = tuple(n for n, _ in items)
    return ViewDef(name, sql, source, where, tuple(keys), (), tuple(aggregations), names)


def group_key(
    key: exp.Expr,
    items: list[tuple[str, exp.Expr]],
    by_alias: dict[str, exp.Expr],
) -> exp.Expr:
    """A GROUP BY item as the expression it names (``GROUP BY 1``, ``GROUP BY alias``)."""
    if isinstance(key, exp.Literal) and key.is_int and 1 <= int(key.this) <= len(items):
        return items[int(key.this) - 1][1]
    if isinstance(key, exp.Column) and not key.table and key.name in by_alias:
        return by_alias[key.name]
    return key


def _latest_per_key(
    name: str,
    sql: str,
    select: exp.Select,
    source: str,
    where: exp.Expr | None,
    distinct: exp.Distinct,
) -> ViewDef:
    on = distinct.args.get("on")
    if on is None:
        raise _refuse(
            name,
            "DISTINCT",
            "use DISTINCT ON (keys) ... ORDER BY keys, <order> for the "
            "latest row per key, or GROUP BY",
        )
    if select.args.get("group"):
        raise _refuse(name, "GROUP BY", "DISTINCT ON already groups by its keys")
    on_keys = [k.sql(DIALECT) for k in (on.expressions if isinstance(on, exp.Tuple) else [on])]
    order = select.args.get("order")
    ordered = order.expressions if order is not None else []
    if [o.this.sql(DIALECT) for o in ordered[:-1]] != on_keys or len(ordered) != len(on_keys) + 1:
        raise _refuse(
            name,
            "ORDER BY",
            f"expected ORDER BY {', '.join(on_keys)}, <what makes a row the latest> DESC",
        )
    last = ordered[-1]
    latest = ARG_MAX_NULL if last.args.get("desc") else ARG_MIN_NULL
    keys: list[Column] = []
    aggregations: list[Aggregation] = []
    items = _named_items(name, select)
    for column, expr in items:
        if expr.sql(DIALECT) in on_keys:
            keys.append(Column(column, expr))
        else:
            aggregations.append(latest.aggregation(column, expr, last.this))
    if len(keys) != len(on_keys):
        raise _refuse(name, "DISTINCT ON", "every key must also be a column of the view")
    names = tuple(n for n, _ in items)
    return ViewDef(name, sql, source, where, tuple(keys), (), tuple(aggregations), names)
