"""Given/when/then for aggregates: past events, one command, then events or a rejection.

`given` folds the past events into a state, `Scenario.when` runs the decider on one
command, and `Outcome` asserts what it decided. A failure is an `AssertionError` that
shows the given events, the command, what was expected and what happened instead:

>>> from flows.bank import ACCOUNT, AccountOpened, Deposit, Deposited, Withdraw, Withdrawn
>>> opened = AccountOpened(owner="ann", overdraft_limit=100)
>>> given(ACCOUNT, opened).when(Deposit(50)).then(Deposited(50))
Account(status='open', owner='ann', balance=50, overdraft_limit=100)
>>> given(ACCOUNT, opened).when(Withdraw(101)).then_rejected("insufficient funds")
Rejected(reason='insufficient funds: balance 0, overdraft limit 100, withdrawal 101')
>>> given(ACCOUNT, opened).when(Withdraw(101)).then(Withdrawn(101))
Traceback (most recent call last):
    ...
AssertionError: given the Account events
    AccountOpened(owner='ann', overdraft_limit=100)
when
    Withdraw(amount=101)
expected the events
    Withdrawn(amount=101)
but it was rejected
    insufficient funds: balance 0, overdraft limit 100, withdrawal 101

A decider that raises is a rejection of that one command, as in the flow: `then_rejected`
accepts it (the reason names the exception) and the other checks report it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, Generic, NoReturn, TypeVar

from flows._domain import Aggregate, Rejected

__all__ = ["Outcome", "Scenario", "given"]

S = TypeVar("S")


def given(aggregate: Aggregate[S], *events: Any) -> Scenario[S]:
    """The aggregate after `events` (none: its initial state), ready for a command."""
    return Scenario(aggregate, events, aggregate.fold(events))


@dataclass(frozen=True)
class Scenario(Generic[S]):
    """An aggregate's past events and the state they fold into."""

    aggregate: Aggregate[S]
    events: tuple[Any, ...]
    state: S

    def when(self, command: Any) -> Outcome[S]:
        """What the decider makes of `command` in this state, and the state after.

        As in the flow, a decider that raises (in decide, or in evolve on the events it
        decided) rejects this one command, with a reason that names the exception:

        >>> broken = Aggregate("Broken", 0, lambda c, s: 1 // s, lambda s, e: s, (), ())
        >>> given(broken).when("go").then_rejected("ZeroDivisionError")
        Rejected(reason='the decider raised ZeroDivisionError: integer division or modulo by zero')
        >>> given(broken).when("go").then()
        Traceback (most recent call last):
            ...
        AssertionError: given the Broken events
            (none)
        when
            'go'
        expected the events
            (none)
        but the decider raised
            ZeroDivisionError: integer division or modulo by zero
        """
        state = copy.deepcopy(self.state)  # the decider's own copy: mutating it shows
        try:
            decision = self.aggregate.decide(command, state)
            if isinstance(decision, Rejected):
                return Outcome(self, command, decision, state, None)
            events = tuple(decision)
            after = reduce(self.aggregate.evolve, events, state)
        except Exception as exc:
            reason = f"the decider raised {type(exc).__name__}: {exc}"
            return Outcome(self, command, Rejected(reason), state, exc)
        return Outcome(self, command, events, after, None)


@dataclass(frozen=True)
class Outcome(Generic[S]):
    """The events a command caused, or its rejection, and the state after it."""

    scenario: Scenario[S]
    command: Any
    decision: tuple[Any, ...] | Rejected
    state: S
    error: Exception | None  # what the decider raised, if it raised

    def then(self, *expected: Any) -> S:
        """Assert the command caused exactly these events; return the state after them."""
        if self.decision != expected:
            self._fail(f"expected the events\n{_lines(expected)}", self._happened())
        return self.state

    def then_rejected(self, match: str | None = None) -> Rejected:
        """Assert the command was rejected (its reason containing `match`), state unchanged."""
        wanted = "a rejection" + ("" if match is None else f" whose reason contains {match!r}")
        rejected = self.decision
        if not isinstance(rejected, Rejected) or (match and match not in rejected.reason):
            self._fail(f"expected {wanted}", self._happened())
        if self.state != self.scenario.state:  # a decider that mutated its input
            self._fail(
                f"expected {wanted}, the state unchanged",
                f"{self._happened()}\nand the decider changed the state it was given, from\n"
                f"    {self.scenario.state!r}\nto\n    {self.state!r}",
            )
        return rejected

    def then_state(self, expected: S) -> S:
        """Assert the command was accepted and the state after its events is `expected`."""
        if isinstance(self.decision, Rejected):
            self._fail(f"expected the state\n    {expected!r}", self._happened())
        if self.state != expected:
            self._fail(
                f"expected the state\n    {expected!r}",
                f"{self._happened()}\nand the state became\n    {self.state!r}",
            )
        return self.state

    def _happened(self) -> str:
        if self.error is not None:
            return f"but the decider raised\n    {type(self.error).__name__}: {self.error}"
        if isinstance(self.decision, Rejected):
            return f"but it was rejected\n    {self.decision.reason}"
        return f"but it decided the events\n{_lines(self.decision)}"

    def _fail(self, expected: str, happened: str) -> NoReturn:
        scenario = self.scenario
        raise AssertionError(
            f"given the {scenario.aggregate.name} events\n{_lines(scenario.events)}\n"
            f"when\n    {self.command!r}\n{expected}\n{happened}"
        ) from self.error


def _lines(events: Sequence[Any]) -> str:
    return "\n".join(f"    {e!r}" for e in events) or "    (none)"
