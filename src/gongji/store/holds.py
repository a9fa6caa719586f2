"""Holds at the till: one call each to the server-side functions of store/sql/hold.sql."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from gongji import errors
from gongji.domain.bill import Insutype, Parts
from gongji.domain.eligibility import CareScope
from gongji.domain.holds import HoldState
from gongji.domain.waterfall import Limit
from gongji.store import db
from gongji.store.settlements import TERMINAL_GUARD, BillArgs, QuoteResult, VoucherArgs, fetchrow_past_stale_peeks
from gongji.store.settlements import paid_parts as _paid

_COLUMNS = """hold_id, request_id, patient_id, authorizer_id, amount_fen, acct_pay_fen, acct_mulaid_pay_fen,
              wallet_pay_fen, psn_cash_pay_fen, mulaid_limited_by, state, created_at, expires_at, resolved_at,
              settlement_id, over_limit_fen, wholly_self_paid_fen, acct_over_limit_fen, acct_wholly_fen,
              mulaid_over_limit_fen, mulaid_wholly_fen, wallet_over_limit_fen, wallet_wholly_fen"""
# The terminal's credential is checked in the same statement, as Settle's (settlements.TERMINAL_GUARD).
_HOLD = f"""
select g.outcome, g.replayed, g.balc_fen, g.wallet_balc_fen, g.grant_cap_left_fen, g.beneficiary_cap_left_fen,
       g.care_region, g.care_scope, g.insutype, (g.held).*
  from credential c
 cross join lateral gongji_hold(
     $2, $3, c.institution_id, c.terminal_id, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
     $19) g
 where {TERMINAL_GUARD}"""
_RELEASE = f"""
select g.outcome, g.replayed, (g.held).*
  from credential c cross join lateral gongji_release_hold($2, c.institution_id, $3) g
 where {TERMINAL_GUARD}"""
_EXPIRE = f"select {_COLUMNS} from gongji_expire_holds($1, $2)"
_PENDING_STATS = """
select count(*) as pending,
       coalesce(sum(acct_pay_fen + acct_mulaid_pay_fen + wallet_pay_fen), 0)::bigint as held_fen
  from settlement_hold where state = 'PENDING'"""


@dataclass(frozen=True, slots=True)
class HoldRow:
    hold_id: uuid.UUID
    request_id: str
    patient_id: str
    authorizer_id: str | None
    amount_fen: int
    acct_pay_fen: int
    acct_mulaid_pay_fen: int
    wallet_pay_fen: int
    psn_cash_pay_fen: int
    mulaid_limited_by: Limit | None
    state: HoldState
    created_at: dt.datetime
    expires_at: dt.datetime
    resolved_at: dt.datetime | None
    settlement_id: uuid.UUID | None
    bill: Parts  # as the Quote sent it (all in scope when it sent the amount only)
    own_parts: Parts
    mutual_aid_parts: Parts
    wallet_parts: Parts

    @property
    def cash_parts(self) -> Parts:
        return self.bill - self.own_parts - self.mutual_aid_parts - self.wallet_parts

    @property
    def held_fen(self) -> int:
        """The money out of the accounts and the wallet while it is pending."""
        return self.acct_pay_fen + self.acct_mulaid_pay_fen + self.wallet_pay_fen

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> HoldRow:
        limited_by = r["mulaid_limited_by"]
        over, wholly = r["over_limit_fen"] or 0, r["wholly_self_paid_fen"] or 0
        return cls(
            r["hold_id"],
            r["request_id"],
            r["patient_id"],
            r["authorizer_id"],
            r["amount_fen"],
            r["acct_pay_fen"],
            r["acct_mulaid_pay_fen"],
            r["wallet_pay_fen"],
            r["psn_cash_pay_fen"],
            Limit(limited_by) if limited_by else None,
            HoldState(r["state"]),
            r["created_at"],
            r["expires_at"],
            r["resolved_at"],
            r["settlement_id"],
            Parts(r["amount_fen"] - over - wholly, over, wholly),
            _paid(r["acct_pay_fen"], r["acct_over_limit_fen"], r["acct_wholly_fen"]),
            _paid(r["acct_mulaid_pay_fen"], r["mulaid_over_limit_fen"], r["mulaid_wholly_fen"]),
            _paid(r["wallet_pay_fen"], r["wallet_over_limit_fen"], r["wallet_wholly_fen"]),
        )


@dataclass(frozen=True, slots=True)
class Held:
    """A hold as a Quote answers it, with what only the moment of holding knows."""

    hold: HoldRow
    replayed: bool
    balc_fen: int  # the own account's balance with the hold out of it (0 without an account)
    wallet_balc_fen: int | None  # the wallet's, likewise; None: no wallet, or the account not to be used
    grant_cap_left_fen: int | None
    beneficiary_cap_left_fen: int | None
    care_region: str | None
    care_scope: CareScope | None
    insutype: Insutype

    def as_quote(self) -> QuoteResult:
        """The hold as a Quote's answer says its split."""
        h = self.hold
        assert self.care_scope is not None
        return QuoteResult(
            h.authorizer_id,
            h.acct_pay_fen,
            h.acct_mulaid_pay_fen,
            h.psn_cash_pay_fen,
            self.balc_fen,
            h.mulaid_limited_by,
            self.grant_cap_left_fen,
            self.beneficiary_cap_left_fen,
            self.care_region,
            self.care_scope,
            h.own_parts,
            h.mutual_aid_parts,
            h.cash_parts,
            self.insutype,
            h.wallet_parts,
            self.wallet_balc_fen,
        )


async def hold(
    pool: asyncpg.Pool,
    *,
    credential_id: int,
    now: dt.datetime,
    hold_seconds: int,
    request_id: str,
    digest: bytes,
    voucher: VoucherArgs,
    patient_id: str,
    amount_fen: int,
    authorizer_id: str | None,
    use_personal_account: bool,
    bill: BillArgs,
) -> Held:
    """Hold the split of a Quote for `hold_seconds` from `now`, as the terminal of `credential_id`.
    Refusals raise and have written nothing."""
    args: tuple[object, ...] = (credential_id, now, hold_seconds, request_id, digest, *voucher.sql_args())
    args += (patient_id, amount_fen, authorizer_id, use_personal_account, *bill.sql_args())
    async with pool.acquire() as conn:
        row = await fetchrow_past_stale_peeks(conn, _HOLD, *args)
        db.known_clean(conn)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["outcome"] != "OK":
        raise errors.BY_REASON[row["outcome"]]()
    h = HoldRow.from_record(row)
    assert h.held_fen + h.psn_cash_pay_fen == h.amount_fen
    scope = row["care_scope"]
    return Held(
        h,
        row["replayed"],
        row["balc_fen"],
        row["wallet_balc_fen"],
        row["grant_cap_left_fen"],
        row["beneficiary_cap_left_fen"],
        row["care_region"],
        CareScope(scope) if scope else None,
        Insutype(row["insutype"]),
    )


async def release(
    pool: asyncpg.Pool, *, credential_id: int, now: dt.datetime, hold_id: uuid.UUID
) -> tuple[HoldRow, bool]:
    """Give a pending hold's money back; the hold as it ended, and whether it had ended before."""
    row = await db.fetchrow(pool, _RELEASE, credential_id, now, hold_id)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["outcome"] != "OK":
        raise errors.BY_REASON[row["outcome"]]()
    return HoldRow.from_record(row), row["replayed"]


async def expire_due(pool: asyncpg.Pool, now: dt.datetime, limit: int) -> list[HoldRow]:
    """Give back the money of at most `limit` pending holds past their time at `now`; the ones ended."""
    return [HoldRow.from_record(r) for r in await db.fetch(pool, _EXPIRE, now, limit)]


async def pending_stats(pool: asyncpg.Pool) -> tuple[int, int]:
    """How many holds are pending, and the money they hold."""
    r = await db.fetchrow(pool, _PENDING_STATS)
    assert r is not None
    return r["pending"], r["held_fen"]
