"""The dashboard of `cqrsflow top`, its pure parts: metrics text in, a rich renderable out.

It scrapes `/metrics` (docs/metrics.md names every metric) every interval and shows rates,
shares and latency quantiles computed between the last two scrapes. The pure parts are
separate from the I/O so they are tested directly:

- `parse_snapshot`: exposition text -> `Snapshot`
- `compute`: two snapshots -> `Figures` (rates, shares, quantiles, views, caches, log)
- `render`: `Figures` -> a rich renderable

`fetch`, `scrape` and `run_top` (in `flows.cli._top`) are the I/O around them. A metric the process does not
expose (a run has no query metrics, a server no command metrics) shows as "—".

Alerts: at every refresh each alert (`lag`, `p99`, `error_rate`, `disk`) whose threshold is
crossed is shown red and counted in the Counter `cqrsflow_top_alerts_total{alert}` of the
dashboard's own CollectorRegistry (`Dashboard.registry`, never the process-wide default
one); the alerts panel shows those counts, read back from that registry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

ABSENT = "—"
HOT = "bold red"
QUANTILES = (0.5, 0.95, 0.99, 0.999)
ALERTS = ("lag", "p99", "error_rate", "disk")

COMMANDS = "cqrsflow_commands_total"
LATENCY = "cqrsflow_command_latency_seconds"
QUERIES = "cqrsflow_queries_total"
# Every cache by name and tier (queries._cache): the "caches" table, and the command
# flow's aggregate caches (one per partition, `aggregate-<partition>`) summed.
CACHE_TIER = "cqrsflow_cache"
AGGREGATE_CACHES = "aggregate-"
CACHES = {
    "aggregate": CACHE_TIER,
    "plan": "cqrsflow_plan_cache",
    "result": "cqrsflow_result_cache",
}

Series = tuple[Mapping[str, str], float]
Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending


@dataclass(frozen=True)
class Snapshot:
    """One scrape: every sample by its name, and when it was taken (monotonic seconds)."""

    at: float
    samples: Mapping[str, tuple[Series, ...]]

    def total(self, name: str, **where: str) -> float | None:
        """The sum of `name`'s samples whose labels match `where`; None if `name` is not exposed."""
        series = self.samples.get(name)
        if series is None:
            return None
        return sum(v for labels, v in series if all(labels.get(k) == x for k, x in where.items()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """`name`'s samples summed per value of `label`."""
        sums: dict[str, float] = {}
        for labels, value in self.samples.get(name, ()):
            key = labels.get(label, "")
            sums[key] = sums.get(key, 0.0) + value
        return sums


# The sample names a family of each type is read by.
_SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count")}


def parse_snapshot(text: str, at: float) -> Snapshot:
    """Parse Prometheus text exposition; raises ValueError when it is not that."""
    samples: dict[str, list[Series]] = {}
    for family in text_string_to_metric_families(text):
        # A labelled metric with no child yet has a TYPE line but no sample: it is exposed
        # (and reads as 0), unlike a metric the process does not have at all.
        for suffix in _SAMPLE_SUFFIXES.get(family.type, ()):
            samples.setdefault(family.name + suffix, [])
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return Snapshot(at, {name: tuple(series) for name, series in samples.items()})


@dataclass(frozen=True)
class Thresholds:
    """Alert when a figure goes above its threshold."""

    lag_seconds: float
    p99_ms: float
    error_rate: float
    disk_bytes: float

    def by_alert(self) -> dict[str, float]:
        return {
            "lag": self.lag_seconds,
            "p99": self.p99_ms,
            "error_rate": self.error_rate,
            "disk": self.disk_bytes,
        }


@dataclass(frozen=True)
class Share:
    """A part of a whole over the last interval, or since the process started when the
    whole did not grow in the interval (an idle process still shows its history)."""

    value: float
    since_start: bool


@dataclass(frozen=True)
class Latency:
    quantiles: Mapping[float, float]  # quantile -> seconds
    since_start: bool


@dataclass(frozen=True)
class ViewRow:
    name: str
    lag_events: float | None
    lag_seconds: float | None
    rebuild: float | None


@dataclass(frozen=True)
class PlanRow:
    plan: str
    total: float
    per_second: float | None


@dataclass(frozen=True)
class CacheRow:
    """One cache: its lookups per second and hit rate over the interval (else since
    start), and what it holds."""

    name: str
    tier: str
    hits_per_second: float | None
    misses_per_second: float | None
    hit_rate: Share | None
    entries: float | None
    bytes: float | None


@dataclass(frozen=True)
class PartitionRow:
    name: str
    segments: float | None
    bytes: float | None


@dataclass(frozen=True)
class Figures:
    """What the dashboard shows; None where the process does not expose the metric."""

    cpu_percent: float | None
    memory_bytes: float | None
    commands_per_second: float | None
    events_per_second: float | None
    queries_per_second: float | None
    rejected: Share | None
    invalid: Share | None
    errors: Share | None
    latency: Latency | None
    caches: Mapping[str, Share | None]
    cache_tiers: tuple[CacheRow, ...]
    views: tuple[ViewRow, ...]
    last_plans: tuple[Mapping[str, str], ...]
    plans: tuple[PlanRow, ...]
    segments: float | None
    disk_bytes: float | None
    partitions: tuple[PartitionRow, ...]


def _increase(before: float, now: float) -> float:
    # A counter that went down was reset (the process restarted) and has counted `now` since.
    return now - before if now >= before else now


def rate(previous: Snapshot | None, current: Snapshot, name: str) -> float | None:
    """Per second increase of counter `name` between two scrapes."""
    if previous is None or current.at <= previous.at:
        return None
    now, before = current.total(name), previous.total(name)
    if now is None or before is None:
        return None
    return _increase(before, now) / (current.at - previous.at)


Reading = Callable[[Snapshot], float | None]


def share(
    previous: Snapshot | None, current: Snapshot, part: Reading, whole: Reading
) -> Share | None:
    """`part` / `whole` over the interval between two scrapes (see `Share`)."""
    part_now, whole_now = part(current), whole(current)
    if part_now is None or whole_now is None:
        return None
    if previous is not None:
        part_before, whole_before = part(previous), whole(previous)
        if (
            part_before is not None
            and whole_before is not None
            and whole_now > whole_before
            and part_now >= part_before
        ):
            return Share((part_now - part_before) / (whole_now - whole_before), since_start=False)
    return Share(part_now / whole_now, since_start=True) if whole_now > 0 else None


def _plus(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def buckets(snapshot: Snapshot, name: str) -> Buckets | None:
    """Histogram `name`'s cumulative bucket counts, summed over its label sets."""
    series = snapshot.samples.get(name + "_bucket")
    if not series:
        return None
    counts: dict[float, float] = {}
    for labels, value in series:
        if "le" in labels:
            upper = float(labels["le"])
            counts[upper] = counts.get(upper, 0.0) + value
    return tuple(sorted(counts.items()))


def histogram_quantile(q: float, cumulative: Buckets) -> float | None:
    """The `q` quantile (0 < q <= 1) as Prometheus' histogram_quantile estimates it: linear
    interpolation within the bucket the rank falls in, the first bucket starting at 0, and
    the highest finite bound when the rank falls in the +Inf bucket. None without data."""
    if len(cumulative) < 2 or cumulative[-1][0] != math.inf or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    i = next(i for i, (_, count) in enumerate(cumulative) if count >= rank)
    upper, count = cumulative[i]
    if upper == math.inf:
        return cumulative[-2][0]
    if i == 0 and upper <= 0:
        return upper
    lower, below = cumulative[i - 1] if i > 0 else (0.0, 0.0)
    return lower + (upper - lower) * (rank - below) / (count - below)


def latency(previous: Snapshot | None, current: Snapshot) -> Latency | None:
    """Command latency quantiles over the last interval's observations, or over every
    observation since the start when there were none in the interval."""
    now = buckets(current, LATENCY)
    if now is None:
        return None
    before = buckets(previous, LATENCY) if previous is not None else None
    chosen, since_start = now, True
    if before is not None and [b for b, _ in before] == [b for b, _ in now]:
        delta = tuple((bound, c - b) for (bound, c), (_, b) in zip(now, before, strict=True))
        if delta[-1][1] > 0 and all(c >= 0 for _, c in delta):  # else none new, or a reset
            chosen, since_start = delta, False
    quantiles = {q: v for q in QUANTILES if (v := histogram_quantile(q, chosen)) is not None}
    return Latency(quantiles, since_start) if quantiles else None


def _commands(**where: str) -> Reading:
    return lambda s: s.total(COMMANDS, **where)


def _rejected_or_invalid(s: Snapshot) -> float | None:
    return _plus(s.total(COMMANDS, outcome="rejected"), s.total(COMMANDS, outcome="invalid"))


def _cache_share(previous: Snapshot | None, current: Snapshot, prefix: str) -> Share | None:
    def count(s: Snapshot, name: str) -> float | None:
        if prefix != CACHE_TIER:
            return s.total(name)
        series = s.samples.get(name)
        if series is None:
            return None
        return sum(
            v for labels, v in series if labels.get("cache", "").startswith(AGGREGATE_CACHES)
        )

    def hits(s: Snapshot) -> float | None:
        return count(s, prefix + "_hits_total")

    def lookups(s: Snapshot) -> float | None:
        return _plus(hits(s), count(s, prefix + "_misses_total"))

    return share(previous, current, hits, lookups)


def _cache_tiers(previous: Snapshot | None, current: Snapshot) -> tuple[CacheRow, ...]:
    """A row per (cache, tier) that `cqrsflow_cache_*` reports, L1 first."""
    caches = {
        (labels.get("cache", ""), labels.get("tier", ""))
        for suffix in ("_hits_total", "_misses_total", "_entries")
        for labels, _ in current.samples.get(CACHE_TIER + suffix, ())
    }
    return tuple(
        _cache_row(previous, current, name, tier)
        for name, tier in sorted(caches, key=lambda c: (c[1], c[0]))
    )


def _cache_row(previous: Snapshot | None, current: Snapshot, name: str, tier: str) -> CacheRow:
    def reading(suffix: str) -> Reading:
        """The cache's sample of `suffix`; None where it has none (not yet, or a gauge
        the cache does not report)."""

        def read(s: Snapshot) -> float | None:
            found = [
                v
                for labels, v in s.samples.get(CACHE_TIER + suffix, ())
                if labels.get("cache") == name and labels.get("tier") == tier
            ]
            return sum(found) if found else None

        return read

    hits, misses = reading("_hits_total"), reading("_misses_total")

    def lookups(s: Snapshot) -> float | None:
        return _plus(hits(s), misses(s))

    def per_second(counter: Reading) -> float | None:
        if previous is None or current.at <= previous.at:
            return None
        now, before = counter(current), counter(previous)
        if now is None:
            return None
        return _increase(before or 0.0, now) / (current.at - previous.at)

    return CacheRow(
        name,
        tier,
        per_second(hits),
        per_second(misses),
        share(previous, current, hits, lookups),
        reading("_entries")(current),
        reading("_bytes")(current),
    )


def _views(current: Snapshot) -> tuple[ViewRow, ...]:
    events = current.by_label("cqrsflow_view_lag_events", "view")
    seconds = current.by_label("cqrsflow_view_lag_seconds", "view")
    rebuild = current.by_label("cqrsflow_view_rebuild_progress_ratio", "view")
    names = sorted(events.keys() | seconds.keys() | rebuild.keys())
    return tuple(ViewRow(n, events.get(n), seconds.get(n), rebuild.get(n)) for n in names)


def _plans(previous: Snapshot | None, current: Snapshot) -> tuple[PlanRow, ...]:
    """Queries by the plan that answered them: how many, and how many a second."""
    if previous is None or previous.total(QUERIES) is None or current.at <= previous.at:
        return tuple(
            PlanRow(p, n, None) for p, n in sorted(current.by_label(QUERIES, "plan").items())
        )
    before = previous.by_label(QUERIES, "plan")
    elapsed = current.at - previous.at
    # a plan first chosen in the interval has no series before: it counted from 0
    return tuple(
        PlanRow(p, n, _increase(before.get(p, 0.0), n) / elapsed)
        for p, n in sorted(current.by_label(QUERIES, "plan").items())
    )


def _partitions(current: Snapshot) -> tuple[PartitionRow, ...]:
    segments = current.by_label("cqrsflow_log_segments", "partition")
    sizes = current.by_label("cqrsflow_log_bytes", "partition")
    names = sorted(segments.keys() | sizes.keys(), key=lambda n: (not n.isdigit(), n.zfill(12)))
    return tuple(PartitionRow(n, segments.get(n), sizes.get(n)) for n in names)


def compute(previous: Snapshot | None, current: Snapshot) -> Figures:
    """Every figure of the dashboard from the latest scrape and the one before it (if any)."""
    cpu = rate(previous, current, "process_cpu_seconds_total")
    return Figures(
        cpu_percent=None if cpu is None else cpu * 100,
        memory_bytes=current.total("process_resident_memory_bytes"),
        commands_per_second=rate(previous, current, COMMANDS),
        events_per_second=rate(previous, current, "cqrsflow_events_appended_total"),
        queries_per_second=rate(previous, current, QUERIES),
        rejected=share(previous, current, _commands(outcome="rejected"), _commands()),
        invalid=share(previous, current, _commands(outcome="invalid"), _commands()),
        errors=share(previous, current, _rejected_or_invalid, _commands()),
        latency=latency(previous, current),
        caches={tier: _cache_share(previous, current, prefix) for tier, prefix in CACHES.items()},
        cache_tiers=_cache_tiers(previous, current),
        views=_views(current),
        last_plans=tuple(
            labels
            for labels, value in current.samples.get("cqrsflow_last_plan_info", ())
            if value > 0
        ),
        plans=_plans(previous, current),
        segments=current.total("cqrsflow_log_segments"),
        disk_bytes=current.total("cqrsflow_log_bytes"),
        partitions=_partitions(current),
    )


def alert_values(figures: Figures) -> dict[str, float | None]:
    """What each alert compares with its threshold: the worst view's lag in seconds, p99 in
    milliseconds, (rejected + invalid) / all commands, bytes of the log on disk."""
    lags = [v.lag_seconds for v in figures.views if v.lag_seconds is not None]
    p99 = figures.latency.quantiles.get(0.99) if figures.latency is not None else None
    return {
        "lag": max(lags, default=None),
        "p99": None if p99 is None else p99 * 1000,
        "error_rate": _value(figures.errors),
        "disk": figures.disk_bytes,
    }


def crossed(values: Mapping[str, float | None], thresholds: Thresholds) -> frozenset[str]:
    limits = thresholds.by_alert()
    return frozenset(name for name, v in values.items() if v is not None and v > limits[name])


def _count(v: float | None) -> str:
    return ABSENT if v is None else f"{v:,.0f}"


def _per_second(v: float | None) -> str:
    if v is None:
        return ABSENT
    return f"{v:,.0f}/s" if v >= 100 else f"{v:,.1f}/s"


def _percent(v: float | None) -> str:
    return ABSENT if v is None else f"{v * 100:.1f} %"


def _milliseconds(ms: float | None) -> str:
    if ms is None:
        return ABSENT
    if ms < 10:
        return f"{ms:.2f} ms"
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def _seconds(v: float | None) -> str:
    return ABSENT if v is None else f"{v:.1f} s"


def _size(v: float | None) -> str:
    if v is None:
        return ABSENT
    if v < 1024:
        return f"{v:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        v /= 1024
        if v < 1024:
            return f"{v:.1f} {unit}"
    return f"{v / 1024:.1f} TiB"


_ALERT_FORMAT: dict[str, Callable[[float | None], str]] = {
    "lag": _seconds,
    "p99": _milliseconds,
    "error_rate": _percent,
    "disk": _size,
}


def _line(*items: tuple[str, str, bool]) -> Text:
    """`label value · label value ...`, each value red when its alert is crossed."""
    text = Text()
    for i, (label, value, hot) in enumerate(items):
        if i:
            text.append(" · ", style="dim")
        text.append(f"{label} ")
        text.append(value, style=HOT if hot else "bold")
    return text


def _since_start(line: Text, since_start: bool) -> Text:
    if since_start:
        line.append("  (since start: nothing new in the interval)", style="dim")
    return line


def _value(s: Share | None) -> float | None:
    return None if s is None else s.value


def _share_text(s: Share | None) -> str:
    if s is None:
        return ABSENT
    return _percent(s.value) + (" (since start)" if s.since_start else "")


def _outcomes(f: Figures, hot: frozenset[str]) -> Text:
    line = _line(
        ("rejected", _percent(_value(f.rejected)), False),
        ("invalid", _percent(_value(f.invalid)), False),
        ("errors", _percent(_value(f.errors)), "error_rate" in hot),
    )
    return _since_start(line, f.errors is not None and f.errors.since_start)


def _latency(f: Figures, hot: frozenset[str]) -> Text:
    quantiles = f.latency.quantiles if f.latency is not None else {}
    line = _line(
        *(
            (f"p{q * 100:g}", _milliseconds(_ms(quantiles.get(q))), q == 0.99 and "p99" in hot)
            for q in QUANTILES
        )
    )
    return _since_start(line, f.latency is not None and f.latency.since_start)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _planner(f: Figures) -> Text:
    if not f.last_plans and not f.plans:
        return Text(ABSENT)
    choices = ", ".join(" ".join(f"{k}={v}" for k, v in sorted(p.items())) for p in f.last_plans)
    return _line(
        ("last", choices or ABSENT, False),
        *((p.plan, f"{_per_second(p.per_second)} ({_count(p.total)})", False) for p in f.plans),
    )


def _partition_columns(f: Figures) -> RenderableType:
    if not f.partitions:
        return Text(ABSENT)
    # Columns, not one wrapped line: a partition's figures never break across lines.
    return Columns(
        [Text(f"p{p.name} {_count(p.segments)} seg {_size(p.bytes)}") for p in f.partitions],
        padding=(0, 2),
    )


def _summary(f: Figures, hot: frozenset[str]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="cyan", no_wrap=True)
    grid.add_column()
    cpu = None if f.cpu_percent is None else f"{f.cpu_percent:.1f} % of a core"
    grid.add_row(
        "process", _line(("CPU", cpu or ABSENT, False), ("memory", _size(f.memory_bytes), False))
    )
    grid.add_row(
        "throughput",
        _line(
            ("commands", _per_second(f.commands_per_second), False),
            ("events", _per_second(f.events_per_second), False),
            ("queries", _per_second(f.queries_per_second), False),
        ),
    )
    grid.add_row("outcomes", _outcomes(f, hot))
    grid.add_row("latency", _latency(f, hot))
    grid.add_row("caches", _line(*((tier, _share_text(s), False) for tier, s in f.caches.items())))
    grid.add_row("planner", _planner(f))
    grid.add_row(
        "log",
        _line(
            ("segments", _count(f.segments), False), ("on disk", _size(f.disk_bytes), "disk" in hot)
        ),
    )
    grid.add_row("partitions", _partition_columns(f))
    return grid


def _views_table(rows: tuple[ViewRow, ...], lag_limit: float) -> Table:
    table = Table(title="views", title_justify="left")
    table.add_column("view")
    for heading in ("lag (events)", "lag", "rebuild"):
        table.add_column(heading, justify="right")
    for r in rows:
        hot = r.lag_seconds is not None and r.lag_seconds > lag_limit
        rebuild = ABSENT if r.rebuild is None else f"{r.rebuild * 100:.0f} %"
        table.add_row(
            r.name,
            _count(r.lag_events),
            Text(_seconds(r.lag_seconds), style=HOT if hot else ""),
            rebuild,
        )
    if not rows:
        table.add_row(ABSENT, ABSENT, ABSENT, ABSENT)
    return table


def _caches_table(rows: tuple[CacheRow, ...]) -> Table:
    table = Table(title="caches", title_justify="left")
    table.add_column("cache")
    for heading in ("tier", "hits", "misses", "hit rate", "entries", "bytes"):
        table.add_column(heading, justify="right")
    for r in rows:
        table.add_row(
            r.name,
            r.tier,
            _per_second(r.hits_per_second),
            _per_second(r.misses_per_second),
            _share_text(r.hit_rate),
            _count(r.entries),
            _size(r.bytes),
        )
    if not rows:
        table.add_row(*([ABSENT] * 7))
    return table


def _alerts_table(
    values: Mapping[str, float | None],
    hot: frozenset[str],
    thresholds: Thresholds,
    counts: Mapping[str, int],
) -> Table:
    table = Table(title="alerts", title_justify="left")
    table.add_column("alert")
    for heading in ("threshold", "now", "state", "refreshes crossed"):
        table.add_column(heading, justify="right")
    limits = thresholds.by_alert()
    for name in ALERTS:
        show = _ALERT_FORMAT[name]
        state = Text("ALERT", style=HOT) if name in hot else Text("ok", style="green")
        table.add_row(name, show(limits[name]), show(values[name]), state, f"{counts[name]:,}")
    return table


def render(
    figures: Figures, thresholds: Thresholds, counts: Mapping[str, int], title: str
) -> RenderableType:
    values = alert_values(figures)
    hot = crossed(values, thresholds)
    return Group(
        Panel(_summary(figures, hot), title=title, title_align="left"),
        _views_table(figures.views, thresholds.lag_seconds),
        _caches_table(figures.cache_tiers),
        _alerts_table(values, hot, thresholds, counts),
    )


class Dashboard:
    """The state kept across refreshes: the scrape before, and the alert counts."""

    def __init__(self, url: str, interval: float, thresholds: Thresholds) -> None:
        self.url = url
        self.interval = interval
        self.thresholds = thresholds
        # a slow endpoint gets at least this long: a scrape that times out shows as waiting
        self.timeout = max(interval, 2.0)
        self.registry = CollectorRegistry()
        self._alerts = Counter(
            "cqrsflow_top_alerts_total",
            "Refreshes at which the alert's threshold was crossed",
            ["alert"],
            registry=self.registry,
        )
        for name in ALERTS:
            self._alerts.labels(name)  # every alert exposed, at 0 until it is crossed
        self._previous: Snapshot | None = None

    def baseline(self, snapshot: Snapshot) -> None:
        """Take a scrape to compute the next refresh's rates from, without showing it."""
        self._previous = snapshot

    def refresh(self, snapshot: Snapshot) -> RenderableType:
        figures = compute(self._previous, snapshot)
        self._previous = snapshot
        for name in crossed(alert_values(figures), self.thresholds):
            self._alerts.labels(name).inc()
        title = (
            f"cqrsflow top · {self.url} · every {self.interval:g} s · {time.strftime('%H:%M:%S')}"
        )
        return render(figures, self.thresholds, self.alert_counts(), title)

    def alert_counts(self) -> dict[str, int]:
        read = self.registry.get_sample_value
        return {n: int(read("cqrsflow_top_alerts_total", {"alert": n}) or 0) for n in ALERTS}

    def waiting(self, reason: str) -> Text:
        return Text(
            f"waiting for {self.url}: {reason} (retrying every {self.interval:g} s)", style="yellow"
        )
