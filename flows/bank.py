"""The example bank domain: accounts that are opened, paid into, drawn on and closed."""

from __future__ import annotations

from dataclasses import dataclass

from store import Layout

AGGREGATE_TYPE = "Account"


@dataclass(frozen=True, slots=True)
class AccountOpened:
    owner: str
    overdraft_limit: int


@dataclass(frozen=True, slots=True)
class Deposited:
    amount: int


@dataclass(frozen=True, slots=True)
class Withdrawn:
    amount: int


@dataclass(frozen=True, slots=True)
class AccountClosed:
    pass


EVENTS: tuple[type, ...] = (AccountOpened, Deposited, Withdrawn, AccountClosed)


def layout() -> Layout:
    """The log layout of the bank's events."""
    return Layout.from_classes({AGGREGATE_TYPE: EVENTS})
