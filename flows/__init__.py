"""The write side: the domain API, command parsing, the command dataflow, the CLI.

Write `Aggregate`s (initial, decide, evolve), put them with their views in an `App`,
test them with `flows.testing`, and run their commands with `cqrsflow run
path/to/app.py:APP` (or `command_flow`). Where things are: the domain API at this
package's top (`_domain`, `_app`, `_load`, `_parse`, `_results`, with the examples
`bank` and `shop`, `testing` and `notebook`), the dataflow in `_flow` (the only bytewax
code), the `cqrsflow` command in `cli`, the benchmarks in `bench`. The dataflow's names
are loaded on first use, so that importing the domain API does not start bytewax.

``python -m bytewax.run flows:flow`` runs the flow of the application named by
``CQRSFLOW_APP`` (as `cqrsflow run` names it), configured by the other ``CQRSFLOW_*``
variables (see `flow_from_environment`).
"""

import os
from typing import Any

from flows._app import App
from flows._domain import Aggregate, Decision, Rejected
from flows._errors import DomainError, FlowError
from flows._flow import FLOW_LOG, Backpressure, FlowConfig, Shard, ShardConfig
from flows._load import AppError, load_app
from flows._parse import MAX_RECORD_BYTES, Command, Invalid, Parser
from flows._results import DeadLetter, Result
from store import Upcaster

__all__ = [
    "FLOW_LOG",
    "MAX_RECORD_BYTES",
    "Aggregate",
    "App",
    "AppError",
    "Backpressure",
    "Command",
    "DeadLetter",
    "Decision",
    "DomainError",
    "FlowConfig",
    "FlowError",
    "Invalid",
    "Parser",
    "Rejected",
    "Result",
    "Shard",
    "ShardConfig",
    "Upcaster",
    "command_flow",
    "load_app",
]


def __getattr__(name: str) -> Any:
    if name == "command_flow":
        from flows._flow import command_flow

        return command_flow
    if name == "flow":  # python -m bytewax.run flows:flow
        from flows._flow import flow_from_environment

        spec = os.environ.get("CQRSFLOW_APP")
        if not spec:
            raise SystemExit("set CQRSFLOW_APP to the application, e.g. CQRSFLOW_APP=app.py:APP")
        return flow_from_environment(load_app(spec), spec)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
