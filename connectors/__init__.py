"""Sources and sinks for cqrsflow's bytewax flows.

Every command source emits `RawBatch` items, batches of undecoded records, so work is
batched from the first step: `JsonLinesSource` and `MsgpackSource` (files, resumable),
`StdinSource`, `GeneratorSource` (paced, for demos) and `kafka_source` (needs the
`kafka` extra). `LogTailSource` follows the event log as Arrow record batches.
`JsonLinesSink` writes results and dead letters, one file per worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from connectors._batches import Format, RawBatch
from connectors._errors import ConnectorError, MissingExtraError, SinkError, SourceError
from connectors._framing import CHUNK_BYTES

if TYPE_CHECKING:
    from connectors._files import JsonLinesSource, MsgpackSource
    from connectors._generator import GeneratorSource
    from connectors._kafka import kafka_source
    from connectors._sinks import JsonLinesSink, Record
    from connectors._stdio import StdinSource
    from connectors._stream import GROW, SHRINK, BatchSize
    from connectors._tail import LogTailSource

# The sources and sinks are bytewax's, loaded on first use: the record format and the
# errors are needed where bytewax is not (parsing commands, reporting a failure).
_LAZY = {
    "JsonLinesSource": "_files",
    "MsgpackSource": "_files",
    "GeneratorSource": "_generator",
    "kafka_source": "_kafka",
    "JsonLinesSink": "_sinks",
    "Record": "_sinks",
    "StdinSource": "_stdio",
    "GROW": "_stream",
    "SHRINK": "_stream",
    "BatchSize": "_stream",
    "LogTailSource": "_tail",
}

__all__ = [
    "CHUNK_BYTES",
    "GROW",
    "SHRINK",
    "BatchSize",
    "ConnectorError",
    "Format",
    "GeneratorSource",
    "JsonLinesSink",
    "JsonLinesSource",
    "LogTailSource",
    "MissingExtraError",
    "MsgpackSource",
    "RawBatch",
    "Record",
    "SinkError",
    "SourceError",
    "StdinSource",
    "kafka_source",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
