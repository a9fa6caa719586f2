"""Reversal (2601) of a refund (2208), as a pure function.

The twin of `gongji_refund_reversal_refusal` in the store's `sql/lifecycle.sql`, under the same name; a
property test (tests/integration/test_twins.py) holds the two to each other.
"""

from __future__ import annotations

from gongji import errors


def refund_reversal_refusal(
    *,
    settlement_reversed: bool,
    acct_pay_fen: int,
    own_balance_fen: int | None,
    acct_mulaid_pay_fen: int,
    mulaid_balance_fen: int | None,
    wallet_pay_fen: int = 0,
    wallet_balance_fen: int | None = None,
) -> type[errors.AlreadyReversed] | type[errors.RefundAlreadySpent] | None:
    """Why a committed refund cannot be taken back, or None when it can.

    Its settlement reversed since gave back everything that was left: refused, the refund stands. An
    account holding less than the refund's part of it (`acct_pay_fen` to the patient's own account,
    `acct_mulaid_pay_fen` to the authorizer's, `wallet_pay_fen` to the patient's wallet) spent the
    money meanwhile: taking it back would push
    the balance below zero, and gongji keeps no receivable for cash owed, so refused. A balance of
    None is an account the refund credited nothing.
    """
    assert acct_pay_fen >= 0 and acct_mulaid_pay_fen >= 0 and wallet_pay_fen >= 0
    if settlement_reversed:
        return errors.AlreadyReversed
    short = (
        acct_pay_fen > (own_balance_fen or 0)
        or acct_mulaid_pay_fen > (mulaid_balance_fen or 0)
        or wallet_pay_fen > (wallet_balance_fen or 0)
    )
    if short:
        return errors.RefundAlreadySpent
    return None
