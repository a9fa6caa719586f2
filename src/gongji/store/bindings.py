"""Kinship-account bindings (亲情账户): holders who may show a member's e-voucher."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import asyncpg.pool

from gongji.domain.people import Person, Relationship
from gongji.store import db
from gongji.store.people import PERSON_COLUMNS, person_from_row

_COLUMNS = """b.binding_id, b.holder_id, b.member_id, b.relationship, b.created_at, b.ended_at,
       m.name as member_name"""

# Both people locked in key order, so the count of a holder's bindings cannot change under us (two
# Binds for one holder take turns) and two holders binding each other cannot deadlock.
_LOCK_PEOPLE = f"""
select {PERSON_COLUMNS} from person
 where person_id = any($1::text[]) order by person_id collate "C" for no key update"""
_LIVE_OF_HOLDER = "select member_id from kinship_binding where holder_id = $1 and ended_at is null"
_INSERT = """
insert into kinship_binding (holder_id, member_id, relationship, phone, reason, face_verification_ref)
values ($1, $2, $3, $4, $5, nullif($6, '')) returning binding_id"""
_ONE = f"""
select {_COLUMNS} from kinship_binding b join person m on m.person_id = b.member_id
 where b.holder_id = $1 and b.member_id = $2 order by (b.ended_at is null) desc, b.binding_id desc limit 1"""
_UNBIND = """
update kinship_binding set ended_at = now() where holder_id = $1 and member_id = $2 and ended_at is null"""
_OF_HOLDER = f"""
select {_COLUMNS} from kinship_binding b join person m on m.person_id = b.member_id
 where b.holder_id = $1
 order by (b.ended_at is null) desc,
          case when b.ended_at is null then b.created_at end asc,
          b.ended_at desc
 limit $2"""
_COUNT_LIVE = "select count(*) from kinship_binding where holder_id = $1 and ended_at is null"


@dataclass(frozen=True, slots=True)
class BindingRow:
    binding_id: int
    holder_id: str
    member_id: str
    relationship: Relationship
    created_at: dt.datetime
    ended_at: dt.datetime | None
    member_name: str


def _binding(r: asyncpg.Record) -> BindingRow:
    return BindingRow(**{**dict(r), "relationship": Relationship(r["relationship"])})


@dataclass(slots=True)
class BindingPair:
    """The holder and member of a Bind, both locked while the caller decides, and the write it decides on.

    `holder` and `member` are the people as they are while locked (None for someone not enrolled);
    `live_bindings` counts the holder's live bindings and `already_bound` says whether this member is
    among them. Usable only inside its `pair_for_bind` block.
    """

    holder: Person | None
    member: Person | None
    live_bindings: int
    already_bound: bool
    _ids: tuple[str, str]
    _conn: asyncpg.pool.PoolConnectionProxy | None

    async def insert(
        self, *, relationship: Relationship, phone: str, reason: str, face_verification_ref: str
    ) -> tuple[BindingRow, bool]:
        """The live binding, and whether it existed already (binding twice is idempotent)."""
        assert self._conn is not None, "a BindingPair writes only inside its pair_for_bind block"
        holder_id, member_id = self._ids
        existed = self.already_bound
        if not existed:
            await self._conn.execute(
                _INSERT, holder_id, member_id, relationship.value, phone, reason, face_verification_ref
            )
        row = await self._conn.fetchrow(_ONE, holder_id, member_id)
        assert row is not None
        return _binding(row), existed


@contextlib.asynccontextmanager
async def pair_for_bind(pool: asyncpg.Pool, holder_id: str, member_id: str) -> AsyncIterator[BindingPair]:
    """One transaction for one Bind: both people locked, the holder's live bindings read, then the
    caller decides and calls `insert`. An exception out of the block rolls back: nothing is written."""
    async with pool.acquire() as conn, conn.transaction():
        people = {r["person_id"]: person_from_row(r) for r in await conn.fetch(_LOCK_PEOPLE, [holder_id, member_id])}
        live = {r["member_id"] for r in await conn.fetch(_LIVE_OF_HOLDER, holder_id)}
        pair = BindingPair(
            people.get(holder_id), people.get(member_id), len(live), member_id in live, (holder_id, member_id), conn
        )
        try:
            yield pair
        finally:
            pair._conn = None  # the connection goes back to the pool: no write after the block


async def unbind(pool: asyncpg.Pool, holder_id: str, member_id: str) -> BindingRow | None:
    """End the live binding (unbinding an ended one answers it as it is); None when there never was one."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_UNBIND, holder_id, member_id)
        row = await conn.fetchrow(_ONE, holder_id, member_id)
        return None if row is None else _binding(row)


async def of_holder(pool: asyncpg.Pool, holder_id: str, limit: int) -> tuple[list[BindingRow], int]:
    """The holder's bindings (live first, oldest first; then ended, newest first) and the live count."""
    rows = await db.fetch(pool, _OF_HOLDER, holder_id, limit)
    live: int = await db.fetchval(pool, _COUNT_LIVE, holder_id)
    return [_binding(r) for r in rows], live
