"""The query layer over Arrow Flight: SQL from a notebook or another process.

`FlightQueryServer` wraps a `QueryService` (the in-process query layer) in an Arrow
Flight server; `FlightQueryClient` runs SQL against it and gets an Arrow table back.

Wire protocol (any Flight client can speak it):

``do_get(Ticket)``
    The ticket is UTF-8 JSON: ``{"sql": str, "after": {"<partition>": position, ...}
    | null, "explain": bool, "timeout": seconds | null}``; only ``sql`` is required.
    The result streams back as record batches.
``do_action("healthz")``
    Answers one result, ``b"ok"``, while the server serves.

Errors: a `QueryError` from the service travels as a Flight error whose message is
``"<ClassName>: <message>"`` (for people and other clients) and whose ``extra_info``
is JSON ``{"error": "<ClassName>", "message": "<message>"}``, from which
`FlightQueryClient` raises the same class with the same message. The Flight error
type says what kind of failure it is: `QueryTimeout` is FlightTimedOutError;
`PoolExhausted`, `CircuitOpen` and `ProjectionsBusy` are FlightUnavailableError (try
again later); the other `QueryError`s and a malformed ticket (``InvalidTicket``,
raised as `ValueError` by the client) are FlightServerError. Any other exception is
a bug in the service, not an answer: it becomes FlightInternalError with a one-line
reason (``"internal"``, raised as the root `QueryError` by the client), its
traceback goes to this module's logger, and the server serves on.

Authentication is a shared token: when the server has one, every call must carry
the header ``authorization: Bearer <token>``, or it is refused with
FlightUnauthenticatedError (`PermissionError` in the client). There is no TLS, which
is why the server binds to loopback unless another host is asked for explicitly.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from queries._errors import (
    CircuitOpen,
    PoolExhausted,
    ProjectionsBusy,
    QueryError,
    QueryRefused,
    QueryTimeout,
    ViewDefinitionError,
)

_log = logging.getLogger(__name__)

_QUERY_ERRORS: dict[str, type[QueryError]] = {
    cls.__name__: cls
    for cls in (
        QueryError,
        ViewDefinitionError,
        QueryRefused,
        QueryTimeout,
        PoolExhausted,
        CircuitOpen,
        ProjectionsBusy,
    )
}
# The failures a caller may retry later are "unavailable"; the rest are answers.
_FLIGHT_ERRORS: dict[str, type[flight.FlightError]] = {
    "QueryTimeout": flight.FlightTimedOutError,
    "PoolExhausted": flight.FlightUnavailableError,
    "CircuitOpen": flight.FlightUnavailableError,
    "ProjectionsBusy": flight.FlightUnavailableError,
}
_CLIENT_RAISES: dict[str, type[Exception]] = {**_QUERY_ERRORS, "InvalidTicket": ValueError}

_TICKET_FIELDS = {"sql", "after", "explain", "timeout"}
# Slicing the result bounds each gRPC message and lets a client stop after a batch.
_BATCH_ROWS = 64 * 1024
# The client's deadline is the query's own timeout plus this, so that the server's
# QueryTimeout (with its message) arrives before the transport gives up.
_DEADLINE_GRACE_S = 5.0
_HEALTHZ_TIMEOUT_S = 5.0


class QueryService(Protocol):
    """What the server serves: the query layer, called from several threads at once.

    Flight runs each call on its own gRPC thread, so `run` must be thread-safe.
    """

    def run(
        self,
        sql: str,
        *,
        after: Mapping[int, int] | None = None,
        explain: bool = False,
        timeout: float | None = None,
    ) -> pa.Table: ...


@dataclass(frozen=True)
class _Request:
    sql: str
    after: dict[int, int] | None
    explain: bool
    timeout: float | None


def _url(host: str, port: int) -> str:
    return f"grpc://[{host}]:{port}" if ":" in host else f"grpc://{host}:{port}"


def _error(kind: type[flight.FlightError], name: str, message: str) -> flight.FlightError:
    detail = json.dumps({"error": name, "message": message}).encode()
    return kind(f"{name}: {message}", extra_info=detail)


def _invalid(what: str, value: object, expected: str) -> flight.FlightError:
    return _error(
        flight.FlightServerError, "InvalidTicket", f"{what} is {value!r}, expected {expected}"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _parse_ticket(raw: bytes) -> _Request:
    try:
        body = json.loads(raw)
    except ValueError:
        raise _invalid("the ticket", raw[:80], "UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise _invalid("the ticket", body, 'a JSON object such as {"sql": "SELECT 1"}')
    if unknown := sorted(body.keys() - _TICKET_FIELDS):
        raise _invalid(
            f"ticket field {unknown[0]!r}",
            body[unknown[0]],
            f"only the fields {sorted(_TICKET_FIELDS)}",
        )
    sql = body.get("sql")
    if not isinstance(sql, str):
        raise _invalid("ticket field 'sql'", sql, "a string with the SQL statement")
    after = body.get("after")
    if after is not None:
        positions = "null or an object of partition -> position, both non-negative integers"
        if not isinstance(after, dict):
            raise _invalid("ticket field 'after'", after, positions)
        for key, position in after.items():
            if not (key.isascii() and key.isdigit() and _is_int(position) and position >= 0):
                raise _invalid("ticket field 'after'", {key: position}, positions)
        after = {int(key): position for key, position in after.items()}
    explain = body.get("explain", False)
    if not isinstance(explain, bool):
        raise _invalid("ticket field 'explain'", explain, "true or false")
    timeout = body.get("timeout")
    if timeout is not None and not (
        (_is_int(timeout) or isinstance(timeout, float)) and 0 < timeout < math.inf
    ):
        raise _invalid("ticket field 'timeout'", timeout, "null or a positive number of seconds")
    return _Request(sql, after, explain, timeout)


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class _TokenCheck(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Refuses every call that does not carry ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: Any, headers: Mapping[str, list[str]]) -> None:
        sent = headers.get("authorization")
        if not sent:
            raise flight.FlightUnauthenticatedError(
                "this server requires a token: send the header `authorization: Bearer <token>`"
            )
        if not hmac.compare_digest(sent[0].encode(), self._expected):
            raise flight.FlightUnauthenticatedError("the token sent is not this server's token")


class FlightQueryServer(flight.FlightServerBase):  # type: ignore[misc]
    """An Arrow Flight server in front of `service`; it serves from construction on.

    It binds to `host` (loopback by default: another host, such as ``"0.0.0.0"`` for
    every interface, must be asked for explicitly, as the wire is not encrypted) and
    `port` (0: one the system picks; see `port` and `location`). The calls run on
    gRPC's threads, so nothing else needs a thread: `serve()` only blocks the caller
    until `shutdown()` or a signal, for a command that has nothing else to do. In a
    notebook or a test, ``with FlightQueryServer(service) as server:`` serves for the
    block. With `token` set, every call must carry it (see the module docstring).
    """

    def __init__(
        self,
        service: QueryService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ) -> None:
        middleware = {"token": _TokenCheck(token)} if token is not None else None
        super().__init__(_url(host, port), middleware=middleware)
        self._service = service
        self._host = host

    @property
    def location(self) -> str:
        """The URL the server listens on, such as ``grpc://127.0.0.1:40123``."""
        return _url(self._host, self.port)

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        request = _parse_ticket(ticket.ticket)
        try:
            table = self._service.run(
                request.sql, after=request.after, explain=request.explain, timeout=request.timeout
            )
            batches = table.to_batches(max_chunksize=_BATCH_ROWS)
            return flight.RecordBatchStream(
                pa.RecordBatchReader.from_batches(table.schema, batches)
            )
        except QueryError as exc:
            # The nearest class the client knows, so a subclass keeps its family's handling.
            name = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _QUERY_ERRORS)
            kind = _FLIGHT_ERRORS.get(name, flight.FlightServerError)
            raise _error(kind, name, str(exc)) from exc
        except Exception as exc:
            _log.exception("the query service failed on %r", request.sql)
            raise _error(flight.FlightInternalError, "internal", _one_line(exc)) from exc

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [("healthz", 'answers b"ok" while the server serves')]

    def do_action(self, context: Any, action: flight.Action) -> list[bytes]:
        if action.type != "healthz":
            raise flight.FlightServerError(
                f"unknown action {action.type!r}: the only one is 'healthz'"
            )
        return [b"ok"]


class FlightQueryClient:
    """Runs SQL on a `FlightQueryServer` at `url` (such as ``grpc://127.0.0.1:8815``).

    `timeout` is the default for `query`'s; `token` is sent with every call. Errors:
    the server's `QueryError`s are raised as the same class with the same message; a
    server that cannot be reached is `ConnectionError`; a missing or refused token is
    `PermissionError`; no answer within the timeout (plus a grace period for the
    transfer) is `QueryTimeout`.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float | None = None) -> None:
        self._url = url
        self._token = token
        self._timeout = timeout
        self._client = flight.FlightClient(url)

    def query(
        self,
        sql: str,
        *,
        after: Mapping[int, int] | None = None,
        explain: bool = False,
        timeout: float | None = None,
    ) -> pa.Table:
        """The result of `sql`, once the views reached `after` ({partition: position})."""
        timeout = self._timeout if timeout is None else timeout
        body = {
            "sql": sql,
            "after": None if after is None else dict(after),
            "explain": explain,
            "timeout": timeout,
        }
        deadline = None if timeout is None else timeout + _DEADLINE_GRACE_S
        ticket = flight.Ticket(json.dumps(body).encode())
        with self._errors(deadline):
            return self._client.do_get(ticket, self._options(deadline)).read_all()

    def healthz(self) -> bool:
        """Whether the server answers its health check (False if it cannot be reached)."""
        deadline = self._timeout if self._timeout is not None else _HEALTHZ_TIMEOUT_S
        try:
            with self._errors(deadline):
                results = self._client.do_action(
                    flight.Action("healthz", b""), self._options(deadline)
                )
                answer = b"".join(r.body.to_pybytes() for r in results)
        except (ConnectionError, QueryTimeout):
            return False
        return answer == b"ok"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FlightQueryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _options(self, deadline: float | None) -> flight.FlightCallOptions:
        headers = (
            [] if self._token is None else [(b"authorization", f"Bearer {self._token}".encode())]
        )
        return flight.FlightCallOptions(timeout=deadline, headers=headers)

    @contextmanager
    def _errors(self, deadline: float | None) -> Iterator[None]:
        """Turns Flight's errors into the ones `FlightQueryClient` documents."""
        try:
            yield
        except flight.FlightError as exc:
            if exc.extra_info:  # one of the server's own errors (see the module docstring)
                detail = json.loads(exc.extra_info)
                raise _CLIENT_RAISES.get(detail["error"], QueryError)(detail["message"]) from None
            if isinstance(exc, flight.FlightUnauthenticatedError):
                what = "refused the token" if self._token else "requires a token"
                raise PermissionError(
                    f"the query server at {self._url} {what}: pass --token / CQRSFLOW_TOKEN"
                ) from exc
            if isinstance(exc, flight.FlightTimedOutError):
                raise QueryTimeout(
                    f"no answer from the query server at {self._url} within {deadline} s"
                ) from exc
            if isinstance(exc, flight.FlightUnavailableError):
                raise ConnectionError(
                    f"cannot reach the query server at {self._url}: is `cqrsflow serve` running?"
                ) from exc
            raise
