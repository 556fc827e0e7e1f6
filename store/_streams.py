"""A stream's identity: its aggregate type and its aggregate id.

Two aggregates of different types may share an id and are still two streams, with
their own versions. Inside the log a stream is named by one string, its key: the id,
a NUL and the type (ids and type names never hold a NUL: the parser refuses one).
The id comes first so that the key's partition is the id's (`partition_of`).

>>> key = stream_key("Book", "b-1")
>>> key, aggregate_id_of(key), aggregate_type_of(key)
('b-1\\x00Book', 'b-1', 'Book')
"""

from __future__ import annotations

SEP = "\x00"


def stream_key(aggregate_type: str, aggregate_id: str) -> str:
    """The key of the stream of `aggregate_type` with `aggregate_id`."""
    return f"{aggregate_id}{SEP}{aggregate_type}"


def split_stream(key: str) -> tuple[str, str]:
    """A stream key's aggregate type and aggregate id."""
    aggregate_id, _, aggregate_type = key.partition(SEP)
    return aggregate_type, aggregate_id


def aggregate_id_of(key: str) -> str:
    return key.partition(SEP)[0]


def aggregate_type_of(key: str) -> str:
    return key.partition(SEP)[2]
