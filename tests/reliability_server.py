"""A query server for `test_reliability_serving.py`; run it as a script, never import it.

``reliability_server.py DATA_DIR QUERY_TIMEOUT [--token TOKEN]``
    What `cqrsflow serve` runs (the bank's views over DATA_DIR's log, the real
    `QueryLayer` with its read-only guard and bounded pool, a `FlightQueryServer` on
    a free loopback port) with the query timeout short enough for a test. Prints the
    server's location on one line and serves until terminated.

One statement exists for the tests: ``-- stats`` (a comment, which the real guard
would refuse as "no statement") answers the pool's figures and the process's live
thread count, so the test can see from outside that nothing leaked.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from flows.bank import VIEWS, layout
from queries import FlightQueryServer, Projections, QueryLayer, ServingConfig
from store import LogReader


class Served:
    def __init__(self, layer: QueryLayer) -> None:
        self.layer = layer

    def run(
        self,
        sql: str,
        *,
        after: Mapping[int, int] | None = None,
        explain: bool = False,
        timeout: float | None = None,
    ) -> pa.Table:
        if sql == "-- stats":
            stats = self.layer.pool.stats()
            return pa.table(
                {
                    "size": [stats.size],
                    "created": [stats.created],
                    "in_use": [stats.in_use],
                    "waiting": [stats.waiting],
                    "breaker": [stats.breaker],
                    "failures": [stats.failures],
                    "threads": [threading.active_count()],
                }
            )
        return self.layer.run(sql, after=after, explain=explain, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("query_timeout", type=float)
    parser.add_argument("--token")
    args = parser.parse_args()
    reader = LogReader.open(args.data)
    projections = Projections.open(args.data, VIEWS, layout(), reader=reader)
    projections.catch_up(reader)
    config = ServingConfig(query_timeout=args.query_timeout)
    layer = QueryLayer.open(projections, reader, config=config)
    server = FlightQueryServer(Served(layer), token=args.token)
    print(server.location, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
