"""What comes out of the command flow: a result per command, dead letters for bad input."""

from __future__ import annotations

from typing import Literal

import msgspec

Status = Literal["accepted", "rejected", "invalid"]


class Result(msgspec.Struct, omit_defaults=True):
    """The outcome of one command.

    `position` is ``partition:offset`` of the command's last event: a query can wait
    until the views have reached it (read-your-writes).
    """

    command_id: str | None
    status: Status
    aggregate_id: str | None = None
    version: int | None = None
    position: str | None = None
    events: list[str] = []
    reason: str | None = None
    aggregate_type: str | None = None  # the stream's, with `aggregate_id`


class DeadLetter(msgspec.Struct):
    """A record that was not a valid command, kept with where it came from and why."""

    source: str
    offset: int
    reason: str
    record: str  # the bytes as text (undecodable bytes escaped), at most 4 KiB
    aggregate_type: str | None = None  # when the record's type named a known command


def dead_letter(
    source: str, offset: int, reason: str, raw: bytes, aggregate_type: str | None = None
) -> DeadLetter:
    text = raw[:4096].decode("utf-8", errors="backslashreplace")
    return DeadLetter(source, offset, reason, text, aggregate_type)
