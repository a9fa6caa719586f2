"""A person's ledger entries (交易记录), newest first, a page at a time."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

# Keyset pagination on entry_id (the ledger_entry_person index): newest first, below the cursor.
_PAGE = """
select entry_id, amount_fen, balance_after_fen, kind, settlement_id, credit_id, refund_id, counterpart_id, note,
       created_at
  from ledger_entry where person_id = $1 and entry_id < $2 order by entry_id desc limit $3"""

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
    counterpart_id: str | None
    note: str | None
    created_at: dt.datetime


async def page(pool: asyncpg.Pool, person_id: str, before_entry_id: int | None, limit: int) -> list[EntryRow]:
    rows = await pool.fetch(_PAGE, person_id, before_entry_id or _NEWEST, limit)
    return [EntryRow(**dict(r)) for r in rows]
