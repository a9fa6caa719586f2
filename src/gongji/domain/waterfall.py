"""The deduction order of docs/domain.md, exact in fen: own account, then the authorizer's, then cash.

This is the reference implementation. The hot path computes the same split inside SQL
(`gongji_split` in the store's migrations) so that a settlement is one round trip; a property test
proves the two agree on arbitrary balances and amounts.
"""

from __future__ import annotations

import enum
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


class Limit(enum.StrEnum):
    """What made mutual aid pay less than the authorizer's balance would have."""

    GRANT_CAP = "GRANT_CAP"  # the yearly cap its authorizer set on the grant
    BENEFICIARY_CAP = "BENEFICIARY_CAP"  # the region's yearly cap per beneficiary, across all grants
    AUTHORIZER_FLOOR = "AUTHORIZER_FLOOR"  # the region's floor under the authorizer's balance
    CARE_REGION = "CARE_REGION"  # the patient's region keeps mutual aid from paying for care away from home


@dataclass(frozen=True, slots=True)
class Room:
    """How much mutual aid may pay, and the limit that set it when that is less than the balance."""

    fen: int
    limited_by: Limit | None


def mutual_aid_room(
    balance_fen: int | None,
    *,
    floor_fen: int | None = None,
    grant_cap_left_fen: int | None = None,
    beneficiary_cap_left_fen: int | None = None,
) -> Room | None:
    """The most the authorizer's account may pay for one settlement: its balance above the floor, and
    no more than what is left of the grant's yearly cap and of the beneficiary's. None (no limit) for
    any of the three means none applies; `balance_fen` None means no grant is drawn on (no room).

    On a tie the limit named is the grant's cap, then the beneficiary's, then the floor. The twin of
    `gongji_mutual_aid_room` in store/sql/settle.sql.
    """
    if balance_fen is None:
        return None
    assert balance_fen >= 0 and all(
        v is None or v >= 0 for v in (floor_fen, grant_cap_left_fen, beneficiary_cap_left_fen)
    )
    above_floor = max(balance_fen - floor_fen, 0) if floor_fen else None
    limits = (
        (Limit.GRANT_CAP, grant_cap_left_fen),
        (Limit.BENEFICIARY_CAP, beneficiary_cap_left_fen),
        (Limit.AUTHORIZER_FLOOR, above_floor),
    )
    room = min([balance_fen, *(fen for _, fen in limits if fen is not None)])
    limited_by = next((limit for limit, fen in limits if fen is not None and fen == room < balance_fen), None)
    return Room(room, limited_by)


def settlement_limit(s: Split, room: Room | None) -> Limit | None:
    """The limit a settlement answers: the room's, when mutual aid paid all the room and cash paid the
    rest. The twin of the same rule in gongji_settle and gongji_quote."""
    if room is None or s.psn_cash_pay_fen == 0:
        return None
    assert s.acct_mulaid_pay_fen == room.fen
    return room.limited_by


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
