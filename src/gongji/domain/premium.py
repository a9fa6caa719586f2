"""Paying a close relative's resident-insurance premium (居民医保个人缴费) from an employee's personal
account, 国办发〔2024〕38号 (a), as pure functions.

Each is the twin of a step of `gongji_pay_premium` in the store's `sql/premium.sql`, under the same name
(`premium_refusal` is `gongji_premium_refusal`): the payment runs the SQL step inside PostgreSQL, under
the locks it decides by, so that it stays one round trip, and a property test
(tests/integration/test_twins.py) holds the two to each other. A refusal is answered as its class in
`gongji.errors`; the SQL answers the class's `reason`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from gongji import errors
from gongji.domain.people import Person, PersonStatus, Scheme
from gongji.domain.settlement import Seen


@dataclass(frozen=True, slots=True)
class PremiumRate:
    """The premium of a contribution year in a province ('61') or a 统筹区 ('610100'), collected on the
    calendar days opens_on to closes_on, both included."""

    region_key: str
    year: int
    amount_fen: int
    opens_on: dt.date
    closes_on: dt.date

    def is_open(self, today: dt.date) -> bool:
        return self.opens_on <= today <= self.closes_on


def premium_rate_for(rates: Iterable[PremiumRate], region_code: str, year: int) -> PremiumRate | None:
    """The rate of `year` for a beneficiary of the 统筹区 `region_code`: the 统筹区's own, else its
    province's (the first two digits), else None. At most one rate per key and year (the table's key)."""
    of_year = {r.region_key: r for r in rates if r.year == year}
    return of_year.get(region_code) or of_year.get(region_code[:2])


def premium_replay(*, stored_digest: bytes | None, digest: bytes) -> Seen | type[errors.IdempotencyKeyReused] | None:
    """Whether a PayPremium request id was seen before: `stored_digest` is the digest of the request that
    paid under it (None: none did). The same content answers the original payment again; other content
    is refused; None answers a new request."""
    if stored_digest is None:
        return None
    return Seen.REPLAY if stored_digest == digest else errors.IdempotencyKeyReused


def premium_refusal(
    *,
    payer: Person | None,
    beneficiary: Person | None,
    payer_has_account: bool,
    grant_id: int | None,
    rate: PremiumRate | None,
    today: dt.date,
    paid: bool | None,
    balance_fen: int | None,
) -> type[errors.GongjiError] | None:
    """Why `payer` may not pay `beneficiary`'s premium of the rate's year, in the order the checks run,
    or None when it may.

    `payer`/`beneficiary` None: not enrolled. `grant_id`: the live grant from payer to beneficiary (None:
    there is none). `rate`: premium_rate_for the beneficiary's region (None: not set). `today`: China's
    calendar day. `paid`: whether an unrefunded payment of the beneficiary's year exists; `balance_fen`:
    the payer's balance. These two are read last, under locks taken only when the checks before them
    pass: None means not read yet, and refuses nothing. The whole premium comes from the account, or
    nothing does: no cash part.
    """
    if payer is None or beneficiary is None:
        return errors.PersonNotFound
    if payer.status is not PersonStatus.ACTIVE:
        return errors.PersonNotActive
    if payer.scheme is not Scheme.EMPLOYEE or not payer_has_account:
        return errors.NotEmployeeInsured
    if beneficiary.scheme is not Scheme.RESIDENT:
        return errors.BeneficiaryNotResident
    if grant_id is None:
        return errors.GrantNotFound
    if rate is None:
        return errors.PremiumNotSet
    if not rate.is_open(today):
        return errors.PremiumWindowClosed
    if paid:
        return errors.PremiumAlreadyPaid
    if balance_fen is not None and balance_fen < rate.amount_fen:
        return errors.InsufficientBalance
    return None
