"""The example bank domain: accounts that are opened, paid into, drawn on and closed.

Amounts are integers in the smallest unit of the currency (cents). The invariants:
an account must be open to take money in or out; amounts are positive (checked at the
edge: a non-positive amount is an invalid command); opening an account twice is
rejected; a balance never goes below minus the account's overdraft limit; an account
closes only at a zero balance; a closed account accepts nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from flows._app import App
from flows._domain import Aggregate, Decision, Rejected
from queries import View
from store import Layout

AGGREGATE_TYPE = "Account"

Amount = Annotated[int, msgspec.Meta(gt=0, le=10**15)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


# -- commands ------------------------------------------------------------------


class OpenAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    owner: Name
    overdraft_limit: Annotated[int, msgspec.Meta(ge=0, le=10**15)] = 0


class Deposit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Amount


class Withdraw(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Amount


class CloseAccount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


# -- events --------------------------------------------------------------------
# Events and the state are frozen msgspec Structs rather than frozen dataclasses: they
# are built once per event on the hot path, in C, at an eighth of a dataclass's cost.
# gc=False: they hold only strings and numbers, so they can never be part of a cycle.


class AccountOpened(msgspec.Struct, frozen=True, gc=False):
    owner: str
    overdraft_limit: int


class Deposited(msgspec.Struct, frozen=True, gc=False):
    amount: int


class Withdrawn(msgspec.Struct, frozen=True, gc=False):
    amount: int


class AccountClosed(msgspec.Struct, frozen=True, gc=False):
    pass


EVENTS: tuple[type, ...] = (AccountOpened, Deposited, Withdrawn, AccountClosed)


# -- the decider ---------------------------------------------------------------


class Account(msgspec.Struct, frozen=True, gc=False):
    status: Literal["new", "open", "closed"] = "new"
    owner: str = ""
    balance: int = 0
    overdraft_limit: int = 0


def decide(command: Any, state: Account) -> Decision:
    if isinstance(command, OpenAccount):
        if state.status != "new":
            return Rejected(f"the account is already {state.status}")
        return [AccountOpened(command.owner, command.overdraft_limit)]
    if state.status != "open":
        return Rejected(f"the account is {'not open' if state.status == 'new' else 'closed'}")
    if isinstance(command, Deposit):
        return [Deposited(command.amount)]
    if isinstance(command, Withdraw):
        floor = -state.overdraft_limit
        if state.balance - command.amount < floor:
            return Rejected(
                f"insufficient funds: balance {state.balance}, overdraft limit "
                f"{state.overdraft_limit}, withdrawal {command.amount}"
            )
        return [Withdrawn(command.amount)]
    if isinstance(command, CloseAccount):
        if state.balance != 0:
            return Rejected(f"the balance must be zero to close the account; it is {state.balance}")
        return [AccountClosed()]
    return Rejected(f"unknown command {type(command).__name__}")


def evolve(state: Account, event: Any) -> Account:
    # Plain constructor calls: msgspec.structs.replace costs more, and this runs once
    # per event on the hot path.
    if isinstance(event, Deposited):
        return Account(
            state.status, state.owner, state.balance + event.amount, state.overdraft_limit
        )
    if isinstance(event, Withdrawn):
        return Account(
            state.status, state.owner, state.balance - event.amount, state.overdraft_limit
        )
    if isinstance(event, AccountOpened):
        return Account("open", event.owner, 0, event.overdraft_limit)
    if isinstance(event, AccountClosed):
        return Account("closed", state.owner, state.balance, state.overdraft_limit)
    return state


ACCOUNT = Aggregate(
    name=AGGREGATE_TYPE,
    initial=Account(),
    decide=decide,
    evolve=evolve,
    commands=(OpenAccount, Deposit, Withdraw, CloseAccount),
    events=EVENTS,
)


# -- the read side: views a bank wants, maintained from the log ------------------

VIEWS: tuple[View, ...] = (
    View(
        "balances",
        """
        SELECT aggregate_id AS account,
               sum(CASE event_type WHEN 'Deposited' THEN amount
                                   WHEN 'Withdrawn' THEN -amount ELSE 0 END) AS balance,
               count(*) FILTER (WHERE event_type = 'Deposited') AS deposits,
               count(*) FILTER (WHERE event_type = 'Withdrawn') AS withdrawals,
               max(version) AS version,
               max(timestamp) AS updated_at
        FROM events GROUP BY aggregate_id
        """,
        description="the balance of every account, and how many payments made it",
    ),
    View(
        "daily_totals",
        """
        SELECT date_trunc('day', timestamp) AS day, event_type,
               count(*) AS events, sum(amount) AS total, avg(amount) AS average,
               min(amount) AS smallest, max(amount) AS largest
        FROM events GROUP BY ALL
        """,
        description="per day and event type: how many, how much, average and extremes",
    ),
    View(
        "account_status",
        """
        SELECT aggregate_id AS account,
               arg_max_null(CASE event_type WHEN 'AccountClosed' THEN 'closed'
                                            ELSE 'open' END, version) AS status,
               arg_max_null(owner, version) FILTER (WHERE event_type = 'AccountOpened')
                   AS owner,
               min(timestamp) AS opened_at
        FROM events GROUP BY aggregate_id
        """,
        description="every account's status (open or closed), owner and opening time",
    ),
)


APP = App("bank", (ACCOUNT,), VIEWS)


def layout() -> Layout:
    """The log layout of the bank's events."""
    return APP.layout()


def __getattr__(name: str) -> Any:
    """`flows.bank:flow`, for ``python -m bytewax.run flows.bank:flow``.

    Built on first access from the environment: ``CQRSFLOW_COMMANDS`` (a file, a
    directory, or ``-`` for stdin), ``CQRSFLOW_DATA`` (the data directory), and
    optionally ``CQRSFLOW_FORMAT`` (jsonl | msgpack), ``CQRSFLOW_PARTITIONS`` (for a
    new log, default 4) and ``CQRSFLOW_FSYNC`` (always | interval | never).
    """
    if name != "flow":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from flows._flow import flow_from_environment

    return flow_from_environment(APP, "bank")
