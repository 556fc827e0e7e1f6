"""One segment of a partition: an Arrow IPC stream file and its batch directory.

The format (`_format`), the file primitives (`_files`), the writer of the active segment
(`_writer`), its recovery on open (`_recovery`) and the memory-mapped reader (`_reader`).
"""

from store._segment._files import fsync_dir, write_file, write_whole
from store._segment._format import (
    BODY_CRC,
    ENTRY_DTYPE,
    ENTRY_SIZE,
    EOS,
    NOTE,
    PREAMBLE_SIZE,
    SegmentFiles,
    damaged,
    entry_offset,
    entry_ok,
    header_bytes,
    misplaced,
    read_entries,
    read_preamble,
    segment_name,
    self_verifying_message,
    type_mask,
)
from store._segment._reader import SegmentReader, read_notes
from store._segment._recovery import Recovery, recover
from store._segment._writer import SegmentWriter

__all__ = [
    "BODY_CRC",
    "ENTRY_DTYPE",
    "ENTRY_SIZE",
    "EOS",
    "NOTE",
    "PREAMBLE_SIZE",
    "Recovery",
    "SegmentFiles",
    "SegmentReader",
    "SegmentWriter",
    "damaged",
    "entry_offset",
    "entry_ok",
    "fsync_dir",
    "header_bytes",
    "misplaced",
    "read_entries",
    "read_notes",
    "read_preamble",
    "recover",
    "segment_name",
    "self_verifying_message",
    "type_mask",
    "write_file",
    "write_whole",
]
