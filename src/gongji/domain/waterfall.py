"""The deduction order of DOMAIN.md, exact in fen: own account, then the authorizer's, then cash.

This is the reference implementation. The hot path computes the same split inside SQL
(`gongji_split` in the store's migrations) so that a settlement is one round trip; a property test
proves the two agree on arbitrary balances and amounts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Split:
    acct_pay_fen: int
    acct_mulaid_pay_fen: int
    psn_cash_pay_fen: int

    @property
    def amount_fen(self) -> int:
        return self.acct_pay_fen + self.acct_mulaid_pay_fen + self.psn_cash_pay_fen


def split(
    amount_fen: int,
    own_balance_fen: int | None,
    mulaid_balance_fen: int | None,
    *,
    use_personal_account: bool = True,
) -> Split:
    """Split `amount_fen` over the sources.

    `own_balance_fen` is None for a patient without a personal account (resident-insured);
    `mulaid_balance_fen` is None when no live grant is used. With `use_personal_account` false
    (个人账户使用标志 off) everything is cash: the authorizer's account is personal-account money too.
    """
    assert amount_fen > 0, amount_fen
    assert own_balance_fen is None or own_balance_fen >= 0, own_balance_fen
    assert mulaid_balance_fen is None or mulaid_balance_fen >= 0, mulaid_balance_fen
    if not use_personal_account:
        return Split(0, 0, amount_fen)
    own = min(amount_fen, own_balance_fen or 0)
    mulaid = min(amount_fen - own, mulaid_balance_fen or 0)
    result = Split(own, mulaid, amount_fen - own - mulaid)
    assert result.amount_fen == amount_fen
    assert result.psn_cash_pay_fen >= 0
    return result


def refund_split(amount_fen: int, left: Split) -> Split:
    """Which sources a refund of `amount_fen` returns to, given what is not refunded yet (`left`).

    Last drawn first: cash, then the authorizer's account, then the patient's own. So a partial refund
    of a settlement that was paid partly in cash gives the cash back first, and the accounts keep what
    they paid until the refund reaches them.
    """
    assert 0 < amount_fen <= left.amount_fen, (amount_fen, left)
    cash = min(amount_fen, left.psn_cash_pay_fen)
    mulaid = min(amount_fen - cash, left.acct_mulaid_pay_fen)
    result = Split(amount_fen - cash - mulaid, mulaid, cash)
    assert 0 <= result.acct_pay_fen <= left.acct_pay_fen
    return result
