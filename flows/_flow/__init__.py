"""The command flow: the dataflow (the only bytewax code of the project), each shard's
decide step, the views' backpressure, and running it over an input.

    source ─► parse ─► key by shard ─► decide (`Shard`) ─► durable append ─► results

`FlowConfig` says where and how; `command_flow` builds the dataflow from its sources and
sinks; `RunOptions` and `run_process` (or `run_cluster`) run it over an input. The names
that need bytewax are loaded on first use, so the config and the shard do not start it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flows._flow._backpressure import Backpressure
from flows._flow._config import FLOW_LOG, FlowConfig
from flows._flow._shard import Shard, ShardConfig, event_id

if TYPE_CHECKING:
    from flows._flow._dataflow import command_flow, init_recovery, run_flow, tune_gc
    from flows._flow._runner import (
        RunOptions,
        count_statuses,
        flow_from_environment,
        new_results,
        prepare,
        recovery_dir,
        results_written,
        run_cluster,
        run_process,
    )

_LAZY = {
    "command_flow": "_dataflow",
    "init_recovery": "_dataflow",
    "run_flow": "_dataflow",
    "tune_gc": "_dataflow",
    "RunOptions": "_runner",
    "count_statuses": "_runner",
    "flow_from_environment": "_runner",
    "new_results": "_runner",
    "prepare": "_runner",
    "recovery_dir": "_runner",
    "results_written": "_runner",
    "run_cluster": "_runner",
    "run_process": "_runner",
}

__all__ = [
    "FLOW_LOG",
    "Backpressure",
    "FlowConfig",
    "RunOptions",
    "Shard",
    "ShardConfig",
    "command_flow",
    "count_statuses",
    "event_id",
    "flow_from_environment",
    "init_recovery",
    "new_results",
    "prepare",
    "recovery_dir",
    "results_written",
    "run_cluster",
    "run_flow",
    "run_process",
    "tune_gc",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
