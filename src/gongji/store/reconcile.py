"""Reconciliation against the institution's books (3201 CheckTotals, 3202 CheckDetail): gongji's side.

Both read one institution's rows of a range of calendar days in China, in one read-only snapshot, and
nothing else: what gongji answers is compared in gongji.domain.reconcile.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass

import asyncpg

from gongji import limits
from gongji.domain.bill import CLEARING_CLASS
from gongji.domain.reconcile import ZERO, Amounts, DetailKind, Figures, Key, Line, Row


class Grouping(enum.Enum):
    ALL = "ALL"
    INSUTYPE = "INSUTYPE"
    CLEARING_CLASS = "CLEARING_CLASS"


# A settlement's group, per grouping, as an expression over `s` (the settlement): the one place that
# says how a group is derived. Both read what the settlement recorded (migration 0015):
# - insutype: the recorded one; a settlement made before gongji recorded it has none, and falls back
#   to the patient's scheme now (gongji_insutype: EMPLOYEE 310, RESIDENT 390), read only for such rows
#   (coalesce evaluates its second argument only when the first is null), so no join of the person;
# - clearing class: from the recorded med_type by domain.bill.CLEARING_CLASS; "" without one (every
#   settlement made before 0015, and those whose terminal did not say).
_INSUTYPE_OF = """coalesce(s.insutype,
                (select gongji_insutype(p.scheme) from person p where p.person_id = s.patient_id))"""


def clearing_class_sql(column: str) -> str:
    """The SQL expression of the clearing class of a settlement whose med_type is `column`, written from
    domain.bill.CLEARING_CLASS: the mapping has one live place, and this is generated from it."""
    whens = " ".join(f"when '{m.value}' then '{c}'" for m, c in sorted(CLEARING_CLASS.items()))
    return f"(case {column} {whens} else '' end)"


_GROUP_OF = {
    Grouping.ALL: "''",
    Grouping.INSUTYPE: _INSUTYPE_OF,
    Grouping.CLEARING_CLASS: clearing_class_sql("s.med_type"),
}
_SUMS = """count(*) as count, coalesce(sum(x.amount_fen), 0)::bigint as amount_fen,
       coalesce(sum(x.acct_pay_fen), 0)::bigint as acct_pay_fen,
       coalesce(sum(x.acct_mulaid_pay_fen), 0)::bigint as acct_mulaid_pay_fen,
       coalesce(sum(x.psn_cash_pay_fen), 0)::bigint as psn_cash_pay_fen,
       coalesce(sum(x.wallet_pay_fen), 0)::bigint as wallet_pay_fen"""
# A refund's group is its settlement's: joined only where the group reads it.
_REFUNDED = "join settlement s on s.settlement_id = x.settlement_id"
# Settlements created and refunds made in [start, end) (the institution-and-day indexes), by group.
_SETTLED_BY_GROUP = {
    g: f"""
select {group} as grp, {_SUMS}
  from settlement s
 where s.institution_id = $1 and s.created_at >= $2 and s.created_at < $3
 group by 1""".replace("x.", "s.")
    for g, group in _GROUP_OF.items()
}
_REFUNDED_BY_GROUP = {
    g: f"""
select {group} as grp, {_SUMS}
  from refund x {_REFUNDED if g is not Grouping.ALL else ""}
 where x.institution_id = $1 and x.created_at >= $2 and x.created_at < $3
 group by 1"""
    for g, group in _GROUP_OF.items()
}

# Reversals of refunds made in [start, end) (by the reversal's day), with the amounts they took back.
_REFUND_REVERSED_BY_GROUP = {
    g: f"""
select {group} as grp, {_SUMS}
  from refund_reversal v join refund x on x.refund_id = v.refund_id {_REFUNDED if g is not Grouping.ALL else ""}
 where v.institution_id = $1 and v.created_at >= $2 and v.created_at < $3
 group by 1"""
    for g, group in _GROUP_OF.items()
}


async def totals(
    pool: asyncpg.Pool, institution_id: str, start: dt.datetime, end: dt.datetime, grouping: Grouping
) -> dict[str, Line]:
    """Figures by group of one institution's settlements created, refunds made and refunds reversed in
    [start, end), from one snapshot."""
    sides = []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for queries in (_SETTLED_BY_GROUP, _REFUNDED_BY_GROUP, _REFUND_REVERSED_BY_GROUP):
            sides.append(
                {r["grp"]: _figures(r) for r in await conn.fetch(queries[grouping], institution_id, start, end)}
            )
    for figures in (f for side in sides for f in side.values()):
        assert figures.adds_up()
    settled, refunded, reversed_ = sides
    groups = settled.keys() | refunded.keys() | reversed_.keys()
    return {g: Line(settled.get(g, ZERO), refunded.get(g, ZERO), reversed_.get(g, ZERO)) for g in groups}


def _figures(r: asyncpg.Record) -> Figures:
    return Figures(
        r["count"], r["amount_fen"], r["acct_pay_fen"], r["acct_mulaid_pay_fen"], r["psn_cash_pay_fen"],
        r["wallet_pay_fen"],
    )  # fmt: skip


# One kind's rows of the days [$2, $3] whose request ids lie in ($4, $5], in byte order, at most $6.
# Each day is its own range of the (institution, China day, request id) indexes of migration 0012, so a
# call reads at most days x $6 index entries, whatever the institution's history and however wide the
# stretch of ids.
_STRETCH_COLUMNS = """x.amount_fen, x.acct_pay_fen, x.acct_mulaid_pay_fen, x.psn_cash_pay_fen, x.wallet_pay_fen,
            x.settlement_id, x.created_at"""
_SETTLEMENT_STRETCH = f"""
select y.* from generate_series($2::date, $3::date, interval '1 day') as g (day)
 cross join lateral (
     select x.request_id collate "C" as request_id, {_STRETCH_COLUMNS}
       from settlement x
      where x.institution_id = $1 and (x.created_at at time zone 'Asia/Shanghai')::date = g.day::date
        and (x.request_id collate "C") > $4 and (x.request_id collate "C") <= $5
      order by (x.request_id collate "C") limit $6) y
 order by y.request_id limit $6"""
_REFUND_STRETCH = f"""
select y.* from generate_series($2::date, $3::date, interval '1 day') as g (day)
 cross join lateral (
     select x.request_id collate "C" as request_id, {_STRETCH_COLUMNS}
       from refund x
      where x.institution_id = $1 and x.kind = $7
        and (x.created_at at time zone 'Asia/Shanghai')::date = g.day::date
        and (x.request_id collate "C") > $4 and (x.request_id collate "C") <= $5
      order by (x.request_id collate "C") limit $6) y
 order by y.request_id limit $6"""
_REFUND_REVERSAL_STRETCH = f"""
select y.* from generate_series($2::date, $3::date, interval '1 day') as g (day)
 cross join lateral (
     select v.request_id collate "C" as request_id, {_STRETCH_COLUMNS.replace("x.created_at", "v.created_at")}
       from refund_reversal v join refund x on x.refund_id = v.refund_id
      where v.institution_id = $1 and (v.created_at at time zone 'Asia/Shanghai')::date = g.day::date
        and (v.request_id collate "C") > $4 and (v.request_id collate "C") <= $5
      order by (v.request_id collate "C") limit $6) y
 order by y.request_id limit $6"""
_REFUND_KIND = {DetailKind.CANCEL: "CANCEL", DetailKind.REVERSAL: "REVERSAL"}
# Below and above every request id (1 to 64 of A-Z a-z 0-9 . _ : -, all below '~' in byte order).
_BELOW_ALL = ""
_ABOVE_ALL = "~"


@dataclass(frozen=True, slots=True)
class DetailRecord:
    row: Row
    settlement_id: uuid.UUID
    created_at: dt.datetime


async def stretch(
    pool: asyncpg.Pool,
    institution_id: str,
    days: tuple[dt.date, dt.date],
    after: Key | None,
    through: Key | None,
    limit: int,
) -> list[DetailRecord]:
    """Up to `limit` of gongji's rows of the institution and days with keys in (after, through], in key
    order (None: the start or the end of the key space); from one snapshot."""
    assert 0 < limit <= limits.RECONCILE_DETAIL_GONGJI_ROWS_MAX + 1
    first = after[0] if after else DetailKind.SETTLEMENT
    last = through[0] if through else DetailKind.REFUND_REVERSAL
    found: list[DetailRecord] = []
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for kind in (k for k in DetailKind if first <= k <= last and len(found) < limit):
            low = after[1] if after and kind == after[0] else _BELOW_ALL
            high = through[1] if through and kind == through[0] else _ABOVE_ALL
            args: tuple[object, ...] = (institution_id, *days, low, high, limit - len(found))
            if kind is DetailKind.SETTLEMENT:
                rows = await conn.fetch(_SETTLEMENT_STRETCH, *args)
            elif kind is DetailKind.REFUND_REVERSAL:
                rows = await conn.fetch(_REFUND_REVERSAL_STRETCH, *args)
            else:
                rows = await conn.fetch(_REFUND_STRETCH, *args, _REFUND_KIND[kind])
            found += [_record(kind, r) for r in rows]
    assert len(found) <= limit
    return found


def _record(kind: DetailKind, r: asyncpg.Record) -> DetailRecord:
    amounts = Amounts(
        r["amount_fen"], r["acct_pay_fen"], r["acct_mulaid_pay_fen"], r["psn_cash_pay_fen"], r["wallet_pay_fen"]
    )
    assert amounts.adds_up()
    return DetailRecord(Row((kind, r["request_id"]), amounts), r["settlement_id"], r["created_at"])
