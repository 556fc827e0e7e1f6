"""Sources and sinks for cqrsflow's bytewax flows.

Every command source emits `RawBatch` items, batches of undecoded records, so work is
batched from the first step: `JsonLinesSource` and `MsgpackSource` (files, resumable),
`StdinSource`, `GeneratorSource` (paced, for demos) and `kafka_source` (needs the
`kafka` extra). `LogTailSource` follows the event log as Arrow record batches.
`JsonLinesSink` writes results and dead letters, one file per worker.
"""

from connectors._batches import Format, RawBatch
from connectors._errors import ConnectorError, MissingExtraError, SinkError, SourceError
from connectors._files import JsonLinesSource, MsgpackSource
from connectors._generator import GeneratorSource
from connectors._kafka import kafka_source
from connectors._sinks import JsonLinesSink, Record
from connectors._stdio import StdinSource
from connectors._tail import LogTailSource

__all__ = [
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
