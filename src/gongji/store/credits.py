"""Monthly credits to personal accounts (个人账户划入), idempotent on the operator's request id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from gongji import errors
from gongji.store import credentials
from gongji.store.credentials import Kind

_SCOPE = "credit"

_LOCK_KEY = "select pg_advisory_xact_lock(hashtextextended($1, 0))"
# Whether the operator's credential is still live, read in the credit's own transaction and after its
# lock (a revocation that committed while this waited is seen), folded into the key's lookup so that
# the check costs no round trip of its own.
_FIND_KEY = f"""
select exists (select 1 from credential c where {credentials.money_guard("$3", Kind.OPERATOR)}) as live,
       k.request_digest, k.resource_id
  from (select) one left join idempotency_key k on k.scope = $1 and k.request_id = $2"""
# A replay answers with the balance right after the original credit, as the original answer did.
_FIND_CREDIT = """
select c.credit_id, l.balance_after_fen as balance_fen
  from credit c join ledger_entry l on l.credit_id = c.credit_id where c.credit_id = $1"""
_LOCK_ACCOUNT = "select balance_fen from account where person_id = $1 for update"
_APPLY = """
with c as (
    insert into credit (credit_id, request_id, person_id, amount_fen, memo) values ($1, $2, $3, $4, $5)
), a as (
    update account set balance_fen = balance_fen + $4, updated_at = now() where person_id = $3
    returning balance_fen
), l as (
    insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, credit_id)
    select $3, $4, a.balance_fen, 'CREDIT', $1 from a
)
select balance_fen from a"""
_RECORD_KEY = """
insert into idempotency_key (scope, request_id, request_digest, resource_id) values ($1, $2, $3, $4)"""


@dataclass(frozen=True, slots=True)
class CreditResult:
    credit_id: uuid.UUID
    balance_fen: int
    replayed: bool


async def credit(
    pool: asyncpg.Pool,
    *,
    credential_id: int | None,
    request_id: str,
    digest: bytes,
    person_id: str,
    amount_fen: int,
    memo: str,
) -> CreditResult:
    """Credit `amount_fen` once per request id, as the operator of `credential_id`: refused with
    CredentialsInvalid, having written nothing, once it is revoked or deleted. None only for gongji's
    own tools (the demo seed), which call without a credential. The caller has checked the person has
    an account."""
    assert amount_fen > 0
    async with pool.acquire() as conn, conn.transaction():
        # Same-key requests take turns, so a retry racing its original replays instead of failing.
        await conn.execute(_LOCK_KEY, f"{_SCOPE}/{request_id}")
        key = await conn.fetchrow(_FIND_KEY, _SCOPE, request_id, credential_id)
        assert key is not None
        if credential_id is not None and not key["live"]:
            raise errors.CredentialsInvalid("unknown or revoked credentials")
        if key["request_digest"] is not None:
            if key["request_digest"] != digest:
                raise errors.IdempotencyKeyReused("request_id was used for another credit")
            row = await conn.fetchrow(_FIND_CREDIT, key["resource_id"])
            assert row is not None
            return CreditResult(row["credit_id"], row["balance_fen"], replayed=True)
        before = await conn.fetchval(_LOCK_ACCOUNT, person_id)
        if before is None:
            raise errors.NotEmployeeInsured("the person has no personal account")
        credit_id = uuid.uuid4()
        after = await conn.fetchval(_APPLY, credit_id, request_id, person_id, amount_fen, memo)
        assert after == before + amount_fen, (before, amount_fen, after)
        await conn.execute(_RECORD_KEY, _SCOPE, request_id, digest, credit_id)
        return CreditResult(credit_id, after, replayed=False)
