"""A Kafka source of RawBatches, on bytewax's KafkaSource (needs the `kafka` extra).

The wrapper keeps KafkaSource's partitions and snapshots (Kafka offsets, so it is
resumable) and turns each batch of messages into one RawBatch, so that Kafka input
enters the flow batched like every other source.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors._batches import Format, RawBatch, check_batch_size, check_format
from connectors._errors import MissingExtraError


class _Message(Protocol):
    """What is used of bytewax's KafkaSourceMessage."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def offset(self) -> int | None: ...


class _KafkaPartition(StatefulSourcePartition[RawBatch, int | None]):
    def __init__(
        self, inner: StatefulSourcePartition[_Message, int | None], source: str, format: Format
    ) -> None:
        self._inner = inner
        self._source = source
        self._format: Format = format

    def next_batch(self) -> list[RawBatch]:
        records: list[bytes] = []
        offsets: list[int] = []
        for msg in self._inner.next_batch():
            # A message without a value (a tombstone) carries no command.
            if msg.value is not None and msg.offset is not None:
                records.append(msg.value)
                offsets.append(msg.offset)
        return [RawBatch(self._source, self._format, records, offsets)] if records else []

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> int | None:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _KafkaRawSource(FixedPartitionedSource[RawBatch, int | None]):
    def __init__(self, inner: FixedPartitionedSource[_Message, int | None], format: Format):
        self._inner = inner
        self._format: Format = format

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        # KafkaSource names its partitions "<partition>-<topic>".
        number, _, topic = for_part.partition("-")
        inner = self._inner.build_part(step_id, for_part, resume_state)
        return _KafkaPartition(inner, f"kafka:{topic}/{number}", self._format)


def kafka_source(
    brokers: list[str], topics: list[str], batch_size: int = 1000, format: Format = "jsonl"
) -> FixedPartitionedSource[RawBatch, int | None]:
    """RawBatches of the messages' values, one partition per Kafka partition.

    Offsets are Kafka offsets; `source` is ``kafka:<topic>/<partition>``. Messages
    without a value are skipped. Reads from the beginning of each topic, then follows it.
    """
    format = check_format(format)
    check_batch_size(batch_size)
    try:
        from bytewax.connectors.kafka import KafkaSource
    except ImportError as err:
        if not (err.name or "").startswith("confluent_kafka"):
            raise
        raise MissingExtraError(
            "kafka_source needs confluent-kafka, which is not installed: "
            "pip install 'cqrsflow[kafka]'"
        ) from err
    # With raise_on_errors, a consumer error stops the flow instead of being emitted,
    # so every item is a message.
    inner = KafkaSource(brokers, topics, batch_size=batch_size, raise_on_errors=True)
    return _KafkaRawSource(cast("FixedPartitionedSource[_Message, int | None]", inner), format)
