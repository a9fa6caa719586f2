"""Mutual-aid grants (家庭共济授权): creating and ending them."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import asyncpg.pool

from gongji.domain.eligibility import DEFAULT_POLICY, RegionPolicy
from gongji.domain.people import Person, Relationship
from gongji.store import db, policies
from gongji.store.people import PERSON_COLUMNS, person_from_row

# The partial unique index on live (authorizer, beneficiary) pairs makes a second Grant return the
# live one. DO UPDATE (a no-op update) rather than DO NOTHING: it returns and locks the existing row in
# the same statement, so a Revoke committing in between cannot leave us with nothing to return.
_COLUMNS = "grant_id, authorizer_id, beneficiary_id, relationship, status, created_at, ended_at, end_reason"
# What is left of a grant's yearly cap this year (China's time zone), as a settlement reckons it
# (store/sql/settle.sql): null, no cap.
_CAP = "g.yearly_cap_fen, gongji_grant_cap_left(g.grant_id, g.yearly_cap_fen, gongji_china_year(now())) as cap_left_fen"
_INSERT = f"""
insert into mutual_aid_grant as g (authorizer_id, beneficiary_id, relationship, scope) values ($1, $2, $3, $4)
on conflict (authorizer_id, beneficiary_id) where status = 'LIVE' do update set relationship = g.relationship
returning {_COLUMNS}, {_CAP}, (xmax = 0) as inserted"""
# Both people are held FOR SHARE while the grant is checked and written, so an Enroll changing either
# of them waits, and then sees (and ends) the new grant; never a live grant for an ineligible pair.
_LOCK_PEOPLE = f"""
select {PERSON_COLUMNS}
  from person where person_id = any($1::text[]) order by person_id collate "C" for share"""
_REVOKE = f"""
update mutual_aid_grant g set status = 'REVOKED', ended_at = now(), end_reason = $3
 where authorizer_id = $1 and beneficiary_id = $2 and status = 'LIVE'
returning {_COLUMNS}, {_CAP}"""
# The row lock waits for settlements holding the grant: the cap applies from the next settlement on.
# What is left of it is read by a statement of its own after the update: the update's own snapshot
# predates the settlements it waited for (found by review: it answered 1,000 left with 200 left).
_SET_CAP = """
update mutual_aid_grant set yearly_cap_fen = $3
 where authorizer_id = $1 and beneficiary_id = $2 and status = 'LIVE'
returning grant_id"""
_BY_ID = f"select {_COLUMNS}, {_CAP} from mutual_aid_grant g where g.grant_id = $1"
# What is left this year of a person's yearly cap as a beneficiary, by the most specific policy of the
# person's region; null when there is none.
_BENEFICIARY_CAP_LEFT = """
select gongji_beneficiary_cap_left(
           x.person_id, (gongji_region_policy(x.region_code)).beneficiary_yearly_cap_fen, gongji_china_year(now()))
  from person x where x.person_id = $1"""


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
    yearly_cap_fen: int | None = None  # None: no cap
    cap_left_fen: int | None = None  # what is left of the cap this year; None: no cap


def _grant(row: asyncpg.Record) -> GrantRow:
    fields = {k: v for k, v in dict(row).items() if k != "inserted"}
    return GrantRow(**{**fields, "relationship": Relationship(row["relationship"])})


@dataclass(slots=True)
class GrantPair:
    """The two people of a Grant, held FOR SHARE while the caller decides, and the write it decides on.

    `authorizer` and `beneficiary` are the people as they are while locked (None for someone not
    enrolled); `policy` is the authorizer's region's. Usable only inside its `pair_for_grant` block.
    """

    authorizer: Person | None
    beneficiary: Person | None
    policy: RegionPolicy
    _ids: tuple[str, str]
    _conn: asyncpg.pool.PoolConnectionProxy | None

    async def insert(self, relationship: Relationship) -> tuple[GrantRow, bool]:
        """The live grant between the two, and whether it already existed."""
        assert self._conn is not None, "a GrantPair writes only inside its pair_for_grant block"
        authorizer_id, beneficiary_id = self._ids
        row = await self._conn.fetchrow(
            _INSERT, authorizer_id, beneficiary_id, relationship.value, self.policy.scope.value
        )
        assert row is not None
        return _grant(row), not row["inserted"]


@contextlib.asynccontextmanager
async def pair_for_grant(pool: asyncpg.Pool, authorizer_id: str, beneficiary_id: str) -> AsyncIterator[GrantPair]:
    """One transaction for one Grant: both people locked, the policy read, then the caller decides and
    calls `insert`. An exception out of the block rolls back: nothing is written."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_LOCK_PEOPLE, [authorizer_id, beneficiary_id])
        people = {r["person_id"]: person_from_row(r) for r in rows}
        authorizer = people.get(authorizer_id)
        policy = await policies.for_region(conn, authorizer.region_code) if authorizer else DEFAULT_POLICY
        pair = GrantPair(authorizer, people.get(beneficiary_id), policy, (authorizer_id, beneficiary_id), conn)
        try:
            yield pair
        finally:
            pair._conn = None  # the connection goes back to the pool: no write after the block


async def revoke(pool: asyncpg.Pool, authorizer_id: str, beneficiary_id: str, reason: str) -> GrantRow | None:
    """End the live grant between the two; None when there is none.

    The UPDATE waits for settlements holding the grant FOR SHARE, so a settlement either used the
    grant before it ended or does not use it at all.
    """
    row = await db.fetchrow(pool, _REVOKE, authorizer_id, beneficiary_id, reason)
    return None if row is None else _grant(row)


# Live grants first, in the order a settlement picks them (gongji_live_grant), then ended ones.
_OF_PERSON = f"""
select {_COLUMNS}, {_CAP}
  from mutual_aid_grant g
 where {{side}} = $1
 order by (status = 'LIVE') desc,
          case when status = 'LIVE' then created_at end asc,
          case when status = 'LIVE' then grant_id end asc,
          ended_at desc
 limit $2"""
_GIVEN = _OF_PERSON.format(side="authorizer_id")
_HELD = _OF_PERSON.format(side="beneficiary_id")


async def set_cap(
    pool: asyncpg.Pool, authorizer_id: str, beneficiary_id: str, yearly_cap_fen: int | None
) -> GrantRow | None:
    """Set (None: clear) the yearly cap of the live grant between the two; None when there is none."""
    async with pool.acquire() as conn, conn.transaction():
        grant_id = await conn.fetchval(_SET_CAP, authorizer_id, beneficiary_id, yearly_cap_fen)
        if grant_id is None:
            return None
        row = await conn.fetchrow(_BY_ID, grant_id)
    assert row is not None
    return _grant(row)


async def beneficiary_cap_left(pool: asyncpg.Pool, person_id: str) -> int | None:
    """What is left this year of the person's yearly cap as a beneficiary; None when none applies."""
    left: int | None = await db.fetchval(pool, _BENEFICIARY_CAP_LEFT, person_id)
    return left


async def given_by(pool: asyncpg.Pool, person_id: str, limit: int) -> list[GrantRow]:
    return [_grant(r) for r in await db.fetch(pool, _GIVEN, person_id, limit)]


async def held_by(pool: asyncpg.Pool, person_id: str, limit: int) -> list[GrantRow]:
    return [_grant(r) for r in await db.fetch(pool, _HELD, person_id, limit)]
