"""The cost-based planner: every way to answer a query, costed, the cheapest chosen.

A query over the event tables can be answered by scanning the log, or by any view that
`rewrite_onto` can rewrite it for. Each way is costed from the catalog's statistics
(rows in the log, rows in each view, keys a filter pins: `Catalog`) by the cost model
(`CostModel`: a per-kind cost per row that starts from measured defaults and follows
the run times actually observed).

Plans are cached by the query's shape: its text with the literals taken out. Literals
that reach the rewritten SQL unchanged become its parameters (``$1``...); those the
plan depends on (a filter a view was chosen for, a LIMIT) stay part of the key. A hit
costs one regular-expression pass and a dict lookup, no parse. The plan cache is an
L1 policy cache (`make_cache`, LRU by default) named ``plan``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from sqlglot import exp

from queries._cache import Cache, Policy, make_cache, untrack
from queries._guard import check_read_only
from queries._planner._catalog import Catalog, CatalogView
from queries._planner._cost import CostModel, Kind
from queries._planner._match import NoMatch, Rewrite, rewrite_onto
from queries._views import DIALECT

# Strings, quoted identifiers (kept: they are names, not values) and numbers.
_TOKENS = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|(?<![\w.$])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])"""
)
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between)


@dataclass(frozen=True, slots=True)
class Candidate:
    target: str  # a view's name, or "log"
    rule: str
    kind: Kind
    work: float  # rows scanned, or keys looked up
    seconds: float  # the estimate
    sql: str  # the rewritten statement, with `$n` parameters


@dataclass(frozen=True, slots=True)
class Plan:
    chosen: Candidate
    candidates: tuple[Candidate, ...]  # every usable way, cheapest first
    refused: tuple[tuple[str, str], ...]  # (view, why it could not answer)
    params: tuple[int, ...]  # which literal of the query text is each `$n`
    pinned: tuple[tuple[int, str], ...]  # literals the plan depends on, by index
    views: tuple[str, ...]  # the views the chosen plan reads
    reads_log: bool  # whether it reads the event tables (the log)

    def explain(self) -> pa.Table:
        rows: list[dict[str, object]] = [
            {
                "chosen": c is self.chosen,
                "target": c.target,
                "rule": c.rule,
                "estimated_ms": round(c.seconds * 1000, 3),
                "detail": c.sql,
            }
            for c in self.candidates
        ]
        rows += [
            {
                "chosen": False,
                "target": v,
                "rule": "not usable",
                "estimated_ms": None,
                "detail": why,
            }
            for v, why in self.refused
        ]
        return pa.Table.from_pylist(rows)


@dataclass(slots=True)
class _Shape:
    plans: list[Plan] = field(default_factory=list)


def literals(sql: str) -> list[str]:
    """The literal tokens of a query, in order (quoted identifiers included, as names)."""
    return _TOKENS.findall(sql)


def shape_of(sql: str) -> str:
    return _TOKENS.sub(lambda m: m.group() if m.group().startswith('"') else "?", sql)


def value_of(token: str) -> object:
    if token.startswith("'"):
        return token[1:-1].replace("''", "'")
    number = float(token)
    return int(token) if number.is_integer() and token.isdigit() else number


class Planner:
    """Plans queries against a catalog; thread-safe.

    `cache_size` shapes are kept, evicted by `policy` ("lru", "lfu" or "arc"). `costs`:
    the cost model plans are estimated by, taught by `observe`."""

    def __init__(
        self, catalog: Callable[[], Catalog], *, cache_size: int = 1024, policy: Policy = "lru"
    ):
        self._catalog = catalog
        # Guarded by `_lock` (a hit also reads the shape's plans), so not threadsafe itself.
        self._cache: Cache[str, _Shape] = make_cache(policy, cache_size, name="plan", tier="L1")
        self.costs = CostModel()
        self._lock = threading.Lock()

    @property
    def cache(self) -> Cache[str, _Shape]:
        """The plan cache: shapes -> their plans (read its `stats()`)."""
        return self._cache

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    # -- the cached path -----------------------------------------------------------

    def plan(
        self, sql: str, *, refuse: Callable[[str], str | None] | None = None
    ) -> tuple[Plan, list[object]]:
        """The plan for `sql` and its parameter values.

        `refuse(view)` may return why a view must not be used now (too stale), which
        bypasses the cache for this call."""
        key = shape_of(sql)
        tokens = literals(sql)
        cache = self._cache
        if refuse is None:
            with self._lock:
                shape = cache.peek(key)
                if shape is not None:
                    for plan in shape.plans:
                        if all(tokens[i] == v for i, v in plan.pinned):
                            cache.get(key)  # counted and marked used only when it answers
                            return plan, [value_of(tokens[i]) for i in plan.params]
                cache.misses += 1
        else:
            with self._lock:
                cache.misses += 1  # planned past the cache: a miss all the same
        plan = self._plan(sql, tokens, refuse)
        if refuse is None:
            with self._lock:
                shape = cache.peek(key)
                if shape is None:
                    cache.put(key, _Shape([plan]))
                else:
                    shape.plans.append(plan)
        return plan, [value_of(tokens[i]) for i in plan.params]

    def forget(self) -> None:
        """Drop every cached plan (the views changed)."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Publish the plan cache's last counts and stop exporting them."""
        untrack(self._cache)

    def observe(self, sql: str, plan: Plan, seconds: float) -> None:
        """Feed back a measured run time; re-plan a shape whose estimate was far off."""
        chosen = plan.chosen
        if self.costs.observe(chosen.kind, chosen.work, seconds):
            with self._lock:
                self._cache.pop(shape_of(sql), None)

    def seconds_per_unit(self) -> dict[Kind, float]:
        """The cost model's seconds per unit of each kind of work, now."""
        return self.costs.seconds_per_unit()

    # -- planning ------------------------------------------------------------------

    def _plan(
        self, sql: str, tokens: list[str], refuse: Callable[[str], str | None] | None
    ) -> Plan:
        query = check_read_only(sql)
        catalog = self._catalog()
        # Which literals may vary without changing the plan: operands of comparisons.
        starts = {m.start(): i for i, m in enumerate(_TOKENS.finditer(sql))}
        for node in query.find_all(exp.Literal):
            start = node.meta.get("start")
            if start in starts and isinstance(node.parent, (*_COMPARISONS, exp.Tuple)):
                node.meta["slot"] = starts[start]
        candidates: list[tuple[Candidate, exp.Expr, tuple[str, ...]]] = []
        refused: list[tuple[str, str]] = []
        by_name = {v.name.lower(): v for v in catalog.views}
        tables = [t.name.lower() for t in query.find_all(exp.Table)]
        named = tuple(dict.fromkeys(by_name[t].name for t in tables if t in by_name))
        log_read = any(t not in by_name for t in tables)
        if named:  # the query reads views by name: run it as written
            work = sum(by_name[n.lower()].rows for n in named)
            direct = self._candidate(", ".join(named), "as written", "view scan", work, query)
            candidates.append((direct[0], direct[1], named))
            refused += [
                (v.name, "the query names its views") for v in catalog.views if v.name not in named
            ]
            query = exp.select("1")  # nothing to match
        else:
            log = self._candidate(
                "log", "base scan of the log", "log scan", catalog.log_events, query
            )
            candidates.append((log[0], log[1], ()))
        if isinstance(query, exp.Select) and not named:
            for view in catalog.views:
                why = refuse(view.name) if refuse is not None else None
                if why is not None:
                    refused.append((view.name, why))
                    continue
                try:
                    rewrite = rewrite_onto(
                        query, view.definition, view.table, dict(catalog.type_columns), view.keys
                    )
                except NoMatch as err:
                    refused.append((view.name, str(err)))
                    continue
                candidate, tree = self._view_candidate(view, rewrite)
                candidates.append((candidate, tree, (view.name,)))
        elif not named:
            refused += [(v.name, "only a single SELECT is matched to views") for v in catalog.views]
        candidates.sort(key=lambda c: c[0].seconds)
        chosen, tree, views = candidates[0]
        params, sql_out = _parameterize(tree)
        chosen = Candidate(
            chosen.target, chosen.rule, chosen.kind, chosen.work, chosen.seconds, sql_out
        )
        used = set(params)
        pinned = tuple(
            (i, t) for i, t in enumerate(tokens) if i not in used and not t.startswith('"')
        )
        others = tuple(c for c, _, _ in candidates[1:])
        reads_log = log_read if named or chosen.target == "log" else False
        return Plan(
            chosen, (chosen, *others), tuple(refused), tuple(params), pinned, views, reads_log
        )

    def _candidate(
        self, target: str, rule: str, kind: Kind, work: float, tree: exp.Expr
    ) -> tuple[Candidate, exp.Expr]:
        seconds = self.costs.estimate(kind, work)
        return Candidate(target, rule, kind, work, seconds, tree.sql(DIALECT)), tree

    def _view_candidate(self, view: CatalogView, rewrite: Rewrite) -> tuple[Candidate, exp.Expr]:
        if rewrite.point_keys is not None:
            rule = f"{rewrite.rule}, index lookup of {rewrite.point_keys} key(s)"
            return self._candidate(
                view.name, rule, "view lookup", rewrite.point_keys, rewrite.select
            )
        return self._candidate(
            view.name, rewrite.rule, "view scan", max(view.rows, 1), rewrite.select
        )


def _parameterize(tree: exp.Expr) -> tuple[list[int], str]:
    """The statement with each variable literal as `$n`; which literal each `$n` is."""
    tree = tree.copy()
    params: list[int] = []
    for node in list(tree.find_all(exp.Literal)):
        slot = node.meta.get("slot")
        if slot is None:
            continue
        params.append(slot)
        node.replace(exp.Placeholder(this=str(len(params))))
    return params, tree.sql(DIALECT)
