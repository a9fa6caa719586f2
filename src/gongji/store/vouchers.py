"""What issuing an e-voucher reads: nothing is written (the token is self-contained, see
gongji.domain.vouchers), so this is one read-only statement."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gongji.store import db

# One round trip, whether the person asks for their own voucher or a holder for a member's: the
# person's status, and only for a holder (CASE skips the subqueries otherwise) the live binding and
# the holder's own status, and only when the patient picked a family member ($3) their live grant.
_ISSUE = """
select (select p.status from person p where p.person_id = $1) as status,
       case when $2 <> $1 then (select b.binding_id from kinship_binding b
                                 where b.holder_id = $2 and b.member_id = $1 and b.ended_at is null) end as binding_id,
       case when $2 <> $1 then (select h.status from person h where h.person_id = $2) end as requester_status,
       case when $3::text is not null then (select g.grant_id from mutual_aid_grant g
                                             where g.authorizer_id = $3 and g.beneficiary_id = $1 and g.status = 'LIVE')
       end as grant_id"""


@dataclass(frozen=True, slots=True)
class Issuing:
    status: str | None  # the person's; None: not enrolled
    binding_id: int | None  # the requester's live binding to the person; None: none lives, or their own
    requester_status: str | None  # a holder's; None: not enrolled, or the person's own voucher
    grant_id: int | None  # the picked authorizer's live grant to the person; None: none lives, or none picked


async def issuing(pool: asyncpg.Pool, person_id: str, requester_id: str, authorizer_id: str | None) -> Issuing:
    """What decides whether `requester_id` may have a voucher naming `person_id` now, carrying the
    grant of `authorizer_id` when the patient picked one."""
    row = await db.fetchrow(pool, _ISSUE, person_id, requester_id, authorizer_id)
    assert row is not None
    return Issuing(row["status"], row["binding_id"], row["requester_status"], row["grant_id"])
