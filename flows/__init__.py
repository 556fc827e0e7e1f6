"""The write side: the domain API, command parsing, the command dataflow, the CLI.

Write an `Aggregate` (initial, decide, evolve), test it with `flows.testing`, and run
its commands with `command_flow` (or `cqrsflow run`). The dataflow names are loaded on
first use, so that importing the domain API does not start bytewax.
"""

from typing import Any

from flows._domain import Aggregate, Decision, Rejected
from flows._parse import Command, Invalid, Parser
from flows._results import DeadLetter, Result
from flows._shard import ShardConfig

__all__ = [
    "Aggregate",
    "Command",
    "DeadLetter",
    "Decision",
    "FlowConfig",
    "Invalid",
    "Parser",
    "Rejected",
    "Result",
    "ShardConfig",
    "command_flow",
]


def __getattr__(name: str) -> Any:
    if name in ("FlowConfig", "command_flow"):
        from flows import _dataflow

        return getattr(_dataflow, name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
