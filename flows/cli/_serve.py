"""`cqrsflow serve`: keep the views current from the log and answer SQL over Arrow Flight.

The views follow the log in a thread; Flight clients (`query --connect`, notebooks) are
answered meanwhile. Its caches follow `Caching` (`--cache-policy`, `--redis`,
`--warm-queries`); it keeps the query shapes it was asked in DIR/query-shapes.json for the
next start to warm with.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from rich.console import Console

from flows._app import App
from flows._load import app_for
from flows.cli._common import (
    Subparsers,
    Terminal,
    UsageError,
    app_flag,
    endpoint_flags,
    require_log,
)
from flows.cli._http import start_endpoints
from flows.cli._observe import serve_readiness, serve_registry
from flows.cli._query import QUERY_TIMEOUT, Caching, local_layer
from queries import FlightQueryServer, follow


def serve(
    data: Path,
    app: App,
    host: str,
    port: int,
    token: str | None,
    console: Console,
    endpoint: tuple[str, int, float],
    caching: Caching | None = None,
    *,
    query_timeout: float = QUERY_TIMEOUT,
) -> int:
    """Maintain the views and answer Flight clients until SIGINT or SIGTERM; serve
    metrics and health on `endpoint` (host, port, views' allowed lag; port -1: none);
    interrupt a query after `query_timeout` seconds."""
    caching = caching or Caching()
    with local_layer(data, app, caching=caching, query_timeout=query_timeout) as layer:
        endpoints = None
        metrics_host, metrics_port, ready_lag = endpoint
        if metrics_port >= 0:
            registry = serve_registry(data, layer.projections, layer.reader, layer.pool.stats)
            ready = serve_readiness(data, layer.projections, ready_lag)
            endpoints = start_endpoints(
                ready,
                metrics_host,
                metrics_port,
                registry,
                lambda m: console.print(m, style="dim", highlight=False),
            )
        stop = threading.Event()

        def maintain() -> None:
            def on_round(applied: int) -> None:
                if applied:
                    layer.applied()

            follow(layer.projections, layer.reader, data, stop, on_round=on_round)

        follower = threading.Thread(target=maintain, name="cqrsflow-views", daemon=True)
        follower.start()
        server = FlightQueryServer(layer, host=host, port=port, token=token)

        def shutdown(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, shutdown)
        signal.signal(signal.SIGINT, shutdown)
        shared = "; results shared through Redis" if caching.redis else ""
        warmed = f"; warmed {layer.warmed} query shape(s)" if caching.warm else ""
        console.print(
            f"serving SQL over Arrow Flight at {server.location} "
            f"({'token required' if token else 'no token'}); views follow the log in {data}"
            f"{shared}{warmed}",
            highlight=False,
        )
        sys.stdout.flush()
        # The server answers on gRPC's threads from its construction on; this thread
        # only waits for a signal. Not `server.serve()`: a signal that lands just
        # before it blocks would ask for a shutdown that serve() then never sees.
        while not stop.wait(0.5):
            pass
        server.shutdown()
        follower.join()
        if endpoints is not None:
            endpoints.close()
    return 0


def add_parser(sub: Subparsers) -> None:
    serve = sub.add_parser(
        "serve",
        help="keep the views current and answer SQL over Arrow Flight",
        description="Follow the log into the views and answer queries from other processes "
        "(`cqrsflow query --connect`, notebooks) over Arrow Flight. Binds to loopback unless "
        "--host says otherwise; with --token (or $CQRSFLOW_TOKEN) every request must carry it.",
    )
    serve.add_argument("--data", type=Path, required=True, help="the data directory")
    serve.add_argument("--port", type=int, default=8815, help="default 8815 (0: any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    serve.add_argument("--token", help="require this token (default: $CQRSFLOW_TOKEN)")
    app_flag(serve)
    serve.add_argument(
        "--query-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="interrupt a query that runs longer, and tell its client so (default 30)",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="share results with other servers of the same log through Redis "
        "(redis://HOST:PORT/DB; one database per log)",
    )
    serve.add_argument(
        "--cache-policy",
        choices=["lru", "lfu", "arc"],
        default="arc",
        help="eviction policy of the result and hot-row caches (default: arc)",
    )
    serve.add_argument(
        "--warm-queries",
        type=int,
        default=0,
        metavar="N",
        help="on start, re-run the N most frequent query shapes of earlier runs "
        "(DIR/query-shapes.json), for at most 5 s (default 0: off)",
    )
    endpoint_flags(serve, 9465)
    serve.set_defaults(handler=command)


def command(args: argparse.Namespace, term: Terminal) -> int:

    require_log(args.data)
    token = args.token or os.environ.get("CQRSFLOW_TOKEN")
    endpoint = (args.metrics_host, args.metrics_port, args.ready_lag)
    if args.warm_queries < 0:
        raise UsageError(f"--warm-queries {args.warm_queries}: expected a count >= 0")
    if not args.query_timeout > 0:
        raise UsageError(f"--query-timeout {args.query_timeout}: expected seconds > 0")
    caching = Caching(args.redis, args.cache_policy, args.warm_queries)
    timeout = args.query_timeout
    app = app_for(args.data, args.app)
    server = (args.data, app, args.host, args.port, token, term.out, endpoint)
    return serve(*server, caching, query_timeout=timeout)
