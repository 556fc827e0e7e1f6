"""The connectors' exceptions, under one root.

ConnectorError
 ├── SourceError          a source that cannot be read as asked (missing path, wrong part)
 ├── SinkError            a sink that cannot write (a full disk); also an OSError
 └── MissingExtraError    an optional dependency that is not installed (also an ImportError)
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error raised by `connectors`."""


class SourceError(ConnectorError):
    """A source that cannot be read as asked."""


class SinkError(ConnectorError, OSError):
    """A sink that cannot write what it was given. An OSError too, so that a command
    line reports it in one line as it does the store's I/O failures."""


class MissingExtraError(ConnectorError, ImportError):
    """A connector needs an optional dependency group that is not installed."""
