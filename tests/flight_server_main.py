"""A query server process for `test_flight.py`; run it as a script, never import it.

``flight_server_main.py [--token TOKEN]``
    Serves a small `QueryService` over an in-memory DuckDB holding ``numbers`` (the
    column ``n``, 0 to 999,999) on a free loopback port, prints the server's location
    on one line and serves until it is terminated.

Besides SQL, the service understands a few statements that exist for the tests:
``echo`` answers its own arguments as a one-row table, ``raise NAME`` raises the
`QueryError` subclass NAME, and ``crash`` raises a plain `RuntimeError` (a bug).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Mapping

import duckdb
import pyarrow as pa

import queries as errors
from queries import FlightQueryServer


class NumbersService:
    def __init__(self) -> None:
        self._db = duckdb.connect()
        self._db.execute("CREATE TABLE numbers AS SELECT range AS n FROM range(1_000_000)")
        # A connection serves one thread at a time: each query gets its own cursor, and
        # the shared connection is touched under the lock only to make one.
        self._lock = threading.Lock()

    def run(
        self,
        sql: str,
        *,
        after: Mapping[int, int] | None = None,
        explain: bool = False,
        timeout: float | None = None,
    ) -> pa.Table:
        # Only a stand-in for the real read-only guard, which lives elsewhere.
        if sql.lstrip().upper().startswith(("DROP", "INSERT")):
            raise errors.QueryRefused(f"{sql.split()[0]} is not allowed: queries are read-only")
        if sql == "echo":
            return pa.table(
                {
                    "after": [json.dumps(after)],
                    "explain": [explain],
                    "timeout": pa.array([timeout], pa.float64()),
                }
            )
        if sql.startswith("raise "):
            name = sql.removeprefix("raise ")
            raise getattr(errors, name)(f"the test service raised {name}")
        if sql == "crash":
            raise RuntimeError("the test service crashed\nand this second line stays on the server")
        with self._lock:
            cursor = self._db.cursor()
        with cursor:
            return cursor.sql(f"EXPLAIN {sql}" if explain else sql).to_arrow_table()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    args = parser.parse_args()
    server = FlightQueryServer(NumbersService(), token=args.token)
    print(server.location, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
