"""Refunds (2208), reversals (2601) and reading settlements back: the money lifecycle after Settle."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from gongji import errors
from gongji.domain.eligibility import CareScope
from gongji.store import db, settlements
from gongji.store.settlements import TERMINAL_GUARD, SettlementRow

# As for Settle (see gongji.store.settlements): the credential is checked in the same statement, and
# the function, LATERAL on its row, runs only when the credential is live. No row: refused.
_CANCEL = f"""
select g.* from credential c cross join lateral gongji_cancel(c.institution_id, $2, $3, $4, $5) g
 where {TERMINAL_GUARD}"""
_REVERSE = f"""
select g.* from credential c cross join lateral gongji_reverse(c.institution_id, $2) g
 where {TERMINAL_GUARD}"""
_REVERSE_REFUND = f"""
select g.* from credential c cross join lateral gongji_reverse_refund(c.institution_id, $2) g
 where {TERMINAL_GUARD}"""

_SETTLEMENT_COLUMNS = f"{settlements.COLUMNS}, reversed_at"
_BY_ID = f"select {_SETTLEMENT_COLUMNS} from settlement where settlement_id = $1"
_BY_REQUEST = f"select {_SETTLEMENT_COLUMNS} from settlement where institution_id = $1 and request_id = $2"
_REFUNDS_OF = """
select refund_id, request_id, settlement_id, kind, amount_fen, acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen,
       created_at, reversed_at, wallet_pay_fen
  from refund where settlement_id = $1 order by created_at, refund_id"""


@dataclass(frozen=True, slots=True)
class RefundRow:
    refund_id: uuid.UUID
    request_id: str
    settlement_id: uuid.UUID
    kind: str
    amount_fen: int
    acct_pay_fen: int
    acct_mulaid_pay_fen: int
    psn_cash_pay_fen: int
    created_at: dt.datetime
    reversed_at: dt.datetime | None  # a CANCEL reversed in its turn: no longer in refunded_fen
    wallet_pay_fen: int = 0  # given back to the patient's wallet


@dataclass(frozen=True, slots=True)
class SettlementView:
    settlement: SettlementRow
    reversed_at: dt.datetime | None
    refunds: list[RefundRow]


async def _view(pool: asyncpg.Pool, query: str, *args: object) -> SettlementView | None:
    """The settlement and its refunds from one snapshot, so a refund committing in between cannot
    make them disagree."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(query, *args)
        if row is None:
            return None
        refunds = [RefundRow(**dict(r)) for r in await conn.fetch(_REFUNDS_OF, row["settlement_id"])]
    view = SettlementView(SettlementRow.from_record(row), row["reversed_at"], refunds)
    s = view.settlement
    assert s.refunded_fen == sum(r.amount_fen for r in refunds if r.reversed_at is None) <= s.amount_fen
    return view


async def get_by_id(pool: asyncpg.Pool, settlement_id: uuid.UUID) -> SettlementView | None:
    return await _view(pool, _BY_ID, settlement_id)


async def get_by_request(pool: asyncpg.Pool, institution_id: str, request_id: str) -> SettlementView | None:
    return await _view(pool, _BY_REQUEST, institution_id, request_id)


async def cancel(
    pool: asyncpg.Pool,
    *,
    credential_id: int,
    request_id: str,
    digest: bytes,
    settlement_id: uuid.UUID,
    amount_fen: int,
) -> tuple[uuid.UUID, bool]:
    """Refund in one transaction as the terminal of `credential_id`, for its institution; return
    (refund id, replayed). Refusals, a revoked credential's too, raise and wrote nothing."""
    row = await db.fetchrow(pool, _CANCEL, credential_id, request_id, digest, settlement_id, amount_fen)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["outcome"] != "OK":
        raise errors.BY_REASON[row["outcome"]]()
    refund_id: uuid.UUID = row["refund_id"]
    return refund_id, row["replayed"]


async def reverse(pool: asyncpg.Pool, *, credential_id: int, request_id: str) -> tuple[uuid.UUID | None, bool]:
    """Reverse by the original request id, as the terminal of `credential_id` for its institution;
    return the undone settlement's id (None when nothing had been committed: the id is then refused to
    a late original) and whether this repeats a reversal. A revoked credential is refused, unwritten."""
    row = await db.fetchrow(pool, _REVERSE, credential_id, request_id)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    assert row["outcome"] == "OK"
    settlement_id: uuid.UUID | None = row["settlement_id"]
    assert row["undone"] == (settlement_id is not None)
    return settlement_id, row["replayed"]


async def reverse_refund(
    pool: asyncpg.Pool, *, credential_id: int, request_id: str
) -> tuple[uuid.UUID | None, uuid.UUID | None, bool]:
    """Reverse a Cancel by its request id, as the terminal of `credential_id` for its institution;
    return (settlement id, refund id) of the refund taken back (both None when no Cancel had been
    committed under that id: the id is then refused to a late Cancel) and whether this repeats a
    reversal. Refusals (REFUND_ALREADY_SPENT, ALREADY_REVERSED), a revoked credential's too, raise and
    wrote nothing."""
    row = await db.fetchrow(pool, _REVERSE_REFUND, credential_id, request_id)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["outcome"] != "OK":
        raise errors.BY_REASON[row["outcome"]]()
    settlement_id: uuid.UUID | None = row["settlement_id"]
    refund_id: uuid.UUID | None = row["refund_id"]
    assert row["undone"] == (refund_id is not None) == (settlement_id is not None)
    return settlement_id, refund_id, row["replayed"]


# Reconciliation (3201/3202): one institution, one calendar day [start, end).
_DAY_SETTLEMENTS = """
select count(*) as settlement_count, coalesce(sum(amount_fen), 0)::bigint as amount_fen,
       coalesce(sum(acct_pay_fen), 0)::bigint as acct_pay_fen,
       coalesce(sum(acct_mulaid_pay_fen), 0)::bigint as acct_mulaid_pay_fen,
       coalesce(sum(psn_cash_pay_fen), 0)::bigint as psn_cash_pay_fen,
       coalesce(sum(wallet_pay_fen), 0)::bigint as wallet_pay_fen
  from settlement where institution_id = $1 and created_at >= $2 and created_at < $3"""
_DAY_REFUNDS = """
select count(*) as refund_count,
       (select count(*) from reversal v
         where v.institution_id = $1 and v.settlement_id is not null and v.created_at >= $2 and v.created_at < $3)
           as reversal_count,
       coalesce(sum(amount_fen), 0)::bigint as refunded_fen,
       coalesce(sum(acct_pay_fen), 0)::bigint as refund_acct_pay_fen,
       coalesce(sum(acct_mulaid_pay_fen), 0)::bigint as refund_acct_mulaid_pay_fen,
       coalesce(sum(psn_cash_pay_fen), 0)::bigint as refund_psn_cash_pay_fen,
       coalesce(sum(wallet_pay_fen), 0)::bigint as refund_wallet_pay_fen
  from refund where institution_id = $1 and created_at >= $2 and created_at < $3"""
# Reversals of refunds made that day, by the day of the reversal: a reversed refund stays in its own
# day's refund totals above, so that a day already reconciled never changes.
_DAY_REFUND_REVERSALS = """
select count(*) as refund_reversal_count,
       coalesce(sum(r.amount_fen), 0)::bigint as refund_reversed_fen,
       coalesce(sum(r.acct_pay_fen), 0)::bigint as refund_reversed_acct_pay_fen,
       coalesce(sum(r.acct_mulaid_pay_fen), 0)::bigint as refund_reversed_acct_mulaid_pay_fen,
       coalesce(sum(r.psn_cash_pay_fen), 0)::bigint as refund_reversed_psn_cash_pay_fen,
       coalesce(sum(r.wallet_pay_fen), 0)::bigint as refund_reversed_wallet_pay_fen
  from refund_reversal v join refund r on r.refund_id = v.refund_id
 where v.institution_id = $1 and v.created_at >= $2 and v.created_at < $3"""
# Keyset pagination on (created_at, settlement_id): each page is one index range, whatever the day's size.
_DAY_PAGE = f"""
select {_SETTLEMENT_COLUMNS} from settlement
 where institution_id = $1 and created_at >= $2 and created_at < $3 and (created_at, settlement_id) > ($4, $5)
 order by created_at, settlement_id limit $6"""
_REFUNDS_OF_MANY = """
select refund_id, request_id, settlement_id, kind, amount_fen, acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen,
       created_at, reversed_at, wallet_pay_fen
  from refund where settlement_id = any($1::uuid[]) order by created_at, refund_id"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


_INSTITUTION_EXISTS = "select exists (select 1 from institution where institution_id = $1)"


async def institution_exists(pool: asyncpg.Pool, institution_id: str) -> bool:
    return bool(await db.fetchval(pool, _INSTITUTION_EXISTS, institution_id))


async def day_totals(pool: asyncpg.Pool, institution_id: str, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    settled = await db.fetchrow(pool, _DAY_SETTLEMENTS, institution_id, start, end)
    refunded = await db.fetchrow(pool, _DAY_REFUNDS, institution_id, start, end)
    unrefunded = await db.fetchrow(pool, _DAY_REFUND_REVERSALS, institution_id, start, end)
    assert settled is not None
    assert refunded is not None
    assert unrefunded is not None
    totals = {**dict(settled), **dict(refunded), **dict(unrefunded)}
    sources = ("acct_pay_fen", "acct_mulaid_pay_fen", "wallet_pay_fen", "psn_cash_pay_fen")
    assert sum(totals[k] for k in sources) == totals["amount_fen"]
    assert sum(totals[f"refund_{k}"] for k in sources) == totals["refunded_fen"]
    assert sum(totals[f"refund_reversed_{k}"] for k in sources) == totals["refund_reversed_fen"]
    return totals


_DAY_BY_CARE = """
select care_scope, count(*) as settlement_count, sum(amount_fen)::bigint as amount_fen,
       sum(acct_pay_fen)::bigint as acct_pay_fen, sum(acct_mulaid_pay_fen)::bigint as acct_mulaid_pay_fen,
       sum(psn_cash_pay_fen)::bigint as psn_cash_pay_fen, sum(wallet_pay_fen)::bigint as wallet_pay_fen
  from settlement where institution_id = $1 and created_at >= $2 and created_at < $3
 group by care_scope order by care_scope nulls first"""


async def day_care_totals(
    pool: asyncpg.Pool, institution_id: str, start: dt.datetime, end: dt.datetime
) -> list[tuple[CareScope | None, dict[str, int]]]:
    """The day's settlements by care scope (None: made before gongji recorded it), a scope per line."""
    rows = await db.fetch(pool, _DAY_BY_CARE, institution_id, start, end)
    return [
        (CareScope(r["care_scope"]) if r["care_scope"] else None, {k: v for k, v in r.items() if k != "care_scope"})
        for r in rows
    ]


async def day_page(
    pool: asyncpg.Pool,
    institution_id: str,
    start: dt.datetime,
    end: dt.datetime,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[SettlementView]:
    """Up to `limit` settlements of the day after the cursor `after`, oldest first, with their refunds."""
    after_at, after_id = after or (_EPOCH, uuid.UUID(int=0))
    rows = await db.fetch(pool, _DAY_PAGE, institution_id, start, end, after_at, after_id, limit)
    refunds: dict[uuid.UUID, list[RefundRow]] = {r["settlement_id"]: [] for r in rows}
    for r in await db.fetch(pool, _REFUNDS_OF_MANY, list(refunds)):
        refunds[r["settlement_id"]].append(RefundRow(**dict(r)))
    return [SettlementView(SettlementRow.from_record(r), r["reversed_at"], refunds[r["settlement_id"]]) for r in rows]
