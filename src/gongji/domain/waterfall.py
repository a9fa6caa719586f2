"""The deduction order of docs/domain.md, exact in fen: own account, the patient's wallet (where its
region's policy places it), the authorizer's, then cash.

This is the reference implementation. The hot path computes the same split inside SQL
(`gongji_split` in the store's migrations) so that a settlement is one round trip; a property test
proves the two agree on arbitrary balances and amounts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gongji.domain.bill import ACCOUNTS_PAY, NO_PARTS, Parts, WhollySelfPaid


@dataclass(frozen=True, slots=True)
class Split:
    acct_pay_fen: int
    acct_mulaid_pay_fen: int
    psn_cash_pay_fen: int
    wallet_pay_fen: int = 0

    @property
    def amount_fen(self) -> int:
        return self.acct_pay_fen + self.acct_mulaid_pay_fen + self.wallet_pay_fen + self.psn_cash_pay_fen


class WalletOrder(enum.StrEnum):
    """Where the patient's wallet stands in the deduction order: region policy (`wallet_order`).

    The default, AFTER_ACCOUNT: the patient's own account first, as before wallets; then the wallet,
    money a relative gave outright and the patient accepted, so the patient's own; then mutual aid, a
    standing permission to draw on a relative's account, which is still the relative's money. A family
    thus spends what is already the patient's before it touches what is not. The twin of
    `gongji_wallet_order` in store/sql/settle.sql (its default)."""

    BEFORE_ACCOUNT = "BEFORE_ACCOUNT"
    AFTER_ACCOUNT = "AFTER_ACCOUNT"
    AFTER_MUTUAL_AID = "AFTER_MUTUAL_AID"

    @property
    def sources(self) -> tuple[str, str, str]:
        """The accounts in the order they pay: "own", "wallet", "mutual_aid"."""
        return {
            WalletOrder.BEFORE_ACCOUNT: ("wallet", "own", "mutual_aid"),
            WalletOrder.AFTER_ACCOUNT: ("own", "wallet", "mutual_aid"),
            WalletOrder.AFTER_MUTUAL_AID: ("own", "mutual_aid", "wallet"),
        }[self]


DEFAULT_WALLET_ORDER = WalletOrder.AFTER_ACCOUNT


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
    wallet: Parts = NO_PARTS

    @property
    def totals(self) -> Split:
        return Split(self.own.fen, self.mutual_aid.fen, self.cash.fen, self.wallet.fen)


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
    wallet_balance_fen: int | None = None,
    wallet_order: WalletOrder = DEFAULT_WALLET_ORDER,
) -> BillSplit:
    """Split `bill` over the sources: the own account, the patient's wallet and the authorizer's in
    `wallet_order`, then cash, each paying only the parts it may (`wholly`: who may pay the wholly
    self-paid items, by region policy; the wallet holds personal-account money and may what the
    account may).

    `own_balance_fen` is None for a patient without a personal account (resident-insured);
    `mulaid_balance_fen` is None when no live grant is used; `wallet_balance_fen` None when the patient
    has no wallet. With `use_personal_account` false (个人账户使用标志 off) everything is cash: the
    authorizer's account and the wallet are personal-account money too.

    A source pays the parts in scope and over the limit, then the wholly self-paid ones, except where
    mutual aid comes after it and may not pay the wholly self-paid ones: then it pays those first,
    leaving what mutual aid may pay to mutual aid. Either way each source pays as much as it may, and
    the least is left to cash. The twin of `gongji_split` in store/sql/settle.sql.
    """
    assert bill.fen > 0 and min(bill.in_scope_fen, bill.over_limit_fen, bill.wholly_self_paid_fen) >= 0, bill
    for balance in (own_balance_fen, mulaid_balance_fen, wallet_balance_fen):
        assert balance is None or balance >= 0, balance
    if not use_personal_account:
        return BillSplit(Parts(), Parts(), bill)
    covered = ("in_scope_fen", "over_limit_fen")
    whole = ("wholly_self_paid_fen",)
    balances = {"own": own_balance_fen, "wallet": wallet_balance_fen, "mutual_aid": mulaid_balance_fen}
    order = wallet_order.sources
    paid: dict[str, Parts] = {}
    left = bill
    for source in order:
        may = wholly.mutual_aid if source == "mutual_aid" else wholly.account
        first = may and not wholly.mutual_aid and order.index("mutual_aid") > order.index(source)
        parts = whole + covered if first else covered + (whole if may else ())
        paid[source] = _pay(balances[source] or 0, left, parts)
        left = left - paid[source]
    result = BillSplit(paid["own"], paid["mutual_aid"], left, paid["wallet"])
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


def settlement_limit(s: BillSplit, limited_by: Limit | None, wholly: WhollySelfPaid = ACCOUNTS_PAY) -> Limit | None:
    """The limit a settlement answers: `limited_by`, what held mutual aid back (the room's, or the care
    region's), when cash paid part of what mutual aid may pay (`wholly`: whether it may pay the wholly
    self-paid items), so mutual aid paid all it could. Cash paying what mutual aid may not pay is no
    limit of mutual aid's. The twin of `gongji_settlement_limit` in store/sql/settle.sql."""
    cash = s.cash
    mutual_aid_could = cash.in_scope_fen + cash.over_limit_fen + (cash.wholly_self_paid_fen if wholly.mutual_aid else 0)
    return limited_by if mutual_aid_could > 0 else None


def refund_split(amount_fen: int, left: Split) -> Split:
    """Which sources a refund of `amount_fen` returns to, given what is not refunded yet (`left`).

    Cash first, then the authorizer's account, then the patient's wallet, then the patient's own: last
    drawn first in the default deduction order, and the same order whatever a region's (a refund never
    depends on a policy changed since). So a partial refund of a settlement that was paid partly in
    cash gives the cash back first, and the accounts keep what they paid until the refund reaches them.
    The twin of `gongji_refund_split` in store/sql/lifecycle.sql.
    """
    assert 0 < amount_fen <= left.amount_fen, (amount_fen, left)
    cash = min(amount_fen, left.psn_cash_pay_fen)
    mulaid = min(amount_fen - cash, left.acct_mulaid_pay_fen)
    wallet = min(amount_fen - cash - mulaid, left.wallet_pay_fen)
    result = Split(amount_fen - cash - mulaid - wallet, mulaid, cash, wallet)
    assert 0 <= result.acct_pay_fen <= left.acct_pay_fen
    return result
