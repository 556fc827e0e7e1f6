"""An application: the unit every `cqrsflow` command loads.

An `App` is a plain value: its name, any number of aggregate types, the views over their
events, and how those events evolved (earlier names, upcasters of earlier versions).
There is no registry and no base class; a module defines one and the command line loads
it as ``MODULE:ATTR`` or ``path/to/file.py:ATTR`` (see `flows.load_app`).

>>> import msgspec
>>> class Open(msgspec.Struct, frozen=True):
...     owner: str
>>> class Opened(msgspec.Struct, frozen=True):
...     owner: str
>>> box = Aggregate("Box", None, lambda c, s: [Opened(c.owner)], lambda s, e: e, (Open,), (Opened,))
>>> app = App("boxes", (box,))
>>> app.aggregate("Box") is box, app.layout().aggregate_types
(True, ('Box',))
>>> App("twice", (box, box))
Traceback (most recent call last):
    ...
flows._errors.DomainError: application 'twice': two aggregate types are named 'Box'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flows._domain import Aggregate
from flows._errors import DomainError
from queries import Declared
from store import Layout, SchemaError, Upcaster, fingerprint


@dataclass(frozen=True)
class App:
    """An application: its aggregate types, their views, and how their events evolved.

    `renamed` maps an event type's earlier name to its class (events stored under the
    old name are read as the class); `upcasters` read earlier versions of an event type
    (see `store.Upcaster`). Command type names are unique within the application, and
    so are event type names: a record's ``type`` names one command of one aggregate."""

    name: str
    aggregates: tuple[Aggregate[Any], ...]
    views: tuple[Declared, ...] = ()
    renamed: Mapping[str, type] = field(default_factory=dict)
    upcasters: tuple[Upcaster, ...] = ()
    _layout: Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"application {self.name!r}"
        if not self.name or not self.aggregates:
            raise DomainError(f"{where}: expected a name and at least one aggregate type")
        names: dict[str, Aggregate[Any]] = {}
        commands: dict[str, Aggregate[Any]] = {}
        for aggregate in self.aggregates:
            if aggregate.name in names:
                raise DomainError(f"{where}: two aggregate types are named {aggregate.name!r}")
            names[aggregate.name] = aggregate
            for command in aggregate.commands:
                other = commands.get(command.__name__)
                if other is not None:
                    raise DomainError(
                        f"{where}: command {command.__name__!r} is declared by both "
                        f"{other.name} and {aggregate.name}; a command's type names one "
                        "aggregate type, so give one of them another name"
                    )
                commands[command.__name__] = aggregate
        views = [v.name for v in self.views]
        if len(set(views)) != len(views):
            raise DomainError(f"{where}: two views share a name ({', '.join(views)})")
        try:
            layout = Layout.from_classes(
                {a.name: a.events for a in self.aggregates},
                renamed=self.renamed,
                upcasters=self.upcasters,
            )
        except SchemaError as err:
            raise DomainError(f"{where}: {err}") from None
        object.__setattr__(self, "_layout", layout)

    @classmethod
    def of(cls, aggregate: Aggregate[Any]) -> App:
        """An application of one aggregate type and no views (for tests and tools)."""
        return cls(aggregate.name, (aggregate,))

    def layout(self) -> Layout:
        """The event log's columns for every event of every aggregate type."""
        return self._layout

    def aggregate(self, name: str) -> Aggregate[Any]:
        """The aggregate type called `name`."""
        for aggregate in self.aggregates:
            if aggregate.name == name:
                return aggregate
        raise DomainError(
            f"application {self.name!r} has no aggregate type {name!r} "
            f"(it has {', '.join(a.name for a in self.aggregates)})"
        )

    def fingerprint(self) -> str:
        """A short hash of the application's log layout, as a data directory records it."""
        return hashlib.blake2b(self._layout.to_json().encode(), digest_size=8).hexdigest()

    def state_fingerprint(self, aggregate: Aggregate[Any]) -> str:
        """What a snapshot of `aggregate` is valid for: its state class and the upcasters
        of its events (a changed upcaster may fold old events into another state)."""
        events = {e.__name__ for e in aggregate.events}
        code = [
            (u.event_type, u.version, _code_of(u.upcast))
            for u in self.upcasters
            if u.event_type in events
        ]
        if not code:
            return fingerprint(type(aggregate.initial))
        digest = hashlib.blake2b(repr(sorted(code)).encode(), digest_size=4).hexdigest()
        return f"{fingerprint(type(aggregate.initial))}-{digest}"


def as_app(app: App | Aggregate[Any]) -> App:
    """`app`, or an application of the one aggregate type given."""
    return app if isinstance(app, App) else App.of(app)


def _code_of(function: Any) -> str:
    code = getattr(function, "__code__", None)
    if code is None:
        return getattr(function, "__qualname__", repr(function))
    return hashlib.blake2b(code.co_code + repr(code.co_consts).encode(), digest_size=8).hexdigest()
