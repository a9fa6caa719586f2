"""What issuing an e-voucher reads: nothing is written (the token is self-contained, see
gongji.domain.vouchers), so this is one read-only statement."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gongji.store import db

# One round trip, whether the person asks for their own voucher or a holder for a member's: the
# person's status, and for a holder the live binding and the holder's own status.
_ISSUE = """
select (select p.status from person p where p.person_id = $1) as status,
       (select b.binding_id from kinship_binding b
         where b.holder_id = $2 and b.member_id = $1 and b.ended_at is null) as binding_id,
       (select h.status from person h where h.person_id = $2) as requester_status"""


@dataclass(frozen=True, slots=True)
class Issuing:
    status: str | None  # the person's; None: not enrolled
    binding_id: int | None  # the live binding of the requester to the person; None: none lives
    requester_status: str | None  # the requester's; None: not enrolled


async def issuing(pool: asyncpg.Pool, person_id: str, requester_id: str) -> Issuing:
    """What decides whether `requester_id` may have a voucher naming `person_id` now."""
    row = await db.fetchrow(pool, _ISSUE, person_id, requester_id)
    assert row is not None
    return Issuing(row["status"], row["binding_id"], row["requester_status"])
