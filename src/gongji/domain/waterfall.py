"""The deduction order of docs/domain.md, exact in fen: own account, then the authorizer's, then cash.

This is the reference implementation. The hot path computes the same split inside SQL
(`gongji_split` in the store's migrations) so that a settlement is one round trip; a property test
proves the two agree on arbitrary balances and amounts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gongji.domain.bill import ACCOUNTS_PAY, Parts, WhollySelfPaid


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
    """Split `amount_fen` over the sources: a bill sent as its amount only (split_bill)."""
    return split_bill(
        Parts(amount_fen), own_balance_fen, mulaid_balance_fen, use_personal_account=use_personal_account
    ).totals


@dataclass(frozen=True, slots=True)
class BillSplit:
    """What each source pays of each part of a bill."""

    own: Parts
    mutual_aid: Parts
    cash: Parts

    @property
    def totals(self) -> Split:
        return Split(self.own.fen, self.mutual_aid.fen, self.cash.fen)


def _pay(balance_fen: int, left: Parts, order: tuple[str, ...]) -> Parts:
    """What a source with `balance_fen` pays of the parts `left`, taking the parts in `order` (the names
    of the Parts fields it may pay), each as far as the balance goes."""
    paid = dict.fromkeys(("in_scope_fen", "over_limit_fen", "wholly_self_paid_fen"), 0)
    for part in order:
        paid[part] = min(balance_fen, getattr(left, part))
        balance_fen -= paid[part]
    return Parts(**paid)


def split_bill(
    bill: Parts,
    own_balance_fen: int | None,
    mulaid_balance_fen: int | None,
    *,
    use_personal_account: bool = True,
    wholly: WhollySelfPaid = ACCOUNTS_PAY,
) -> BillSplit:
    """Split `bill` over the sources: the own account, then the authorizer's, then cash, each paying
    only the parts it may (`wholly`: who may pay the wholly self-paid items, by region policy).

    `own_balance_fen` is None for a patient without a personal account (resident-insured);
    `mulaid_balance_fen` is None when no live grant is used. With `use_personal_account` false
    (个人账户使用标志 off) everything is cash: the authorizer's account is personal-account money too.

    The own account pays the parts in scope and over the limit, then the wholly self-paid ones, except
    where only it may pay the wholly self-paid ones: then it pays those first, leaving what mutual aid
    may pay to mutual aid. Either way the own account pays as much as it may, and the least is left to
    cash. The twin of `gongji_split` in store/sql/settle.sql.
    """
    assert bill.fen > 0 and min(bill.in_scope_fen, bill.over_limit_fen, bill.wholly_self_paid_fen) >= 0, bill
    assert own_balance_fen is None or own_balance_fen >= 0, own_balance_fen
    assert mulaid_balance_fen is None or mulaid_balance_fen >= 0, mulaid_balance_fen
    if not use_personal_account:
        return BillSplit(Parts(), Parts(), bill)
    covered = ("in_scope_fen", "over_limit_fen")
    whole = ("wholly_self_paid_fen",)
    own_order = (
        whole + covered if wholly.account and not wholly.mutual_aid else covered + (whole if wholly.account else ())
    )
    own = _pay(own_balance_fen or 0, bill, own_order)
    mulaid = _pay(mulaid_balance_fen or 0, bill - own, covered + (whole if wholly.mutual_aid else ()))
    result = BillSplit(own, mulaid, bill - own - mulaid)
    assert result.totals.amount_fen == bill.fen
    assert min(result.cash.in_scope_fen, result.cash.over_limit_fen, result.cash.wholly_self_paid_fen) >= 0
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


def settlement_limit(s: Split | BillSplit, room: Room | None, wholly: WhollySelfPaid = ACCOUNTS_PAY) -> Limit | None:
    """The limit a settlement answers: the room's, when mutual aid paid all the room and cash paid some
    of what mutual aid may pay. Cash paying the wholly self-paid items mutual aid may not pay (`wholly`,
    by region policy) is the region's rule: no limit held mutual aid back from them. The twin of
    gongji_cash_held_back in store/sql/settle.sql."""
    if isinstance(s, BillSplit):
        held_back = s.cash.fen - (0 if wholly.mutual_aid else s.cash.wholly_self_paid_fen)
        s = s.totals
    else:
        held_back = s.psn_cash_pay_fen
    if room is None or held_back == 0:
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
