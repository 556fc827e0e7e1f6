"""The unit every source emits: a batch of raw records, not one item per record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast, get_args

Format = Literal["jsonl", "msgpack"]  # JSON lines, or concatenated msgpack objects


@dataclass(frozen=True, slots=True)
class RawBatch:
    """Complete records read from one source, still undecoded.

    `records[i]` is one record's bytes (a JSON line without its line ending, or one
    msgpack object) and `offsets[i]` is where it starts in `source`: a byte offset for
    files and stdin, a running record number for generators and Kafka's own offsets.
    Decoding is left to the parser, which also judges invalid bytes and oversize records.
    """

    source: str
    format: Format
    records: list[bytes]
    offsets: list[int]


def check_format(format: str) -> Format:
    """`format` as a `Format`, or a ValueError that names the choices."""
    if format in get_args(Format):
        return cast(Format, format)
    raise ValueError(f"format {format!r}: expected 'jsonl' or 'msgpack'")


def check_batch_size(batch_size: int) -> int:
    """`batch_size`, or a ValueError if it is not a positive count."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    return batch_size
