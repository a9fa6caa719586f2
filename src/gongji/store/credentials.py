"""Bearer-token credentials, stored as SHA-256 hashes (see 0001_schema.sql for why SHA-256 suffices)."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

from gongji.store import db


class Kind(enum.StrEnum):
    TERMINAL = "TERMINAL"  # a POS terminal of one institution: SettlementService
    APP = "APP"  # the insured person's app backend: FamilyService
    OPERATOR = "OPERATOR"  # insurer operators: AccountService, Reconcile for any institution
    CONSUMER = "CONSUMER"  # a downstream system: EventService, ID numbers masked


@dataclass(frozen=True, slots=True)
class Principal:
    credential_id: int
    kind: Kind
    institution_id: str | None
    terminal_id: str | None


_LOOKUP = """
select credential_id, kind, institution_id, terminal_id
  from credential where token_sha256 = $1 and revoked_at is null"""
_INSERT = """
insert into credential (token_sha256, kind, institution_id, terminal_id, label) values ($1, $2, $3, $4, $5)"""
# One statement for a batch of last uses; rows locked first in key order, so two replicas flushing
# overlapping batches take turns instead of deadlocking. Never moves a last use backwards.
_LOCK_USED = """
select 1 from credential where credential_id = any($1::bigint[]) order by credential_id for no key update"""
_RECORD_USED = """
update credential c set last_used_at = greatest(c.last_used_at, u.used_at)
  from unnest($1::bigint[], $2::timestamptz[]) as u (credential_id, used_at)
 where c.credential_id = u.credential_id"""
_LIST = """
select credential_id, label, kind, institution_id, terminal_id, created_at, last_used_at, revoked_at
  from credential order by credential_id"""
_LIVE_BY_LABEL = "select credential_id from credential where label = $1 and revoked_at is null order by credential_id"
_REVOKE = """
update credential set revoked_at = now() where credential_id = $1 and revoked_at is null returning credential_id"""
# A region given sets the institution's 统筹区 (where its care happens, gongji_institution_region), new or not.
_ENSURE_INSTITUTION = """
insert into institution (institution_id, name, region_code) values ($1, $2, $3)
on conflict (institution_id) do update set region_code = coalesce(excluded.region_code, institution.region_code)"""


# Every call that moves money holds a shared lock on its credential until it commits, taken in the
# statement that checks the credential is live (gongji.store.settlements, .lifecycle, .credits,
# .premiums), and `revoke` takes the lock exclusively once its revocation has committed: when `revoke`
# returns, no money call that saw the credential live is still running, and every later one sees it
# revoked. A try-lock on the money side: while a revocation holds or waits for it, the call is refused
# as revoked instead of queueing. Advisory, not FOR SHARE on the row: a row lock per settlement would write to the
# credential's tuple and, with one terminal's calls concurrent, build multixacts.
_MONEY_LOCK_SPACE = 0x676A  # 'gj': a key of the two-int advisory lock space, apart from the bigint keys
_MONEY_LOCK = f"pg_try_advisory_xact_lock_shared({_MONEY_LOCK_SPACE}, (c.credential_id % 2147483647)::int4)"
_MONEY_LOCK_WAIT = f"select pg_advisory_xact_lock({_MONEY_LOCK_SPACE}, ($1::bigint % 2147483647)::int4)"


def money_guard(credential_id_param: str, kind: Kind) -> str:
    """The condition on `credential c` under which a money statement may run, written once for all of
    them: the caller's credential (the statement's parameter `credential_id_param`), live, of `kind`,
    its money lock held. In the money call's own statement, so the check costs no round trip and a
    credential revoked or deleted a moment ago moves nothing, whatever a server's cache believes."""
    return (
        f"c.credential_id = {credential_id_param} and c.revoked_at is null and c.kind = '{kind.value}'"
        f" and {_MONEY_LOCK}"
    )


_LIVE_HASHES = "select credential_id, token_sha256 from credential where revoked_at is null limit $1"
_LIVE_HASHES_OF = """
select credential_id, token_sha256 from credential where credential_id = any($1::bigint[]) and revoked_at is null"""


async def live_hashes(pool: asyncpg.Pool, limit: int) -> dict[bytes, int]:
    """The token hash of every live credential (at most `limit` + 1 rows: more means "too many")."""
    return {row["token_sha256"]: row["credential_id"] for row in await db.fetch(pool, _LIVE_HASHES, limit + 1)}


async def live_hashes_of(pool: asyncpg.Pool, credential_ids: list[int]) -> dict[int, bytes]:
    """The token hash of each of these credentials that is live (revoked or gone ones are absent)."""
    return {row["credential_id"]: row["token_sha256"] for row in await db.fetch(pool, _LIVE_HASHES_OF, credential_ids)}


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    return "gj_" + secrets.token_urlsafe(32)


async def lookup(pool: asyncpg.Pool, token: str) -> Principal | None:
    row = await db.fetchrow(pool, _LOOKUP, token_hash(token))
    if row is None:
        return None
    return Principal(row["credential_id"], Kind(row["kind"]), row["institution_id"], row["terminal_id"])


async def create(
    pool: asyncpg.Pool,
    kind: Kind,
    label: str,
    *,
    institution_id: str | None = None,
    institution_name: str | None = None,
    terminal_id: str | None = None,
    token: str | None = None,
    institution_region: str | None = None,
) -> str:
    """Store a new credential and return its token: the only time the token exists in clear."""
    assert (kind is Kind.TERMINAL) == (institution_id is not None and terminal_id is not None)
    token = token or new_token()
    async with pool.acquire() as conn, conn.transaction():
        if institution_id is not None:
            await conn.execute(
                _ENSURE_INSTITUTION, institution_id, institution_name or institution_id, institution_region
            )
        await conn.execute(_INSERT, token_hash(token), kind.value, institution_id, terminal_id, label)
    return token


async def record_last_used(pool: asyncpg.Pool, uses: dict[int, float]) -> None:
    """Write a batch of last uses (credential_id -> Unix time) in one transaction."""
    ids = sorted(uses)
    at = [dt.datetime.fromtimestamp(uses[i], dt.UTC) for i in ids]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_USED, ids)
        await conn.execute(_RECORD_USED, ids, at)


@dataclass(frozen=True, slots=True)
class Listed:
    """What an operator sees of a credential: never its token nor the token's hash."""

    credential_id: int
    label: str
    kind: Kind
    institution_id: str | None
    terminal_id: str | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


async def list_all(pool: asyncpg.Pool) -> list[Listed]:
    return [Listed(**{**dict(r), "kind": Kind(r["kind"])}) for r in await db.fetch(pool, _LIST)]


class NotRevoked(Exception):
    """Why `revoke` did nothing; its message is for the operator."""


async def revoke(pool: asyncpg.Pool, label_or_id: str) -> int:
    """Revoke one live credential, named by its id (digits) or its label; return its id. Refuses a
    label several live credentials share: the operator names the one by id."""
    if label_or_id.isascii() and label_or_id.isdigit():
        ids = [int(label_or_id)]
    else:
        ids = [r["credential_id"] for r in await db.fetch(pool, _LIVE_BY_LABEL, label_or_id)]
        if len(ids) > 1:
            listed = ", ".join(map(str, ids))
            raise NotRevoked(f"{len(ids)} live credentials have this label (ids {listed}): revoke one by its id")
        if not ids:
            raise NotRevoked("no live credential has this label")
    revoked = await db.fetchval(pool, _REVOKE, ids[0])
    if revoked is None:
        raise NotRevoked(f"no live credential has id {ids[0]} (unknown, or revoked already)")
    # Committed: later money calls see it revoked. Wait for those that saw it live (_MONEY_LOCK).
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_MONEY_LOCK_WAIT, ids[0])
    return ids[0]
