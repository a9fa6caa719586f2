"""A person's ledger entries (交易记录), newest first, a page at a time."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from gongji.store import db

# Keyset pagination on entry_id (the ledger_entry_person index): newest first, below the cursor. A
# premium's entries with the year paid for (the payment's key: one row each).
_PAGE = """
select l.entry_id, l.amount_fen, l.balance_after_fen, l.kind, l.settlement_id, l.credit_id, l.refund_id,
       l.premium_payment_id, l.transfer_id, l.counterpart_id, l.note, l.created_at, p.year as premium_year
  from ledger_entry l left join premium_payment p on p.payment_id = l.premium_payment_id
 where l.person_id = $1 and l.entry_id < $2 order by l.entry_id desc limit $3"""

_NEWEST = 2**63 - 1


@dataclass(frozen=True, slots=True)
class EntryRow:
    entry_id: int
    amount_fen: int
    balance_after_fen: int
    kind: str
    settlement_id: uuid.UUID | None
    credit_id: uuid.UUID | None
    refund_id: uuid.UUID | None
    premium_payment_id: uuid.UUID | None
    transfer_id: uuid.UUID | None
    counterpart_id: str | None
    note: str | None
    created_at: dt.datetime
    premium_year: int | None  # for PREMIUM and PREMIUM_REFUND: the contribution year paid for


async def page(pool: asyncpg.Pool, person_id: str, before_entry_id: int | None, limit: int) -> list[EntryRow]:
    rows = await db.fetch(pool, _PAGE, person_id, before_entry_id or _NEWEST, limit)
    return [EntryRow(**dict(r)) for r in rows]
