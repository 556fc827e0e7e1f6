"""The connectors' exceptions, under one root.

ConnectorError
 ├── SourceError          a source that cannot be read as asked (missing path, wrong part)
 └── MissingExtraError    an optional dependency that is not installed (also an ImportError)
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error raised by `connectors`."""


class SourceError(ConnectorError):
    """A source that cannot be read as asked."""


class MissingExtraError(ConnectorError, ImportError):
    """A connector needs an optional dependency group that is not installed."""
