"""Bearer-token credentials, stored as SHA-256 hashes (see 0001_schema.sql for why SHA-256 suffices)."""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass

import asyncpg


class Kind(enum.StrEnum):
    TERMINAL = "TERMINAL"  # a POS terminal of one institution: SettlementService
    APP = "APP"  # the insured person's app backend: FamilyService
    OPERATOR = "OPERATOR"  # insurer operators: AccountService, Reconcile for any institution


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
_ENSURE_INSTITUTION = """
insert into institution (institution_id, name) values ($1, $2) on conflict (institution_id) do nothing"""


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    return "gj_" + secrets.token_urlsafe(32)


async def lookup(pool: asyncpg.Pool, token: str) -> Principal | None:
    row = await pool.fetchrow(_LOOKUP, token_hash(token))
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
) -> str:
    """Store a new credential and return its token: the only time the token exists in clear."""
    assert (kind is Kind.TERMINAL) == (institution_id is not None and terminal_id is not None)
    token = token or new_token()
    async with pool.acquire() as conn, conn.transaction():
        if institution_id is not None:
            await conn.execute(_ENSURE_INSTITUTION, institution_id, institution_name or institution_id)
        await conn.execute(_INSERT, token_hash(token), kind.value, institution_id, terminal_id, label)
    return token
