"""docs/grafana/cqrsflow.json charts the catalog in docs/metrics.md, and nothing else.

Every PromQL expression of the dashboard is tokenized; each metric it selects must be a
documented name (a histogram only with ``_bucket``/``_sum``/``_count``), Prometheus'
own ``up``, or a ``process_*`` name from the Process section. Every documented
``cqrsflow_*`` metric must appear on some panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "cqrsflow.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

DS_UID = "${DS_PROMETHEUS}"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMETHEUS_OWN = frozenset({"up"})

# Documented cqrsflow_* metrics the dashboard deliberately does not chart, each with the
# reason. Empty: every metric in the catalog has a panel.
UNCHARTED: dict[str, str] = {}

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


# ---------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class Catalog:
    metrics: dict[str, str]  # documented name -> type (counter, gauge, histogram)
    process: frozenset[str]  # process_* names listed in the Process section

    @property
    def histograms(self) -> frozenset[str]:
        return frozenset(n for n, t in self.metrics.items() if t == "histogram")

    def problem(self, name: str) -> str | None:
        """Why ``name`` may not appear in a dashboard expression, or None if it may."""
        if name in PROMETHEUS_OWN or name in self.process:
            return None
        if name in self.metrics:
            if name in self.histograms:
                return f"{name} is a histogram: select its _bucket, _sum or _count series"
            return None
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and base in self.metrics:
                if base in self.histograms:
                    return None
                return f"{name}: {base} is a {self.metrics[base]}, not a histogram"
        return f"{name} is not in docs/metrics.md"

    def base(self, name: str) -> str:
        """The documented metric a series name belongs to."""
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and base in self.histograms:
                return base
        return name


def parse_catalog(text: str) -> Catalog:
    """The metric tables of docs/metrics.md (header ``| metric | type | ...``) and the
    ``process_*`` names of its Process section."""
    metrics: dict[str, str] = {}
    process: set[str] = set()
    section = ""
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            continue
        if not line.lstrip().startswith("|"):
            header = None
            if section == "Process":
                process.update(re.findall(r"`(process_[a-z0-9_]+)`", line))
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if header[:2] != ["metric", "type"] or set(cells[0]) <= set("-: "):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        assert names, f"metric row without a backticked name: {line!r}"
        for name in names:  # one cell may list two names: `a_total`, `b_total`
            assert NAME.fullmatch(name), f"not a metric name: {name!r} in {line!r}"
            assert name not in metrics, f"{name} documented twice"
            metrics[name] = cells[1].lower()
    return Catalog(metrics, frozenset(process))


# ---------------------------------------------------------------- PromQL


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<var>\$\{[^}]*\}|\$[a-zA-Z_]\w*)
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<punct>[{}()\[\],])
    |(?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=@:])
    """,
    re.VERBOSE,
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words(
    "sum avg min max count group stddev stdvar topk bottomk quantile count_values"
    " limitk limit_ratio"
)
FUNCTIONS = _words(
    """abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min
    count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv
    double_exponential_smoothing exp floor histogram_avg histogram_count histogram_fraction
    histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour
    idelta increase irate label_join label_replace last_over_time ln log10 log2
    mad_over_time max_over_time min_over_time minute month predict_linear
    present_over_time quantile_over_time rate resets round scalar sgn sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time time
    timestamp vector year start end"""
)
GROUPING = _words("by without on ignoring group_left group_right")
KEYWORDS = _words("and or unless bool offset inf nan")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: str  # the text between the braces, "" when there are none


def tokenize(expr: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, start, end) for every token but whitespace."""
    tokens: list[tuple[str, str, int, int]] = []
    stack: list[str] = []  # the closing brackets still expected
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr[pos:]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        text = m.group()
        if text in _PAIRS:
            stack.append(_PAIRS[text])
        elif text in _PAIRS.values() and (not stack or stack.pop() != text):
            raise ValueError(f"unbalanced {text!r} at {m.start()} in {expr!r}")
        if kind != "ws":
            tokens.append((kind, text, m.start(), m.end()))
        pos = m.end()
    if stack:
        raise ValueError(f"unclosed {''.join(reversed(stack))!r} in {expr!r}")
    return tokens


def _closing(tokens: list[tuple[str, str, int, int]], i: int, close: str, expr: str) -> int:
    """Index of the first ``close`` token at or after ``i``."""
    for j in range(i, len(tokens)):
        if tokens[j][1] == close:
            return j
    raise ValueError(f"unclosed {close!r} in {expr!r}")


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of a PromQL expression, Grafana variables allowed."""
    tokens = tokenize(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text, _, end = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "[":  # range or subquery: durations and variables only
            i = _closing(tokens, i, "]", expr) + 1
        elif text == "{":  # a selector without a name before the braces
            j = _closing(tokens, i, "}", expr)
            inner = expr[end : tokens[j][2]]
            named = re.search(r"""__name__\s*=\s*(["'`])([^"'`]+)\1""", inner)
            if named is None:
                raise ValueError(f"selector without a metric name in {expr!r}")
            found.append(Selector(named.group(2), inner))
            i = j + 1
        elif kind != "ident" or text.lower() in KEYWORDS:
            i += 1
        elif text in GROUPING:  # by (le), on (x), group_left (y): label names
            i = _closing(tokens, i, ")", expr) + 1 if nxt == "(" else i + 1
        elif text in AGGREGATIONS and nxt in {"(", "by", "without"}:
            i += 1
        elif nxt == "(":
            if text not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            i += 1
        elif nxt == "{":
            j = _closing(tokens, i + 1, "}", expr)
            found.append(Selector(text, expr[tokens[i + 1][3] : tokens[j][2]]))
            i = j + 1
        else:
            found.append(Selector(text, ""))
            i += 1
    return found


def metric_problems(expr: str, catalog: Catalog) -> list[str]:
    """What is wrong with the metrics ``expr`` selects; empty when nothing."""
    problems: list[str] = []
    for sel in selectors(expr):
        why = catalog.problem(sel.metric)
        if why is not None:
            problems.append(why)
        for label in ("job", "instance"):  # the dashboard's variables
            if not re.search(rf'\b{label}\s*=~\s*"\${label}"', sel.matchers):
                problems.append(f'{sel.metric} is not filtered by {label}=~"${label}"')
    return problems


# ---------------------------------------------------------------- the dashboard


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel.get("title", "?"), target.get("expr", "")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return parse_catalog(METRICS_DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_catalog_is_parsed(catalog: Catalog) -> None:
    # A parser that found nothing would make the checks below vacuous.
    assert len(catalog.metrics) >= 30
    assert catalog.metrics["cqrsflow_commands_total"] == "counter"
    assert catalog.metrics["cqrsflow_command_latency_seconds"] == "histogram"
    assert catalog.metrics["cqrsflow_log_bytes"] == "gauge"
    # the cells that list two names
    for name in (
        "cqrsflow_plan_cache_hits_total",
        "cqrsflow_plan_cache_misses_total",
        "cqrsflow_result_cache_hits_total",
        "cqrsflow_result_cache_misses_total",
    ):
        assert catalog.metrics[name] == "counter"
    assert {"cqrsflow_append_seconds", "cqrsflow_fsync_seconds"} <= catalog.histograms
    assert catalog.process >= {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    }
    assert all(n.startswith("cqrsflow_") for n in catalog.metrics)


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        (
            "histogram_quantile(0.99, sum by (le) (rate(cqrsflow_command_latency_seconds_bucket[1m])))",
            ["cqrsflow_command_latency_seconds_bucket"],
        ),
        ('sum without (instance) (irate(a_total{x="}{[by"}[5m] offset 1h))', ["a_total"]),
        ("a / on (instance) group_left (view) b * ignoring(le) c", ["a", "b", "c"]),
        ("sum(rate(x[$__rate_interval])) by (outcome) > bool 0.5e-3", ["x"]),
        ('max_over_time(y{job=~"${job}"}[5m:30s]) or vector(0)', ["y"]),
        ('{__name__="named", job="j"} unless up', ["named", "up"]),
        ("count(sum by (le) (z)) / scalar(time())", ["z"]),
    ],
)
def test_selectors(expr: str, metrics: list[str]) -> None:
    assert [s.metric for s in selectors(expr)] == metrics


@pytest.mark.parametrize(
    "expr", ["frobnicate(x)", '{job="j"}', "rate(x[1m]", 'sum(x{a="b"}', "x ? y", "a)"]
)
def test_selectors_refuse(expr: str) -> None:
    with pytest.raises(ValueError):
        selectors(expr)


def test_problems_are_found(catalog: Catalog) -> None:
    sel = '{job=~"$job", instance=~"$instance"}'
    good = [
        f"sum(rate(cqrsflow_append_seconds_bucket{sel}[1m]))",
        f"cqrsflow_log_bytes{sel} + process_open_fds{sel}",
        f"sum(up{sel})",
    ]
    for expr in good:
        assert metric_problems(expr, catalog) == [], expr
    bad = {
        f"rate(cqrsflow_nope_total{sel}[1m])": "not in docs/metrics.md",
        f"rate(cqrsflow_commands_total_count{sel}[1m])": "not a histogram",
        f"cqrsflow_command_latency_seconds{sel}": "is a histogram",
        f"process_made_up{sel}": "not in docs/metrics.md",
        'cqrsflow_log_bytes{job=~"$job"}': "instance",
        "cqrsflow_log_bytes": "job",
    }
    for expr, why in bad.items():
        problems = metric_problems(expr, catalog)
        assert any(why in p for p in problems), (expr, problems)


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"]
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == DS_UID
    # no data source is named outright: the import picks one
    text = DASHBOARD.read_text(encoding="utf-8")
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {dashboard["uid"]}
    assert uids == {DS_UID, "-- Grafana --"}, uids


def test_every_panel_has_a_title_and_a_datasource(dashboard: dict[str, Any]) -> None:
    panels = list(walk(dashboard["panels"]))
    problems: list[str] = []
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids):
        problems.append(f"panel ids are not unique: {ids}")
    rows = [p for p in panels if p.get("type") == "row"]
    assert len(rows) >= 7
    assert any(r.get("collapsed") and r.get("panels") for r in rows)  # nesting is walked
    for panel in panels:
        title = panel.get("title", "")
        if not title.strip():
            problems.append(f"panel {panel.get('id')} has no title")
        pos = panel.get("gridPos", {})
        if not (pos.get("w", 0) > 0 and pos.get("h", 0) > 0 and pos["x"] + pos["w"] <= 24):
            problems.append(f"{title}: gridPos {pos}")
        if panel.get("type") == "row":
            if panel.get("targets"):
                problems.append(f"row {title} has targets")
            continue
        if panel.get("datasource", {}).get("uid") != DS_UID:
            problems.append(f"{title}: datasource {panel.get('datasource')}")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if panel.get("type") != "table" and not unit:
            problems.append(f"{title}: no unit")
        if not panel.get("targets"):
            problems.append(f"{title}: no targets")
        for target in panel.get("targets", []):
            if not target.get("expr", "").strip():
                problems.append(f"{title}: target {target.get('refId')} has no expr")
            if target.get("datasource", {}).get("uid") != DS_UID:
                problems.append(f"{title}: target {target.get('refId')} has no datasource")
    assert not problems, "\n".join(problems)


def test_expressions_use_documented_metrics(dashboard: dict[str, Any], catalog: Catalog) -> None:
    problems = [
        f"{title}: {why}\n    {expr}"
        for title, expr in targets(dashboard)
        for why in metric_problems(expr, catalog)
    ]
    assert not problems, "\n".join(problems)


def test_dashboard_covers_the_catalog(dashboard: dict[str, Any], catalog: Catalog) -> None:
    used = {catalog.base(s.metric) for _, expr in targets(dashboard) for s in selectors(expr)}
    for name, reason in UNCHARTED.items():
        assert name in catalog.metrics, f"exception for undocumented {name}"
        assert reason.strip(), f"exception for {name} without a reason"
        assert name not in used, f"{name} is charted: drop its exception"
    missing = sorted(set(catalog.metrics) - used - set(UNCHARTED))
    assert not missing, f"documented metrics on no panel: {missing}"
    assert catalog.process <= used, f"process metrics on no panel: {sorted(catalog.process - used)}"
