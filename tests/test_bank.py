"""The bank's invariants: given past events, when a command, then events or a rejection."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from flows import Rejected
from flows.bank import (
    ACCOUNT,
    Account,
    AccountClosed,
    AccountOpened,
    CloseAccount,
    Deposit,
    Deposited,
    OpenAccount,
    Withdraw,
    Withdrawn,
    decide,
    evolve,
)
from flows.testing import given

OPENED = AccountOpened(owner="ann", overdraft_limit=100)
CLOSED = (OPENED, AccountClosed())


# -- opening -------------------------------------------------------------------


def test_a_new_account_opens() -> None:
    state = given(ACCOUNT).when(OpenAccount("ann", overdraft_limit=100)).then(OPENED)
    assert state == Account(status="open", owner="ann", balance=0, overdraft_limit=100)


def test_an_account_opens_without_an_overdraft_by_default() -> None:
    given(ACCOUNT).when(OpenAccount("ann")).then(AccountOpened("ann", overdraft_limit=0))


def test_opening_an_open_account_is_rejected() -> None:
    given(ACCOUNT, OPENED).when(OpenAccount("bob")).then_rejected("the account is already open")


@pytest.mark.parametrize("command", [Deposit(1), Withdraw(1), CloseAccount()], ids=repr)
def test_an_account_not_yet_opened_accepts_nothing_but_opening(command: Any) -> None:
    given(ACCOUNT).when(command).then_rejected("the account is not open")


# -- deposits and withdrawals --------------------------------------------------


def test_a_deposit_raises_the_balance() -> None:
    given(ACCOUNT, OPENED, Deposited(30)).when(Deposit(20)).then(Deposited(20))
    given(ACCOUNT, OPENED, Deposited(30)).when(Deposit(20)).then_state(
        Account(status="open", owner="ann", balance=50, overdraft_limit=100)
    )


def test_a_withdrawal_lowers_the_balance() -> None:
    state = given(ACCOUNT, OPENED, Deposited(50)).when(Withdraw(20)).then(Withdrawn(20))
    assert state.balance == 30


def test_a_withdrawal_may_go_down_to_exactly_minus_the_overdraft_limit() -> None:
    state = given(ACCOUNT, OPENED, Deposited(50)).when(Withdraw(150)).then(Withdrawn(150))
    assert state.balance == -100


def test_a_withdrawal_one_past_the_overdraft_limit_is_rejected() -> None:
    given(ACCOUNT, OPENED, Deposited(50)).when(Withdraw(151)).then_rejected(
        "insufficient funds: balance 50, overdraft limit 100, withdrawal 151"
    )


def test_an_account_at_its_overdraft_limit_cannot_withdraw_more() -> None:
    given(ACCOUNT, OPENED, Withdrawn(100)).when(Withdraw(1)).then_rejected("insufficient funds")


def test_without_an_overdraft_the_balance_may_reach_zero_but_not_below() -> None:
    no_overdraft = AccountOpened("bob", overdraft_limit=0)
    given(ACCOUNT, no_overdraft, Deposited(10)).when(Withdraw(10)).then(Withdrawn(10))
    given(ACCOUNT, no_overdraft, Deposited(10)).when(Withdraw(11)).then_rejected(
        "insufficient funds"
    )


def test_a_deposit_pays_back_an_overdraft() -> None:
    state = given(ACCOUNT, OPENED, Withdrawn(100)).when(Deposit(150)).then(Deposited(150))
    assert state.balance == 50


# -- closing -------------------------------------------------------------------


def test_an_account_closes_at_a_zero_balance() -> None:
    given(ACCOUNT, OPENED).when(CloseAccount()).then(AccountClosed())
    given(ACCOUNT, OPENED, Deposited(70), Withdrawn(70)).when(CloseAccount()).then_state(
        Account(status="closed", owner="ann", balance=0, overdraft_limit=100)
    )


@pytest.mark.parametrize(
    ("past", "balance"), [(Deposited(1), 1), (Withdrawn(1), -1)], ids=["credit", "overdrawn"]
)
def test_an_account_with_a_non_zero_balance_does_not_close(past: Any, balance: int) -> None:
    given(ACCOUNT, OPENED, past).when(CloseAccount()).then_rejected(
        f"the balance must be zero to close the account; it is {balance}"
    )


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (Deposit(1), "the account is closed"),
        (Withdraw(1), "the account is closed"),
        (CloseAccount(), "the account is closed"),
        (OpenAccount("ann"), "the account is already closed"),
    ],
    ids=repr,
)
def test_a_closed_account_accepts_nothing(command: Any, reason: str) -> None:
    given(ACCOUNT, *CLOSED).when(command).then_rejected(reason)


# -- any sequence of commands --------------------------------------------------

# Small amounts make balances cross zero and the overdraft limit often; big ones find
# arithmetic edges. Amounts are positive: the parser refuses the others at the edge.
amounts = st.integers(1, 20) | st.integers(1, 10**15)
openings = st.builds(
    OpenAccount,
    owner=st.text(min_size=1, max_size=10),
    overdraft_limit=st.integers(0, 30) | st.integers(0, 10**15),
)
commands = st.one_of(
    openings,
    st.builds(Deposit, amount=amounts),
    st.builds(Withdraw, amount=amounts),
    st.just(CloseAccount()),
)
# Most random sequences never open the account; half of them start by opening it.
sequences = st.lists(commands, max_size=40) | st.builds(
    lambda first, rest: [first, *rest], openings, st.lists(commands, max_size=40)
)


@hypothesis.given(sequences)
def test_any_commands_keep_the_balance_within_the_overdraft_limit(sequence: list[Any]) -> None:
    state = ACCOUNT.initial
    accepted: list[Any] = []
    headroom: list[int] = []  # how far above the overdraft limit each balance was
    for command in sequence:
        decision = decide(command, state)
        if isinstance(decision, Rejected):
            assert decision.reason
            continue
        assert state.status != "closed", f"a closed account accepted {command!r}"
        for event in decision:
            state = evolve(state, event)
            accepted.append(event)
        assert state.balance >= -state.overdraft_limit
        if state.status == "closed":
            assert state.balance == 0
        headroom.append(state.balance + state.overdraft_limit)
    if headroom:  # steer the search towards balances that come right down to the limit
        hypothesis.target(-min(headroom), label="closest to the overdraft limit")
    assert ACCOUNT.fold(accepted) == state
    deposited = sum(e.amount for e in accepted if isinstance(e, Deposited))
    withdrawn = sum(e.amount for e in accepted if isinstance(e, Withdrawn))
    assert state.balance == deposited - withdrawn
