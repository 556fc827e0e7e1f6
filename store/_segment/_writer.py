"""The writer of a partition's active segment: batches, their directory entries, syncs, sealing."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pyarrow as pa

from store._errors import StoreError, translate_os_error
from store._layout import Layout
from store._segment._files import fsync_dir, write_file, write_whole
from store._segment._format import (
    EOS,
    SegmentFiles,
    entry_bytes,
    entry_offset,
    header_bytes,
    preamble_bytes,
    self_verifying_message,
)


class SegmentWriter:
    """Appends record batches to the active segment of a partition.

    A write the disk refuses (ENOSPC, or a short write, which a full disk also
    returns) is cut back at once, so the files end at the last whole batch and the
    writer can go on once space returns. Only if that cut itself fails is the writer
    `broken`: it refuses appends until the log is reopened, whose recovery cuts the
    same tail.
    """

    def __init__(self, files: SegmentFiles, layout: Layout, *, entries: int):
        self.files = files
        self.layout = layout
        self.batches = entries
        self.broken: str | None = None
        try:
            self._data_fd = os.open(files.data, os.O_WRONLY | os.O_APPEND)
        except OSError as err:
            raise translate_os_error(err, f"opening segment {files.data}") from err
        try:
            self._dir_fd = os.open(files.dir, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            os.close(self._data_fd)
            raise translate_os_error(err, f"opening segment {files.data}") from err
        self.size = os.fstat(self._data_fd).st_size

    @classmethod
    def create(cls, files: SegmentFiles, layout: Layout) -> SegmentWriter:
        """Create (or re-create) an empty segment, atomically.

        Both files are written whole to temporaries and renamed into place, the
        stream last: a segment that already exists stays as it was until then, and
        a full disk leaves nothing behind but what was there before.
        """
        header = header_bytes(layout)
        dir_tmp = files.dir.with_suffix(".dir.tmp")
        data_tmp = files.data.with_suffix(".arrows.tmp")
        fresh = not files.data.exists()
        try:
            write_file(dir_tmp, preamble_bytes(header))
            write_file(data_tmp, header)
            os.replace(dir_tmp, files.dir)
            os.replace(data_tmp, files.data)
            fsync_dir(files.data.parent)
        except OSError as err:
            leftovers = [dir_tmp, data_tmp] + ([files.dir, files.data] if fresh else [])
            for path in leftovers:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise translate_os_error(err, f"creating segment {files.data}") from err
        return cls(files, layout, entries=0)

    def append(
        self,
        batch: pa.RecordBatch,
        event_codes: np.ndarray,
        timestamps: np.ndarray,
        note: bytes = b"",
    ) -> None:
        """Write one batch (with its note, see `read_notes`) and then its directory
        entry. Not durable until `sync`."""
        self._check_usable()
        message = self_verifying_message(batch, note)
        offset = self.size
        entry = entry_bytes(batch, offset, message, event_codes, timestamps)
        try:
            write_whole(self._data_fd, message)
            write_whole(self._dir_fd, entry)
        except OSError as err:
            self._cut(offset, self.batches, f"appending to {self.files.data}")
            raise translate_os_error(err, f"appending to {self.files.data}") from err
        self.size = offset + message.size
        self.batches += 1

    def _cut(self, size: int, entries: int, what: str) -> None:
        """Cut a failed write back so the files end at the last whole batch (and the
        next append's directory entry lands where recovery and readers expect it)."""
        try:
            os.ftruncate(self._data_fd, size)
            os.ftruncate(self._dir_fd, entry_offset(entries))
        except OSError as err:
            self.broken = f"{what} failed and could not be cut back ({err.strerror or err})"

    def _check_usable(self) -> None:
        if self._data_fd < 0:
            raise StoreError(f"{self.files.data}: the segment's writer is closed; reopen the log")
        if self.broken is not None:
            raise StoreError(
                f"{self.files.data}: {self.broken}; reopen the log, which cuts the segment "
                "back to its last whole batch"
            )

    def sync(self) -> None:
        """Make the batches written so far durable: the stream only (see the module's
        docstring); recovery rebuilds their directory entries if need be."""
        self._check_usable()
        try:
            os.fdatasync(self._data_fd)
        except OSError as err:
            raise translate_os_error(err, f"fsync of {self.files.data}") from err

    def sync_all(self) -> None:
        """The stream and the directory durable: before sealing or closing."""
        self.sync()
        try:
            os.fdatasync(self._dir_fd)
        except OSError as err:
            raise translate_os_error(err, f"fsync of {self.files.dir}") from err

    def seal(self) -> None:
        """Mark the stream's end and make it durable; the segment is immutable after this
        unless `unseal` cuts the marker again. On failure the marker is cut at once."""
        self._check_usable()
        try:
            write_whole(self._data_fd, EOS)
        except OSError as err:
            self._cut(self.size, self.batches, f"sealing {self.files.data}")
            raise translate_os_error(err, f"sealing {self.files.data}") from err
        self.size += len(EOS)
        try:
            self.sync_all()
        except StoreError:
            self.unseal()
            raise

    def unseal(self) -> None:
        """Cut the end marker `seal` wrote: the rotation that sealed the segment failed,
        and appends go on here (recovery does the same to an unfinished rotation)."""
        self.size -= len(EOS)
        self._cut(self.size, self.batches, f"cutting the end marker of {self.files.data}")

    def close(self) -> None:
        for fd in (self._data_fd, self._dir_fd):
            if fd >= 0:  # never an fd number closed before, which may be reused since
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._data_fd = self._dir_fd = -1
