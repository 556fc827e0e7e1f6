"""The write side's exceptions, under one root.

    FlowError
     └── DomainError   an aggregate declared wrongly (two command classes of one name, ...)

The command line reports a `FlowError` in one line, as bad input (exit code 2). What a
decider raises is never one of these: it rejects that one command (see `flows._flow`).
"""

from __future__ import annotations


class FlowError(Exception):
    """The root of the write side's own errors."""


class DomainError(FlowError, ValueError):
    """A domain declared wrongly; the message names the part and what to do."""
