"""Mutual-aid grants (家庭共济授权): creating and ending them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from gongji.domain.people import Person, Relationship
from gongji.store.people import person_from_row

# The partial unique index on live (authorizer, beneficiary) pairs makes a second Grant return the
# live one. DO UPDATE (a no-op update) rather than DO NOTHING: it returns and locks the existing row in
# the same statement, so a Revoke committing in between cannot leave us with nothing to return.
_INSERT = """
insert into mutual_aid_grant as g (authorizer_id, beneficiary_id, relationship) values ($1, $2, $3)
on conflict (authorizer_id, beneficiary_id) where status = 'LIVE' do update set relationship = g.relationship
returning grant_id, authorizer_id, beneficiary_id, relationship, status, created_at, ended_at, end_reason,
          (xmax = 0) as inserted"""
# Both people are held FOR SHARE while the grant is checked and written, so an Enroll changing either
# of them waits, and then sees (and ends) the new grant; never a live grant for an ineligible pair.
_LOCK_PEOPLE = """
select person_id, name, birth_date, region_code, scheme, status
  from person where person_id = any($1::text[]) order by person_id collate "C" for share"""
_REVOKE = """
update mutual_aid_grant set status = 'REVOKED', ended_at = now(), end_reason = $3
 where authorizer_id = $1 and beneficiary_id = $2 and status = 'LIVE'
returning grant_id, authorizer_id, beneficiary_id, relationship, status, created_at, ended_at, end_reason"""


@dataclass(frozen=True, slots=True)
class GrantRow:
    grant_id: int
    authorizer_id: str
    beneficiary_id: str
    relationship: Relationship
    status: str
    created_at: dt.datetime
    ended_at: dt.datetime | None
    end_reason: str | None


def _grant(row: asyncpg.Record) -> GrantRow:
    fields = {k: v for k, v in dict(row).items() if k != "inserted"}
    return GrantRow(**{**fields, "relationship": Relationship(row["relationship"])})


async def create(
    pool: asyncpg.Pool,
    authorizer_id: str,
    beneficiary_id: str,
    relationship: Relationship,
    check: Callable[[Person | None, Person | None], None],
) -> tuple[GrantRow, bool]:
    """The live grant between the two, and whether it already existed.

    `check(authorizer, beneficiary)` raises the refusal when the grant is not allowed; it sees the
    people as they are while locked (None for someone not enrolled).
    """
    async with pool.acquire() as conn, conn.transaction():
        people = {
            r["person_id"]: person_from_row(r) for r in await conn.fetch(_LOCK_PEOPLE, [authorizer_id, beneficiary_id])
        }
        check(people.get(authorizer_id), people.get(beneficiary_id))
        row = await conn.fetchrow(_INSERT, authorizer_id, beneficiary_id, relationship.value)
        assert row is not None
        return _grant(row), not row["inserted"]


async def revoke(pool: asyncpg.Pool, authorizer_id: str, beneficiary_id: str, reason: str) -> GrantRow | None:
    """End the live grant between the two; None when there is none.

    The UPDATE waits for settlements holding the grant FOR SHARE, so a settlement either used the
    grant before it ended or does not use it at all.
    """
    row = await pool.fetchrow(_REVOKE, authorizer_id, beneficiary_id, reason)
    return None if row is None else _grant(row)
