"""Quote and Settle: one call each to the server-side functions of store/sql/settle.sql."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gongji import errors
from gongji.domain.bill import NO_PARTS, Insutype, MedType, Parts, Reading
from gongji.domain.eligibility import CareScope
from gongji.domain.vouchers import CertType
from gongji.domain.waterfall import Limit
from gongji.store import credentials, db
from gongji.store.credentials import Kind

_QUOTE = "select * from gongji_quote($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
# The caller's credential is checked in the same statement (credentials.money_guard). The function is
# LATERAL on the credential row (it takes the institution and terminal from it), so it runs once per
# qualifying row and never when the row is gone or revoked: the institution comes from the credential,
# never from a request.
TERMINAL_GUARD = credentials.money_guard("$1", Kind.TERMINAL)
# The settlement row comes back as columns, (g.settled).*: a composite column would have the driver ask
# the database for its type on each new connection, a round trip more.
_SETTLE = f"""
select g.outcome, g.replayed, (g.settled).*, g.lock_wait_idempotency_s, g.lock_wait_voucher_s, g.lock_wait_grant_s,
       g.lock_wait_account_s
  from credential c
 cross join lateral gongji_settle(
     c.institution_id, c.terminal_id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
     $18, $19, $20) g
 where {TERMINAL_GUARD}"""


@dataclass(frozen=True, slots=True)
class QuoteResult:
    authorizer_id: str | None
    acct_pay_fen: int
    acct_mulaid_pay_fen: int
    psn_cash_pay_fen: int
    balc_fen: int
    mulaid_limited_by: Limit | None
    grant_cap_left_fen: int | None  # None: the grant has no yearly cap
    beneficiary_cap_left_fen: int | None  # None: the beneficiary's region sets no yearly cap
    care_region: str | None
    care_scope: CareScope
    own_parts: Parts  # what the own account would pay of each part of the bill
    mutual_aid_parts: Parts
    cash_parts: Parts
    insutype: Insutype
    wallet_parts: Parts = NO_PARTS  # what the patient's wallet would pay of each part
    wallet_balc_fen: int | None = None  # None: no wallet, or the account is not to be used

    @property
    def wallet_pay_fen(self) -> int:
        return self.wallet_parts.fen


@dataclass(frozen=True, slots=True)
class SettlementRow:
    settlement_id: uuid.UUID
    institution_id: str
    terminal_id: str
    request_id: str
    patient_id: str
    authorizer_id: str | None
    amount_fen: int
    acct_pay_fen: int
    acct_mulaid_pay_fen: int
    psn_cash_pay_fen: int
    balc_fen: int
    refunded_fen: int
    created_at: dt.datetime
    replayed: bool
    # The limit that made mutual aid pay less than the bill needed; None when none did.
    mulaid_limited_by: Limit | None = None
    cert_type: CertType = CertType.E_VOUCHER  # what the patient presented
    insured_region: str | None = None  # None: settled before gongji recorded where care happened
    care_region: str | None = None  # None: the institution's region is unknown (or not recorded)
    care_scope: CareScope | None = None
    # How the bill was read and its parts; what each account paid of them (the cash paid the rest).
    bill_read: Reading = Reading.AMOUNT
    bill: Parts = NO_PARTS
    own_parts: Parts = NO_PARTS
    mutual_aid_parts: Parts = NO_PARTS
    med_type: MedType | None = None
    insutype: Insutype | None = None  # None: settled before gongji recorded it
    wallet_parts: Parts = NO_PARTS  # what the patient's wallet paid of each part
    wallet_balc_fen: int | None = None  # None: no wallet, or not to be used

    @property
    def wallet_pay_fen(self) -> int:
        return self.wallet_parts.fen

    @property
    def cash_parts(self) -> Parts:
        return self.bill - self.own_parts - self.mutual_aid_parts - self.wallet_parts

    @classmethod
    def from_record(cls, r: asyncpg.Record, *, replayed: bool = False) -> SettlementRow:
        """The row of the `settlement` table (or the columns of it a query selected) as answered."""
        plain = {k: r[k] for k in _PLAIN_COLUMNS}
        over, wholly = r["over_limit_fen"], r["wholly_self_paid_fen"]
        acct_over, acct_wholly = r["acct_over_limit_fen"], r["acct_wholly_fen"]
        mulaid_over, mulaid_wholly = r["mulaid_over_limit_fen"], r["mulaid_wholly_fen"]
        return cls(
            **plain,
            replayed=replayed,
            mulaid_limited_by=Limit(r["mulaid_limited_by"]) if r["mulaid_limited_by"] else None,
            cert_type=CertType(r["cert_type"]),
            care_scope=CareScope(r["care_scope"]) if r["care_scope"] else None,
            bill_read=Reading(r["bill_read"]),
            bill=Parts(r["amount_fen"] - over - wholly, over, wholly),
            own_parts=Parts(r["acct_pay_fen"] - acct_over - acct_wholly, acct_over, acct_wholly),
            mutual_aid_parts=Parts(r["acct_mulaid_pay_fen"] - mulaid_over - mulaid_wholly, mulaid_over, mulaid_wholly),
            med_type=MedType(r["med_type"]) if r["med_type"] else None,
            insutype=Insutype(r["insutype"]) if r["insutype"] else None,
            wallet_parts=paid_parts(r["wallet_pay_fen"], r["wallet_over_limit_fen"], r["wallet_wholly_fen"]),
        )


# The settlement's columns SettlementRow takes as they are; from_record reads the others.
_PLAIN_COLUMNS = (
    "settlement_id", "institution_id", "terminal_id", "request_id", "patient_id", "authorizer_id", "amount_fen",
    "acct_pay_fen", "acct_mulaid_pay_fen", "psn_cash_pay_fen", "balc_fen", "refunded_fen", "created_at",
    "insured_region", "care_region", "wallet_balc_fen",
)  # fmt: skip
# The columns from_record reads, for a query to select.
COLUMNS = ", ".join(
    (*_PLAIN_COLUMNS, "mulaid_limited_by", "cert_type", "care_scope", "bill_read", "over_limit_fen",
     "wholly_self_paid_fen", "acct_over_limit_fen", "acct_wholly_fen", "mulaid_over_limit_fen", "mulaid_wholly_fen",
     "med_type", "insutype", "wallet_pay_fen", "wallet_over_limit_fen", "wallet_wholly_fen")
)  # fmt: skip


def _refuse(outcome: str) -> errors.GongjiError:
    return errors.BY_REASON[outcome]()


@dataclass(slots=True)
class SettleTiming:
    """What one Settle measured, for the caller to record: the store keeps no metrics. The caller hands
    in an empty one and the store fills it in as it goes, so that what was measured before an
    exception (a refusal, or a driver error) reaches the caller too."""

    # The wait for a pooled connection; None: no connection was had.
    pool_wait_s: float | None = None
    # The transaction (the gongji_settle call, retries included), connection already had; None: it raised.
    transaction_s: float | None = None
    # Runs repeated after a stale balance peek, counted as they happen: the last one included when
    # every attempt was stale and the error is raised.
    retries: int = 0
    # The lock waits gongji_settle measured (sql/settle.sql), by lock kind; None: lock not reached.
    # Empty: no row came back.
    lock_wait_s: dict[str, float | None] = field(default_factory=dict)

    def count_retry(self) -> None:
        self.retries += 1


def _lock_waits(row: asyncpg.Record) -> dict[str, float | None]:
    """The row's lock_wait_<kind>_s columns, by kind."""
    return {
        name.removeprefix("lock_wait_").removesuffix("_s"): wait_s
        for name, wait_s in row.items()
        if name.startswith("lock_wait_")
    }


# How often one Settle may run gongji_settle again after a stale balance peek (each retry re-reads).
SETTLE_ATTEMPTS_MAX = 3


async def fetchrow_past_stale_peeks(
    conn: asyncpg.Connection | PoolConnectionProxy,
    query: str,
    *args: object,
    on_retry: Callable[[], None] = lambda: None,
) -> asyncpg.Record | None:
    """Run a statement that locks accounts with gongji_lock_accounts (gongji_settle, gongji_hold), again
    when it found its balance peek stale where the key order forbade locking the authorizer late (see
    sql/settle.sql): nothing was written, and it re-reads. `on_retry` counts each run again."""
    for attempt in range(1, SETTLE_ATTEMPTS_MAX + 1):
        try:
            row: asyncpg.Record | None = await conn.fetchrow(query, *args)
            return row
        except asyncpg.exceptions.SerializationError:
            on_retry()
            if attempt == SETTLE_ATTEMPTS_MAX:
                raise
    raise AssertionError("unreachable")


async def _settle_row(pool: asyncpg.Pool, timing: SettleTiming, *args: object) -> asyncpg.Record:
    """Run gongji_settle on a connection of its own, timing the wait for the connection apart from the
    transaction itself (a busy pool and slow locks call for different fixes). No row: the credential
    (the first argument) is unknown or revoked, and nothing was written."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        acquired = time.perf_counter()
        timing.pool_wait_s = acquired - started
        row = await fetchrow_past_stale_peeks(conn, _SETTLE, *args, on_retry=timing.count_retry)
        db.known_clean(conn)
        timing.transaction_s = time.perf_counter() - acquired
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    timing.lock_wait_s = _lock_waits(row)
    return row


@dataclass(frozen=True, slots=True)
class VoucherArgs:
    """What the patient presented, as the settlement functions take it (gongji_presented_refusal): a
    genuine e-voucher's claims, or a card read at the counter, which has no id, expiry, binding or pick."""

    voucher_id: uuid.UUID | None
    names_patient: bool
    expires_at: dt.datetime | None
    binding_id: int | None
    grant_id: int | None = None  # the grant the patient picked in the app
    cert_type: CertType = CertType.E_VOUCHER

    @classmethod
    def card(cls, cert_type: CertType, names_patient: bool) -> VoucherArgs:
        return cls(None, names_patient, None, None, None, cert_type)

    def sql_args(self) -> tuple[uuid.UUID | None, bool, dt.datetime | None, int | None, int | None, str]:
        """In the order gongji_quote and gongji_settle take them, after their own leading arguments."""
        return self.voucher_id, self.names_patient, self.expires_at, self.binding_id, self.grant_id, self.cert_type


@dataclass(frozen=True, slots=True)
class BillArgs:
    """The bill beyond its amount, as the settlement functions take it: its parts (None: sent as the amount
    only), its med_type and the terminal's insutype (None: not said)."""

    parts: Parts | None = None
    med_type: MedType | None = None
    insutype: Insutype | None = None

    def sql_args(self) -> tuple[int | None, int | None, str | None, str | None]:
        """In the order gongji_quote and gongji_settle take them, last."""
        over = None if self.parts is None else self.parts.over_limit_fen
        wholly = None if self.parts is None else self.parts.wholly_self_paid_fen
        return over, wholly, self.med_type, self.insutype


AMOUNT_ONLY = BillArgs()


class Capture(NamedTuple):
    """A hold a Settle captures, as gongji_settle takes it, last: its id, the digest of what the Settle
    asks without the hold (which must be the holding Quote's), and the service's clock."""

    hold_id: uuid.UUID | None
    content_digest: bytes | None
    now: dt.datetime | None


NO_CAPTURE = Capture(None, None, None)


async def quote(
    pool: asyncpg.Pool,
    *,
    institution_id: str,
    voucher: VoucherArgs,
    patient_id: str,
    amount_fen: int,
    authorizer_id: str | None,
    use_personal_account: bool,
    bill: BillArgs = AMOUNT_ONLY,
) -> QuoteResult:
    row = await db.fetchrow(
        pool,
        _QUOTE,
        institution_id,
        *voucher.sql_args(),
        patient_id,
        amount_fen,
        authorizer_id,
        use_personal_account,
        *bill.sql_args(),
    )
    assert row is not None
    if row["outcome"] != "OK":
        raise _refuse(row["outcome"])
    limited_by = row["mulaid_limited_by"]
    parts = bill.parts or Parts(amount_fen)
    own = paid_parts(row["acct_pay_fen"], row["acct_over_limit_fen"], row["acct_wholly_fen"])
    mutual_aid = paid_parts(row["acct_mulaid_pay_fen"], row["mulaid_over_limit_fen"], row["mulaid_wholly_fen"])
    wallet = paid_parts(row["wallet_pay_fen"], row["wallet_over_limit_fen"], row["wallet_wholly_fen"])
    result = QuoteResult(
        row["authorizer_id"],
        row["acct_pay_fen"],
        row["acct_mulaid_pay_fen"],
        row["psn_cash_pay_fen"],
        row["balc_fen"],
        Limit(limited_by) if limited_by else None,
        row["grant_cap_left_fen"],
        row["beneficiary_cap_left_fen"],
        row["care_region"],
        CareScope(row["care_scope"]),
        own,
        mutual_aid,
        parts - own - mutual_aid - wallet,
        Insutype(row["insutype"]),
        wallet,
        row["wallet_balc_fen"],
    )
    assert (
        result.acct_pay_fen + result.acct_mulaid_pay_fen + result.wallet_pay_fen + result.psn_cash_pay_fen == amount_fen
    )
    assert min(result.cash_parts.in_scope_fen, result.cash_parts.over_limit_fen) >= 0
    assert result.cash_parts.wholly_self_paid_fen >= 0 and result.cash_parts.fen == result.psn_cash_pay_fen
    return result


def paid_parts(total_fen: int, over_limit_fen: int, wholly_fen: int) -> Parts:
    """What one source paid, by part: the part within the scope is the rest of its total."""
    return Parts(total_fen - over_limit_fen - wholly_fen, over_limit_fen, wholly_fen)


async def settle(
    pool: asyncpg.Pool,
    *,
    credential_id: int,
    request_id: str,
    digest: bytes,
    voucher: VoucherArgs,
    patient_id: str,
    amount_fen: int,
    authorizer_id: str | None,
    use_personal_account: bool,
    timing: SettleTiming,
    bill: BillArgs = AMOUNT_ONLY,
    capture: Capture | None = None,
) -> SettlementRow:
    """Settle in one transaction and one round trip, as the terminal of `credential_id` (which must
    still be live: checked in that transaction); with `capture`, take exactly the hold's split. Refusals
    raise and have written nothing. What was measured is in `timing`, whether this returns or raises."""
    row = await _settle_row(
        pool,
        timing,
        credential_id,
        request_id,
        digest,
        *voucher.sql_args(),
        patient_id,
        amount_fen,
        authorizer_id,
        use_personal_account,
        *bill.sql_args(),
        *(capture or NO_CAPTURE),
    )
    if row["outcome"] != "OK":
        raise _refuse(row["outcome"])
    s = SettlementRow.from_record(row, replayed=row["replayed"])
    # Invariants where money moves, checked after the read (TIGER_STYLE).
    assert s.acct_pay_fen + s.acct_mulaid_pay_fen + s.wallet_pay_fen + s.psn_cash_pay_fen == s.amount_fen
    assert min(s.acct_pay_fen, s.acct_mulaid_pay_fen, s.wallet_pay_fen, s.psn_cash_pay_fen, s.balc_fen) >= 0
    assert s.wallet_balc_fen is None or s.wallet_balc_fen >= 0
    assert (s.authorizer_id is None) == (s.acct_mulaid_pay_fen == 0)
    cash = s.cash_parts
    assert min(cash.in_scope_fen, cash.over_limit_fen, cash.wholly_self_paid_fen) >= 0
    assert cash.fen == s.psn_cash_pay_fen
    return s
