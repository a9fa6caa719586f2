"""Resident premiums paid from a close relative's personal account (国办发〔2024〕38号 (a)): the rates,
the payment and its refund (one call each to the functions of store/sql/premium.sql), the report."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from gongji import errors
from gongji.domain.premium import PremiumRate
from gongji.store import credentials, db
from gongji.store.credentials import Kind

# Money calls: the caller's credential is checked in the same statement (credentials.money_guard), and
# the function takes the credential's id from its row, so it runs LATERAL on that row: once when the
# credential is live, never when it is revoked or gone (no row: refused, nothing written).
_PAY = f"""
select g.* from credential c
 cross join lateral gongji_pay_premium(c.credential_id, $2, $3, $4, $5, $6, $7) g
 where {credentials.money_guard("$1", Kind.APP)}"""
_REFUND = f"""
select g.* from credential c
 cross join lateral gongji_refund_premium(c.credential_id, $2, $3) g
 where {credentials.money_guard("$1", Kind.OPERATOR)}"""

_RATE_COLUMNS = "region_key, year, amount_fen, opens_on, closes_on, updated_at"
_UPSERT_RATE = f"""
insert into premium_rate (region_key, year, amount_fen, opens_on, closes_on) values ($1, $2, $3, $4, $5)
on conflict (region_key, year) do update
   set amount_fen = excluded.amount_fen, opens_on = excluded.opens_on, closes_on = excluded.closes_on,
       updated_at = now()
returning {_RATE_COLUMNS}"""
_LIST_RATES = f"""
select {_RATE_COLUMNS} from premium_rate where $1::integer is null or year = $1
 order by year, region_key limit $2"""

# Per China-calendar day and 统筹区: payments by the day they were made, refunds by the day of the refund
# (a refund of an earlier day's payment counts on its own day). [$1, $2) is the range of days in UTC
# instants; $3 a province or 统筹区 prefix ('' for all); keyset pagination on (day, region_code).
_REPORT = """
with paid as (
    select (created_at at time zone 'Asia/Shanghai')::date as day, region_code, count(*) as n,
           sum(amount_fen)::bigint as fen
      from premium_payment
     where created_at >= $1 and created_at < $2 and left(region_code, length($3)) = $3
     group by 1, 2
), refunded as (
    select (refunded_at at time zone 'Asia/Shanghai')::date as day, region_code, count(*) as n,
           sum(amount_fen)::bigint as fen
      from premium_payment
     where refunded_at >= $1 and refunded_at < $2 and left(region_code, length($3)) = $3
     group by 1, 2
)
select day, region_code, coalesce(p.n, 0) as payment_count, coalesce(p.fen, 0) as paid_fen,
       coalesce(r.n, 0) as refund_count, coalesce(r.fen, 0) as refunded_fen
  from paid p full join refunded r using (day, region_code)
 where (day, region_code) > ($4::date, $5::text)
 order by day, region_code
 limit $6"""


@dataclass(frozen=True, slots=True)
class RateRow:
    rate: PremiumRate
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment_id: uuid.UUID
    request_id: str
    payer_id: str
    beneficiary_id: str
    grant_id: int
    year: int
    region_key: str
    region_code: str
    amount_fen: int
    created_at: dt.datetime
    refunded_at: dt.datetime | None
    refund_reason: str | None


@dataclass(frozen=True, slots=True)
class Paid:
    """A payment or a refund as answered: the payment as it now is, the payer's balance right after the
    first answer (a replay answers the same), and whether this answer is a replay."""

    payment: PaymentRow
    balance_fen: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class ReportRow:
    day: dt.date
    region_code: str
    payment_count: int
    paid_fen: int
    refund_count: int
    refunded_fen: int


def _rate_row(r: asyncpg.Record) -> RateRow:
    rate = PremiumRate(r["region_key"], r["year"], r["amount_fen"], r["opens_on"], r["closes_on"])
    return RateRow(rate, r["updated_at"])


def _paid(row: asyncpg.Record) -> Paid:
    payment = PaymentRow(**{k: row[k] for k in PaymentRow.__dataclass_fields__})
    paid = Paid(payment, row["balance_fen"], row["replayed"])
    # Invariants where money moves, checked after the read (TIGER_STYLE).
    assert payment.amount_fen > 0 and paid.balance_fen >= 0
    assert (payment.refunded_at is None) == (payment.refund_reason is None)
    return paid


async def set_rate(pool: asyncpg.Pool, rate: PremiumRate, max_rates: int) -> RateRow | None:
    """Store the rate (a new one, or a change of its amount and window); None when it would be one
    more than `max_rates`. A change applies to payments from now on; payments made keep their amount."""
    async with pool.acquire() as conn, conn.transaction():
        # Rates change a few times a year: one at a time keeps the count exact.
        await conn.execute("lock table premium_rate in share row exclusive mode")
        exists = await conn.fetchval(
            "select 1 from premium_rate where region_key = $1 and year = $2", rate.region_key, rate.year
        )
        if not exists and await conn.fetchval("select count(*) from premium_rate") >= max_rates:
            return None
        row = await conn.fetchrow(
            _UPSERT_RATE, rate.region_key, rate.year, rate.amount_fen, rate.opens_on, rate.closes_on
        )
        assert row is not None
        return _rate_row(row)


async def list_rates(pool: asyncpg.Pool, year: int | None, limit: int) -> list[RateRow]:
    """The rates of `year` (None: of every year), by year and key, at most `limit`."""
    return [_rate_row(r) for r in await db.fetch(pool, _LIST_RATES, year, limit)]


def _refusal(row: asyncpg.Record, year: int) -> errors.GongjiError:
    """The refusal the function answered, with what the caller needs to know to act on it."""
    outcome = row["outcome"]
    if outcome == "PREMIUM_WINDOW_CLOSED":
        return errors.PremiumWindowClosed(
            f"the {year} premium of the beneficiary's region is collected from {row['opens_on']} to"
            f" {row['closes_on']} (China's calendar days, both included)"
        )
    messages = {
        "PREMIUM_NOT_SET": f"no {year} premium is set for the beneficiary's 统筹区 or province",
        "PREMIUM_ALREADY_PAID": f"the beneficiary's {year} premium is paid already",
        "INSUFFICIENT_BALANCE": "the payer's account holds less than the premium, which it pays whole or not at all",
        "BENEFICIARY_NOT_RESIDENT": "a premium is paid only for a resident-insured person",
        "GRANT_NOT_FOUND": "the payer has no live mutual-aid grant to the beneficiary",
    }
    return errors.BY_REASON[outcome](messages.get(outcome, ""))


async def pay(
    pool: asyncpg.Pool,
    *,
    credential_id: int,
    request_id: str,
    digest: bytes,
    payer_id: str,
    beneficiary_id: str,
    year: int,
    today: dt.date,
) -> Paid:
    """PayPremium in one transaction and one round trip, as the app backend of `credential_id` (which
    must still be live: checked in that transaction). `today` is China's calendar day. Refusals raise
    and have written nothing."""
    row = await db.fetchrow(pool, _PAY, credential_id, request_id, digest, payer_id, beneficiary_id, year, today)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["outcome"] != "OK":
        raise _refusal(row, year)
    return _paid(row)


async def refund(pool: asyncpg.Pool, *, credential_id: int, payment_id: uuid.UUID, reason: str) -> Paid:
    """RefundPremium in one transaction and one round trip, as the operator of `credential_id`. A
    payment refunded before is answered as it is, replayed, and nothing moves."""
    row = await db.fetchrow(pool, _REFUND, credential_id, payment_id, reason)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["outcome"] != "OK":
        raise errors.BY_REASON[row["outcome"]]("no premium payment with this id")
    paid = _paid(row)
    assert paid.payment.refunded_at is not None
    return paid


async def report(
    pool: asyncpg.Pool,
    *,
    start: dt.datetime,
    end: dt.datetime,
    region_prefix: str,
    after: tuple[dt.date, str] | None,
    limit: int,
) -> list[ReportRow]:
    """The days of [start, end) with payments or refunds, per 统筹区 whose code starts with
    `region_prefix`, ordered by (day, region_code), after `after`, at most `limit` rows."""
    after_day, after_region = after or (dt.date.min, "")
    rows = await db.fetch(pool, _REPORT, start, end, region_prefix, after_day, after_region, limit)
    return [ReportRow(**dict(r)) for r in rows]
