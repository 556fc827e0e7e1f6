"""The on-disk format of the log's segments, for tools and tests that read, check or
damage segment files themselves (everything else reads the log through `store`).

A partition directory holds segments named by their first position
(`list_segments`); each is a stream file, a batch directory (a preamble, then one
fixed-size entry per batch: `entry_offset`, `read_entries`) and, once sealed, an index
(`SealedIndex`, written by `write_index`).
"""

from store._index import SealedIndex, write_index
from store._partition import list_segments
from store._segment import (
    ENTRY_SIZE,
    EOS,
    PREAMBLE_SIZE,
    SegmentFiles,
    SegmentReader,
    SegmentWriter,
    entry_offset,
    read_entries,
)

__all__ = [
    "ENTRY_SIZE",
    "EOS",
    "PREAMBLE_SIZE",
    "SealedIndex",
    "SegmentFiles",
    "SegmentReader",
    "SegmentWriter",
    "entry_offset",
    "list_segments",
    "read_entries",
    "write_index",
]
