"""`/metrics`, `/healthz` and `/readyz` of a long-running cqrsflow process.

A small threaded HTTP server: prometheus-client's own only serves metrics, and an
orchestrator also wants liveness (the process answers) and readiness (the log is open
and the views are current enough to answer from) apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.registry import CollectorRegistry

# None when ready, else why not.
Readiness = Callable[[], str | None]


class EndpointServer:
    """Serves the endpoints from a daemon thread until `close`."""

    def __init__(
        self,
        ready: Readiness,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        handler = _handler(ready, registry)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cqrsflow-endpoints", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(ready: Readiness, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                try:
                    why = ready()
                except Exception as err:  # a failing check is a reason, not a crash
                    why = f"readiness check failed: {type(err).__name__}: {err}"
                if why is None:
                    self._send(200, b"ready\n")
                else:
                    self._send(503, f"not ready: {why}\n".encode())
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _send(self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every few seconds would flood the terminal

    return Handler


def start_endpoints(
    ready: Readiness, host: str, port: int, registry: CollectorRegistry, say: Callable[[str], None]
) -> EndpointServer | None:
    """The endpoints, or None (and why, said) when the port cannot be had: a run or a
    server without its endpoints still does its work."""
    try:
        server = EndpointServer(ready, host=host, port=port, registry=registry)
    except OSError as err:
        say(
            f"metrics and health endpoints not started: {host}:{port}: {err.strerror}; pass --metrics-port"
        )
        return None
    say(f"metrics at {server.url}/metrics, health at {server.url}/healthz and /readyz")
    return server
