"""`cqrsflow top`: scrape a running process's `/metrics` every interval and show the
dashboard (`flows.cli._dashboard`) live, or once."""

from __future__ import annotations

import argparse
import http.client
import signal
import time
import urllib.error
import urllib.request
from types import FrameType

from rich.console import Console
from rich.live import Live

from flows.cli._common import EXIT_FAILURE, EXIT_OK, Subparsers, Terminal, UsageError
from flows.cli._dashboard import Dashboard, Snapshot, Thresholds, parse_snapshot


class ScrapeError(Exception):
    """The endpoint could not be read; the message says why."""


# Proxies from the environment are for the outside world: a metrics endpoint is scraped
# directly, as Prometheus does.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _describe(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def fetch(url: str, timeout: float) -> str:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as err:
        err.close()
        raise ScrapeError(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise ScrapeError(_describe(err.reason)) from None
    except (OSError, http.client.HTTPException) as err:  # failures while reading the body
        raise ScrapeError(_describe(err)) from None
    return body.decode("utf-8", errors="replace")


def scrape(url: str, timeout: float) -> Snapshot:
    text = fetch(url, timeout)
    at = time.monotonic()
    try:
        return parse_snapshot(text, at)
    except ValueError as err:
        raise ScrapeError(f"not Prometheus text exposition ({err})") from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends top the way Ctrl-C does, through the same clean exit.
    raise KeyboardInterrupt


def run_top(
    url: str,
    interval: float,
    thresholds: Thresholds,
    console: Console,
    errors: Console,
    *,
    once: bool,
) -> int:
    """Watch `url` until Ctrl-C or SIGTERM (exit 0), or with `once` print one refresh."""
    dashboard = Dashboard(url, interval, thresholds)
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if once:
            return _once(dashboard, console, errors)
        _watch(dashboard, console)
    except KeyboardInterrupt:
        pass  # the way to stop watching, not a failure
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return EXIT_OK


def _once(dashboard: Dashboard, console: Console, errors: Console) -> int:
    try:
        dashboard.baseline(scrape(dashboard.url, dashboard.timeout))
        time.sleep(dashboard.interval)  # so that the refresh has rates
        shown = dashboard.refresh(scrape(dashboard.url, dashboard.timeout))
    except ScrapeError as err:
        errors.print(f"cqrsflow: cannot read {dashboard.url}: {err}", markup=False, highlight=False)
        return EXIT_FAILURE
    console.print(shown)
    return EXIT_OK


def _watch(dashboard: Dashboard, console: Console) -> None:
    # On a terminal the alternate screen, like top: the terminal is as it was once Live
    # exits. Elsewhere (a pipe, a file) Live writes the last refresh when it exits.
    with Live(console=console, screen=console.is_terminal, auto_refresh=False) as live:
        while True:
            try:
                shown = dashboard.refresh(scrape(dashboard.url, dashboard.timeout))
            except ScrapeError as err:
                shown = dashboard.waiting(str(err))
            live.update(shown, refresh=True)
            time.sleep(dashboard.interval)


def add_parser(sub: Subparsers) -> None:
    top = sub.add_parser(
        "top",
        help="a live dashboard of a running process's metrics",
        description="Scrape a running `cqrsflow run` (port 9464) or `serve` (port 9465) every "
        "--interval and show throughput, outcomes, latency quantiles, caches, view lag, the "
        "planner's choices and the log on disk; a crossed alert threshold shows red. Ctrl-C "
        "ends it.",
    )
    top.add_argument("--url", default="http://127.0.0.1:9464/metrics", help="default: %(default)s")
    top.add_argument(
        "--interval", type=float, default=1.0, help="seconds between scrapes (default 1)"
    )
    top.add_argument("--lag-alert", type=float, default=5.0, metavar="SECONDS", help="default 5")
    top.add_argument("--p99-alert", type=float, default=20.0, metavar="MS", help="default 20")
    top.add_argument(
        "--error-rate-alert",
        type=float,
        default=0.05,
        metavar="RATIO",
        help="(rejected + invalid) / all commands (default 0.05)",
    )
    top.add_argument(
        "--disk-alert", type=float, default=10 * 2**30, metavar="BYTES", help="default 10 GiB"
    )
    top.add_argument(
        "--once", action="store_true", help="print the dashboard once (two scrapes) and exit"
    )
    top.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval}: expected a positive number of seconds")
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url {args.url}: expected http://HOST:PORT/metrics")
    thresholds = Thresholds(args.lag_alert, args.p99_alert, args.error_rate_alert, args.disk_alert)
    return run_top(args.url, args.interval, thresholds, term.out, term.err, once=args.once)
