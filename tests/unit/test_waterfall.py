"""The deduction order of docs/domain.md as properties of the reference split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gongji import limits
from gongji.domain.bill import Parts, WhollySelfPaid
from gongji.domain.waterfall import (
    Limit,
    Room,
    Split,
    mutual_aid_room,
    refund_split,
    settlement_limit,
    split,
    split_bill,
)

amounts = st.integers(min_value=1, max_value=limits.AMOUNT_FEN_MAX)
balances = st.none() | st.integers(min_value=0, max_value=10 * limits.AMOUNT_FEN_MAX)


@given(amounts, balances, balances, st.booleans())
def test_parts_sum_to_amount_and_respect_balances(amount: int, own: int | None, mulaid: int | None, use: bool) -> None:
    s = split(amount, own, mulaid, use_personal_account=use)
    assert s.acct_pay_fen + s.acct_mulaid_pay_fen + s.psn_cash_pay_fen == amount
    assert min(s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) >= 0
    assert s.acct_pay_fen <= (own or 0)
    assert s.acct_mulaid_pay_fen <= (mulaid or 0)


@given(amounts, balances, balances)
def test_cash_only_when_accounts_are_exhausted(amount: int, own: int | None, mulaid: int | None) -> None:
    s = split(amount, own, mulaid)
    if s.psn_cash_pay_fen > 0:
        assert s.acct_pay_fen == (own or 0)
        assert s.acct_mulaid_pay_fen == (mulaid or 0)


@given(amounts, balances, balances)
def test_own_account_before_mutual_aid(amount: int, own: int | None, mulaid: int | None) -> None:
    s = split(amount, own, mulaid)
    if s.acct_mulaid_pay_fen > 0:
        assert s.acct_pay_fen == (own or 0)


@given(amounts, balances, balances)
def test_opting_out_pays_everything_in_cash(amount: int, own: int | None, mulaid: int | None) -> None:
    assert split(amount, own, mulaid, use_personal_account=False) == Split(0, 0, amount)


def test_worked_examples_of_domain_md() -> None:
    # 小丽 (employee) buys medicine: her own balance first, then 小明's, then cash.
    assert split(3_500, 2_000, 80_000) == Split(2_000, 1_500, 0)
    assert split(3_500, 2_000, 1_000) == Split(2_000, 1_000, 500)
    assert split(3_500, 0, 0) == Split(0, 0, 3_500)
    # 小丽 is resident-insured: 小明's account directly, then cash.
    assert split(3_500, None, 80_000) == Split(0, 3_500, 0)
    assert split(3_500, None, 1_000) == Split(0, 1_000, 2_500)


def test_refuses_what_cannot_be_split() -> None:
    with pytest.raises(AssertionError):
        split(0, 100, 100)
    with pytest.raises(AssertionError):
        split(100, -1, 100)


@given(st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**8), st.data())
def test_refunds_go_back_last_drawn_first(own: int, mulaid: int, cash: int, data: st.DataObject) -> None:
    left = Split(own, mulaid, cash)
    if left.amount_fen == 0:
        return
    amount = data.draw(st.integers(1, left.amount_fen))
    r = refund_split(amount, left)
    assert r.amount_fen == amount
    assert 0 <= r.acct_pay_fen <= own
    assert 0 <= r.acct_mulaid_pay_fen <= mulaid
    assert 0 <= r.psn_cash_pay_fen <= cash
    if r.acct_mulaid_pay_fen:
        assert r.psn_cash_pay_fen == cash  # cash went back first
    if r.acct_pay_fen:
        assert r.acct_mulaid_pay_fen == mulaid  # then the authorizer's account


def test_refund_example() -> None:
    # Settled 1,000 own + 1,500 mutual aid + 500 cash; refund 700, then 1,500, then the rest.
    assert refund_split(700, Split(1_000, 1_500, 500)) == Split(0, 200, 500)
    assert refund_split(1_500, Split(1_000, 1_300, 0)) == Split(200, 1_300, 0)
    assert refund_split(800, Split(800, 0, 0)) == Split(800, 0, 0)


limits_ = st.none() | st.integers(min_value=0, max_value=10 * limits.AMOUNT_FEN_MAX)


@given(st.integers(0, 10 * limits.AMOUNT_FEN_MAX), limits_, limits_, limits_)
def test_the_room_respects_every_limit(balance: int, floor: int | None, grant: int | None, ben: int | None) -> None:
    room = mutual_aid_room(balance, floor_fen=floor, grant_cap_left_fen=grant, beneficiary_cap_left_fen=ben)
    assert room is not None
    assert 0 <= room.fen <= balance
    assert balance - room.fen >= min(balance, floor or 0)  # never below the floor, unless already below
    assert room.fen <= min(v for v in (grant, ben, balance) if v is not None)
    assert (room.limited_by is None) == (room.fen == balance)


def test_room_examples() -> None:
    assert mutual_aid_room(None) is None
    assert mutual_aid_room(5_000) == Room(5_000, None)
    assert mutual_aid_room(6_000, floor_fen=5_000) == Room(1_000, Limit.AUTHORIZER_FLOOR)
    assert mutual_aid_room(6_000, floor_fen=5_000, grant_cap_left_fen=1_000) == Room(1_000, Limit.GRANT_CAP)
    assert mutual_aid_room(800, beneficiary_cap_left_fen=200) == Room(200, Limit.BENEFICIARY_CAP)
    # A settlement names the limit only when mutual aid paid the whole room and cash the rest.
    assert settlement_limit(Split(0, 200, 300), Room(200, Limit.GRANT_CAP)) is Limit.GRANT_CAP
    assert settlement_limit(Split(0, 150, 0), Room(200, Limit.GRANT_CAP)) is None
    # With the parts: cash paying only wholly self-paid items mutual aid may not pay is the region's
    # rule, not the limit's doing (mutual aid paid 100 of a room of 200).
    no_mulaid = WhollySelfPaid(account=True, mutual_aid=False)
    bill = Parts(100, 0, 500)
    paid = split_bill(bill, None, 200, wholly=no_mulaid)
    assert paid.totals == Split(0, 100, 500)
    assert settlement_limit(paid, Room(200, Limit.GRANT_CAP), no_mulaid) is None
    assert (
        settlement_limit(
            split_bill(Parts(300, 0, 500), None, 200, wholly=no_mulaid), Room(200, Limit.GRANT_CAP), no_mulaid
        )
        is Limit.GRANT_CAP
    )
    assert settlement_limit(split_bill(bill, None, 80), Room(80, Limit.GRANT_CAP)) is Limit.GRANT_CAP
