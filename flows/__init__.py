"""The write side: the domain API, command parsing, the command dataflow, the CLI.

Write an `Aggregate` (initial, decide, evolve), test it with `flows.testing`, and run
its commands with `command_flow` (or `cqrsflow run`). Where things are: the domain API
at this package's top (`_domain`, `_parse`, `_results`, with `bank`, `testing` and
`notebook`), the dataflow in `_flow` (the only bytewax code), the `cqrsflow` command in
`cli`, the benchmarks in `bench`. The dataflow's names are loaded on first use, so that
importing the domain API does not start bytewax.
"""

from typing import Any

from flows._domain import Aggregate, Decision, Rejected
from flows._errors import DomainError, FlowError
from flows._flow import FLOW_LOG, Backpressure, FlowConfig, Shard, ShardConfig
from flows._parse import MAX_RECORD_BYTES, Command, Invalid, Parser
from flows._results import DeadLetter, Result

__all__ = [
    "FLOW_LOG",
    "MAX_RECORD_BYTES",
    "Aggregate",
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
    "command_flow",
]


def __getattr__(name: str) -> Any:
    if name == "command_flow":
        from flows._flow import command_flow

        return command_flow
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
