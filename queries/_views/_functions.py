"""The aggregate functions a view can keep, in one table: how each is called in SQL, the
columns it stores, how a batch computes and merges them, and how it rolls up.

Each `Function` is a frozen row of `FUNCTIONS`. `parse_view` recognizes a call by the
row's sqlglot class (or anonymous name), the view's maintenance stores the row's view
column and its `Hidden` columns (named by `hidden_name`, nowhere else), and the planner
rolls a view column up to fewer keys by the row's `roll_up`. A hidden column is itself a
row applied to the call's value or order: AVG keeps a SUM and a COUNT beside the
average, ARG_MAX the MAX of the order its value was taken at.

Merges are SQL over the stored row (``t``) and the batch's row (``excluded``) of an
``INSERT ... ON CONFLICT DO UPDATE``; roll-ups are sqlglot trees over the view's table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from queries._tables import quote

DIALECT = "duckdb"

AggFunc = Literal["sum", "count", "min", "max", "avg", "arg_max", "arg_min"]
Role = Literal["sum", "count", "order"]
Merge = Callable[[str], str]  # a stored column's name -> its merged value (SQL)
RollUp = Callable[[str], exp.Expr]  # a view column's name -> its value over fewer keys


@dataclass(frozen=True, slots=True)
class Aggregation:
    """A view column made by an aggregate: ``func(arg [, order]) [FILTER (WHERE filter)]``.

    `arg` is None for COUNT(*); `keep_nulls` marks ARG_MAX_NULL/ARG_MIN_NULL, which
    take the ordered row's value even when it is NULL."""

    name: str
    func: AggFunc
    arg: exp.Expr | None
    order: exp.Expr | None = None
    filter: exp.Expr | None = None
    keep_nulls: bool = False

    @property
    def function(self) -> Function:
        """The row of `FUNCTIONS` this column is kept by."""
        return _BY_AGGREGATION[self.func, self.keep_nulls]


def hidden_name(role: Role, column: str) -> str:
    """The hidden column that keeps `column`'s `role` (a part its merge or roll-up reads).

    User columns cannot start with ``__``, so these never clash with them.

    >>> hidden_name("order", "status")
    '__order_status'
    """
    return f"__{role}_{column}"


def _sql(e: exp.Expr) -> str:
    return e.sql(DIALECT)


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def _stored_and_new(column: str) -> tuple[str, str]:
    return f"t.{quote(column)}", f"excluded.{quote(column)}"


def _filtered(call: str, *conditions: exp.Expr | None) -> str:
    """`call` over the rows every condition holds for.

    >>> _filtered("count(*)", None, exp.condition("amount > 3"))
    'count(*) FILTER (WHERE (amount > 3))'
    """
    kept = [f"({_sql(c)})" for c in conditions if c is not None]
    return f"{call} FILTER (WHERE {' AND '.join(kept)})" if kept else call


def _value(a: Aggregation) -> str:
    return _sql(a.arg) if a.arg is not None else "*"


def _order(a: Aggregation) -> str:
    assert a.order is not None
    return _sql(a.order)


# -- merges: the stored value and the batch's, combined -----------------------------------


def _sum_merge(column: str) -> str:
    """A sum plus the batch's; either may be NULL (no non-NULL value summed yet).

    >>> _sum_merge("total")
    'coalesce(t."total" + excluded."total", t."total", excluded."total")'
    """
    t, x = _stored_and_new(column)
    return f"coalesce({t} + {x}, {t}, {x})"


def _count_merge(column: str) -> str:
    t, x = _stored_and_new(column)
    return f"{t} + {x}"


def _extreme_merge(combine: Literal["least", "greatest"]) -> Merge:
    def merge(column: str) -> str:
        t, x = _stored_and_new(column)
        return f"{combine}({t}, {x})"

    return merge


def _mean_merge(column: str) -> str:
    """An average from its merged sum and count (an average of averages would weigh
    each batch alike)."""
    total = _sum_merge(hidden_name("sum", column))
    count = _count_merge(hidden_name("count", column))
    return f"({total})::DOUBLE / nullif({count}, 0)"


def _taken_at(newer: Literal[">", "<"]) -> Merge:
    """ARG_MAX's merge (`newer` ``>``) or ARG_MIN's (``<``): the batch's value when it
    was taken at a newer order than the stored one, or none is stored.

    >>> _taken_at(">")("status")  # doctest: +NORMALIZE_WHITESPACE
    'CASE WHEN excluded."__order_status" > t."__order_status"
     OR t."__order_status" IS NULL THEN excluded."status" ELSE t."status" END'
    """

    def merge(column: str) -> str:
        t, x = _stored_and_new(column)
        to, xo = _stored_and_new(hidden_name("order", column))
        return f"CASE WHEN {xo} {newer} {to} OR {to} IS NULL THEN {x} ELSE {t} END"

    return merge


# -- roll-ups: a view column aggregated again over the view's rows ------------------------


def average(total: exp.Expr, count: exp.Expr) -> exp.Expr:
    """An average from a sum and a count (NULL for no rows).

    >>> average(exp.column("s"), exp.column("n")).sql(DIALECT)
    'CAST(s AS DOUBLE) / NULLIF(n, 0)'
    """
    return exp.Div(
        this=exp.Cast(this=total, to=exp.DataType.build("DOUBLE")),
        expression=exp.func("nullif", count, exp.Literal.number(0)),
    )


def _again(name: str) -> RollUp:
    """The roll-up of a function that aggregates its own results: SUM, MIN, MAX."""

    def roll_up(column: str) -> exp.Expr:
        return exp.func(name, _col(column))

    return roll_up


def _counts_summed(column: str) -> exp.Expr:
    """COUNT rolls up as SUM, but counts nothing as 0 and stays an integer, as COUNT.

    >>> _counts_summed("n").sql(DIALECT)
    'CAST(COALESCE(SUM("n"), 0) AS BIGINT)'
    """
    total = exp.func("coalesce", _again("sum")(column), exp.Literal.number(0))
    return exp.Cast(this=total, to=exp.DataType.build("BIGINT"))


def _mean_of_parts(column: str) -> exp.Expr:
    """AVG rolls up as SUM(sum) / SUM(count) of its hidden parts.

    >>> _mean_of_parts("mean").sql(DIALECT)
    'CAST(SUM("__sum_mean") AS DOUBLE) / NULLIF(SUM("__count_mean"), 0)'
    """
    summed = _again("sum")
    return average(summed(hidden_name("sum", column)), summed(hidden_name("count", column)))


def _again_by_order(name: str) -> RollUp:
    """ARG_MAX and its kind roll up as themselves, ordered by the stored order.

    >>> _again_by_order("arg_max_null")("status").sql(DIALECT)
    'ARG_MAX_NULL("status", "__order_status")'
    """

    def roll_up(column: str) -> exp.Expr:
        order = _col(hidden_name("order", column))
        return exp.Anonymous(this=name, expressions=[_col(column), order])

    return roll_up


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hidden:
    """A column a function keeps beside its view column: `function` over the call's
    value (or its `over="order"`), merged as that function merges.

    `values_only`: only over rows whose value is not NULL, as ARG_MAX takes its value
    from those only."""

    role: Role
    function: Function
    over: Literal["value", "order"] = "value"
    values_only: bool = False

    def name(self, column: str) -> str:
        return hidden_name(self.role, column)

    def delta(self, a: Aggregation) -> str:
        """The hidden column of view column `a` for a batch."""
        over = _order(a) if self.over == "order" else _value(a)
        kept = None
        if self.values_only:
            assert a.arg is not None
            # On a copy: a node built into the condition would leave the view's tree.
            kept = exp.Not(this=exp.Is(this=a.arg.copy(), expression=exp.Null()))
        return _filtered(f"{self.function.name}({over})", kept, a.filter)

    def merge(self, column: str) -> str:
        """The hidden column of view column `column`, merged."""
        return self.function.merge(self.name(column))


# eq=False: a row is its own identity (the planner keys aggregates by it).
@dataclass(frozen=True, slots=True, eq=False)
class Function:
    """An aggregate a view can keep: called `name` in SQL, parsed by sqlglot as `node`
    (or, a str, an anonymous function of that name); `func` and `keep_nulls` are its
    `Aggregation`'s. Its view column is `name` over a batch and merges by `merge`; the
    `hidden` columns beside it are what that merge and `roll_up` read."""

    name: str
    node: type[exp.AggFunc] | str
    func: AggFunc
    merge: Merge
    roll_up: RollUp
    hidden: tuple[Hidden, ...] = ()
    ordered: bool = False  # called as (value, order)
    keep_nulls: bool = False

    def arguments(self, call: exp.Expr) -> tuple[exp.Expr | None, exp.Expr | None]:
        """The value (None for ``*``) and order of a call of this function."""
        if isinstance(call, exp.Anonymous):
            value, order = call.expressions
            return value, order
        if self.ordered:
            return call.this, call.expression
        return (None if isinstance(call.this, exp.Star) else call.this), None

    def aggregation(
        self,
        column: str,
        arg: exp.Expr | None,
        order: exp.Expr | None = None,
        filter: exp.Expr | None = None,
    ) -> Aggregation:
        """View column `column`, kept by this function."""
        return Aggregation(column, self.func, arg, order, filter, self.keep_nulls)

    def delta(self, a: Aggregation) -> str:
        """View column `a` for a batch: this function over the batch's rows."""
        args = [_value(a), _order(a)] if self.ordered else [_value(a)]
        return _filtered(f"{self.name}({', '.join(args)})", a.filter)


SUM = Function("sum", exp.Sum, "sum", _sum_merge, _again("sum"))
COUNT = Function("count", exp.Count, "count", _count_merge, _counts_summed)
MIN = Function("min", exp.Min, "min", _extreme_merge("least"), _again("min"))
MAX = Function("max", exp.Max, "max", _extreme_merge("greatest"), _again("max"))
AVG = Function(
    "avg",
    exp.Avg,
    "avg",
    _mean_merge,
    _mean_of_parts,
    hidden=(Hidden("sum", SUM), Hidden("count", COUNT)),
)
ARG_MAX = Function(
    "arg_max",
    exp.ArgMax,
    "arg_max",
    _taken_at(">"),
    _again_by_order("arg_max"),
    hidden=(Hidden("order", MAX, over="order", values_only=True),),
    ordered=True,
)
ARG_MIN = Function(
    "arg_min",
    exp.ArgMin,
    "arg_min",
    _taken_at("<"),
    _again_by_order("arg_min"),
    hidden=(Hidden("order", MIN, over="order", values_only=True),),
    ordered=True,
)
# sqlglot has no class for the _NULL forms: they parse as anonymous functions.
ARG_MAX_NULL = Function(
    "arg_max_null",
    "arg_max_null",
    "arg_max",
    _taken_at(">"),
    _again_by_order("arg_max_null"),
    hidden=(Hidden("order", MAX, over="order"),),
    ordered=True,
    keep_nulls=True,
)
ARG_MIN_NULL = Function(
    "arg_min_null",
    "arg_min_null",
    "arg_min",
    _taken_at("<"),
    _again_by_order("arg_min_null"),
    hidden=(Hidden("order", MIN, over="order"),),
    ordered=True,
    keep_nulls=True,
)

FUNCTIONS = (SUM, COUNT, MIN, MAX, AVG, ARG_MAX, ARG_MIN, ARG_MAX_NULL, ARG_MIN_NULL)

_BY_NODE: dict[type[exp.Expr] | str, Function] = {f.node: f for f in FUNCTIONS}
_BY_AGGREGATION = {(f.func, f.keep_nulls): f for f in FUNCTIONS}


def function_of(call: exp.Expr) -> Function | None:
    """The function `call` calls, if a view can keep it.

    >>> import sqlglot
    >>> function_of(sqlglot.parse_one("ARG_MAX_NULL(owner, version)")) is ARG_MAX_NULL
    True
    >>> function_of(sqlglot.parse_one("stddev(amount)")) is None
    True
    """
    if isinstance(call, exp.Anonymous):
        return _BY_NODE.get(call.name.lower())
    return _BY_NODE.get(type(call))


def is_aggregate(e: exp.Expr) -> bool:
    """Whether `e` is an aggregate call (with or without FILTER): one a view can keep,
    or another that the caller refuses.

    >>> import sqlglot
    >>> is_aggregate(sqlglot.parse_one("arg_min_null(a, o) FILTER (WHERE a > 1)"))
    True
    >>> is_aggregate(sqlglot.parse_one("coalesce(a, 0)"))
    False
    """
    if isinstance(e, exp.Filter):
        return is_aggregate(e.this)
    if isinstance(e, exp.Anonymous):
        return e.name.lower() in _BY_NODE
    return isinstance(e, exp.AggFunc)
