"""Region grant policy as data: scope and allowed relationships per province or 统筹区."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg
import asyncpg.pool

from gongji.domain.eligibility import DEFAULT_POLICY, RegionPolicy, Scope
from gongji.domain.people import Relationship

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool

# The most specific policy wins: the 统筹区's own, else its province's.
_FOR_REGION = """
select scope, allowed_relationships from region_policy
 where region_key in ($1, left($1, 2)) order by length(region_key) desc limit 1"""
_UPSERT = """
insert into region_policy (region_key, scope, allowed_relationships) values ($1, $2, $3)
on conflict (region_key) do update
   set scope = excluded.scope, allowed_relationships = excluded.allowed_relationships, updated_at = now()
returning region_key, scope, allowed_relationships, updated_at"""
_COUNT = "select count(*) from region_policy"
_LIST = "select region_key, scope, allowed_relationships, updated_at from region_policy order by region_key limit $1"


@dataclass(frozen=True, slots=True)
class PolicyRow:
    region_key: str
    policy: RegionPolicy
    updated_at: dt.datetime


def _policy(scope: str, allowed: list[str]) -> RegionPolicy:
    return RegionPolicy(Scope(scope), frozenset(Relationship(r) for r in allowed))


def _row(r: asyncpg.Record) -> PolicyRow:
    return PolicyRow(r["region_key"], _policy(r["scope"], r["allowed_relationships"]), r["updated_at"])


async def for_region(conn: Conn, region_code: str) -> RegionPolicy:
    row = await conn.fetchrow(_FOR_REGION, region_code)
    return DEFAULT_POLICY if row is None else _policy(row["scope"], row["allowed_relationships"])


async def set_policy(pool: asyncpg.Pool, region_key: str, policy: RegionPolicy, max_policies: int) -> PolicyRow | None:
    """Store the policy; None when it would be one more than `max_policies`."""
    async with pool.acquire() as conn, conn.transaction():
        # Policy changes are rare: one at a time keeps the count exact.
        await conn.execute("lock table region_policy in share row exclusive mode")
        exists = await conn.fetchval("select 1 from region_policy where region_key = $1", region_key)
        if not exists and await conn.fetchval(_COUNT) >= max_policies:
            return None
        allowed = sorted(r.value for r in policy.allowed)
        row = await conn.fetchrow(_UPSERT, region_key, policy.scope.value, allowed)
        assert row is not None
        return _row(row)


async def list_all(pool: asyncpg.Pool, limit: int) -> list[PolicyRow]:
    return [_row(r) for r in await pool.fetch(_LIST, limit)]
