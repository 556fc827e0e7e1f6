"""The domain API: an aggregate is a pure decider over typed commands and events.

An `Aggregate` is plain functions and values, no base classes:

- commands are frozen `msgspec.Struct`s (so that a record's ``data`` is validated at
  the edge, with the field, the value and the expected type in the error);
- events are frozen dataclasses or frozen `msgspec.Struct`s (their annotations become
  the log's typed columns; Structs are several times cheaper to build);
- ``decide(command, state)`` returns the events the command causes, or `Rejected`;
- ``evolve(state, event)`` returns the next state; ``initial`` is the state before
  the first event. The state is a frozen dataclass or Struct that msgspec can turn
  into builtins (for snapshots).

>>> from dataclasses import dataclass
>>> import msgspec
>>> class Add(msgspec.Struct, frozen=True):
...     n: int
>>> @dataclass(frozen=True)
... class Added:
...     n: int
>>> counter = Aggregate(
...     name="Counter",
...     initial=0,
...     decide=lambda c, s: [Added(c.n)] if c.n > 0 else Rejected("n must be positive"),
...     evolve=lambda s, e: s + e.n,
...     commands=(Add,),
...     events=(Added,),
... )
>>> counter.fold([Added(2), Added(3)])
5
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flows._errors import DomainError
from store import Layout

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command the aggregate refuses, and why (shown to the sender as `reason`)."""

    reason: str


Decision = Sequence[Any] | Rejected


@dataclass(frozen=True)
class Aggregate(Generic[S]):
    """An aggregate type: its name, its deciders, and the classes it speaks."""

    name: str
    initial: S
    decide: Callable[[Any, S], Decision]
    evolve: Callable[[S, Any], S]
    commands: tuple[type, ...]
    events: tuple[type, ...]
    command_types: dict[str, type] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {c.__name__: c for c in self.commands}
        if len(by_name) != len(self.commands):
            raise DomainError(f"{self.name}: two command classes share a name")
        object.__setattr__(self, "command_types", by_name)

    def layout(self) -> Layout:
        """The event log's columns for this aggregate's events."""
        return Layout.from_classes({self.name: self.events})

    def fold(self, events: Iterable[Any], state: S | None = None) -> S:
        """The state after `events`, from `state` (or the initial state)."""
        current = self.initial if state is None else state
        for event in events:
            current = self.evolve(current, event)
        return current
