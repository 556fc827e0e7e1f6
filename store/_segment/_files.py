"""File primitives of the log: whole writes (a short write is a full disk), durable new files,
directory fsyncs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow as pa


def write_whole(fd: int, data: bytes | pa.Buffer) -> None:
    """os.write all of `data`; a short write on a file is a disk out of space."""
    size = len(data)
    written = os.write(fd, data)
    if written != size:
        raise OSError(
            errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {written} of {size} bytes)"
        )


def write_file(path: Path, content: bytes) -> None:
    """A new file holding `content`, durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_whole(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
