"""Issued e-vouchers: whom they name, who asked, when they expire, and whether they were used."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from gongji.store import db

# One round trip for the common case (a patient's own voucher): the voucher is recorded only for an
# active person, and the answer says which of the two checks failed otherwise.
_ISSUE = """
with p as (select status from person where person_id = $2),
     v as (insert into voucher (voucher_id, person_id, requester_id, expires_at)
           select $1, $2, $3, $4 from p where p.status = 'ACTIVE' returning 1)
select (select status from p) as status, exists (select 1 from v) as issued"""


async def issue(
    pool: asyncpg.Pool, voucher_id: uuid.UUID, person_id: str, requester_id: str, expires_at: dt.datetime
) -> str | None:
    """Record the voucher if `person_id` is enrolled and ACTIVE; return the person's status (None: not
    enrolled). The caller has checked the requester may show this person's voucher."""
    row = await db.fetchrow(pool, _ISSUE, voucher_id, person_id, requester_id, expires_at)
    assert row is not None
    status: str | None = row["status"]
    assert row["issued"] == (status == "ACTIVE")
    return status
