"""The outbox's reads and upkeep (migration 0020, store/sql/events.sql; docs/events.md)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from gongji import errors
from gongji.store import db


@dataclass(frozen=True, slots=True)
class Head:
    position: int  # the last position given
    pruned_through: int  # retention deleted every event up to here


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    label: str  # the credential's label and the consumer's name: operator-chosen words, never personal data
    events: int  # positions given that it has not read
    seconds: float  # how long ago the oldest of them occurred; 0 when caught up; inf when retention deleted them


async def sequence(pool: db.Pool, limit: int) -> dict[str, int] | None:
    """Give committed events their positions (gongji_sequence_events); how many of each type, or None
    when another sequencer holds the head (this one skipped)."""
    rows = await pool.fetch("select type, events from gongji_sequence_events($1)", limit)
    if any(r["events"] < 0 for r in rows):
        return None
    return {r["type"]: r["events"] for r in rows}


async def unsequenced_seconds(pool: db.Pool) -> float:
    """How long ago the oldest event still without a position occurred; 0 when none waits."""
    seconds: float = await pool.fetchval(
        """select coalesce(extract(epoch from now() - (
                   select e.occurred_at from outbox_event e where e.position is null order by e.event_id limit 1)),
               0)::float8"""
    )
    return max(seconds, 0.0)


async def prune(pool: db.Pool, before: dt.datetime, limit: int) -> int:
    """Delete the oldest events, all of which occurred before `before`; how many (at most `limit`)."""
    deleted: int = await pool.fetchval("select gongji_prune_events($1, $2)", before, limit)
    return deleted


async def head(pool: db.Pool) -> Head:
    row = await pool.fetchrow("select position, pruned_through from outbox_head")
    assert row is not None  # migration 0020 wrote its one row
    return Head(row["position"], row["pruned_through"])


async def read(pool: db.Pool, after: int, limit: int) -> list[asyncpg.Record]:
    """The events after position `after`, in position order, at most `limit`."""
    return await pool.fetch(
        """select event_id, position, type, occurred_at, person_ids, data::text as data
             from outbox_event where position > $1 order by position limit $2""",
        after,
        limit,
    )


async def consumer_seen(pool: db.Pool, credential_id: int, name: str, position: int, names_max: int) -> None:
    """Record that the credential's consumer `name` has read up to `position`. A credential names at most
    `names_max` consumers (each is a metric series): a new name beyond them is refused."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", credential_id)  # names of one credential take turns
        known = await conn.fetchval(
            """update event_consumer set position = $3, seen_at = now()
                where credential_id = $1 and name = $2 returning true""",
            credential_id,
            name,
            position,
        )
        if known:
            return
        count = await conn.fetchval("select count(*) from event_consumer where credential_id = $1", credential_id)
        if count >= names_max:
            raise errors.EventConsumersLimitReached(f"a credential names at most {names_max} consumers")
        await conn.execute(
            "insert into event_consumer (credential_id, name, position) values ($1, $2, $3)",
            credential_id,
            name,
            position,
        )


async def consumer_lags(pool: db.Pool, seen_within: dt.timedelta) -> list[ConsumerLag]:
    """How far behind the head each named consumer of a live credential is, seen within `seen_within`."""
    rows = await pool.fetch(
        """select c.label || '/' || e.name as label, h.position - e.position as events,
                  coalesce(extract(epoch from now() - (
                      select o.occurred_at from outbox_event o where o.position > e.position
                       order by o.position limit 1))::float8,
                      -- Retention deleted what it had not read, and kept nothing after: it lost events.
                      case when e.position < h.pruned_through then 'Infinity'::float8 else 0 end) as seconds
             from event_consumer e join credential c using (credential_id) cross join outbox_head h
            where c.revoked_at is null and e.seen_at > now() - $1::interval
            order by 1""",
        seen_within,
    )
    return [ConsumerLag(r["label"], max(r["events"], 0), max(r["seconds"], 0.0)) for r in rows]
