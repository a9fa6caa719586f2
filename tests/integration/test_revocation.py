"""Revocation takes effect at once for money calls (issue 12).

A terminal settles, so the server's credential cache holds its principal; then its credential is
revoked (or its row deleted) and the very next money call, well within the cache's lifetime, must be
refused with UNAUTHENTICATED / CREDENTIALS_INVALID and move no money and write nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import grpc
import pytest
from support import INSTITUTION_A, Api, bearer, cancel, refused, reverse

from gongji.store import credentials, lifecycle, settlements
from gongji.store.credentials import Kind
from gongji.v1 import account_pb2

pytestmark = pytest.mark.usefixtures("books")

INVALID = (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")


async def _revoke(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute(
        "update credential set revoked_at = now() where token_sha256 = $1", credentials.token_hash(token)
    )


async def _delete(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute("delete from credential where token_sha256 = $1", credentials.token_hash(token))


Withdraw = Callable[[asyncpg.Pool, str], Awaitable[None]]
WAYS = [pytest.param(_revoke, id="revoked"), pytest.param(_delete, id="deleted")]


async def _terminal(pool: asyncpg.Pool) -> str:
    return await credentials.create(
        pool, Kind.TERMINAL, f"revocation {uuid.uuid4().hex[:8]}", institution_id=INSTITUTION_A, terminal_id="POS-R"
    )


async def _writes(pool: asyncpg.Pool) -> tuple[int, ...]:
    """Counts of every table a money call writes: none may change when a call is refused."""
    row = await pool.fetchrow(
        """select (select count(*) from settlement), (select count(*) from refund), (select count(*) from reversal),
                  (select count(*) from ledger_entry), (select count(*) from idempotency_key),
                  (select count(*) from credit), (select count(*) from voucher where used_at is not null)"""
    )
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("withdraw", WAYS)
async def test_settle_right_after_revocation_is_refused(api: Api, pool: asyncpg.Pool, withdraw: Withdraw) -> None:
    token = await _terminal(pool)
    patient = await api.enroll(balance_fen=10_000)
    await api.settle(patient, 100, token=token)  # the server now caches this credential
    voucher = await api.voucher(patient)
    await withdraw(pool, token)
    before = await _writes(pool)
    await refused(api.settle(patient, 100, voucher=voucher, token=token), *INVALID)
    assert await api.balance(patient) == 9_900
    assert await _writes(pool) == before


@pytest.mark.parametrize("withdraw", WAYS)
async def test_cancel_right_after_revocation_is_refused(api: Api, pool: asyncpg.Pool, withdraw: Withdraw) -> None:
    token = await _terminal(pool)
    patient = await api.enroll(balance_fen=10_000)
    settled = (await api.settle(patient, 500, token=token)).settlement
    await withdraw(pool, token)
    before = await _writes(pool)
    await refused(cancel(api, settled.settlement_id, 0, token=token), *INVALID)
    assert await api.balance(patient) == 9_500
    assert await _writes(pool) == before


@pytest.mark.parametrize("withdraw", WAYS)
async def test_reverse_right_after_revocation_is_refused(api: Api, pool: asyncpg.Pool, withdraw: Withdraw) -> None:
    token = await _terminal(pool)
    patient = await api.enroll(balance_fen=10_000)
    request_id = f"r-{uuid.uuid4()}"
    await api.settle(patient, 500, request_id=request_id, token=token)
    await withdraw(pool, token)
    before = await _writes(pool)
    await refused(reverse(api, request_id, token=token), *INVALID)
    # Nor may a revoked terminal record a reversal of a request id that never settled.
    await refused(reverse(api, f"r-{uuid.uuid4()}", token=token), *INVALID)
    assert await api.balance(patient) == 9_500
    assert await _writes(pool) == before


@pytest.mark.parametrize("withdraw", WAYS)
async def test_credit_right_after_revocation_is_refused(api: Api, pool: asyncpg.Pool, withdraw: Withdraw) -> None:
    token = await credentials.create(pool, Kind.OPERATOR, f"revocation {uuid.uuid4().hex[:8]}")
    patient = await api.enroll(balance_fen=1_000)
    await api.account.Credit(  # the server now caches this credential
        account_pb2.CreditRequest(request_id=f"credit-{uuid.uuid4()}", person_id=patient, amount_fen=100),
        metadata=bearer(token),
    )
    await withdraw(pool, token)
    before = await _writes(pool)
    request = account_pb2.CreditRequest(request_id=f"credit-{uuid.uuid4()}", person_id=patient, amount_fen=100)
    await refused(api.account.Credit(request, metadata=bearer(token)), *INVALID)
    assert await api.balance(patient) == 1_100
    assert await _writes(pool) == before


@pytest.mark.parametrize(
    ("query", "function"),
    [
        (settlements._SETTLE, "gongji_settle"),
        (lifecycle._CANCEL, "gongji_cancel"),
        (lifecycle._REVERSE, "gongji_reverse"),
    ],
)
async def test_the_money_function_runs_only_for_a_live_credential_row(
    pool: asyncpg.Pool, query: str, function: str
) -> None:
    """The plan reads the credential row first and runs the function inside the loop over the rows
    that qualify, with arguments taken from that row (LATERAL: no plan could run it first), so a
    revoked or missing credential never reaches it. The refusals above show that nothing was written;
    this shows why nothing can be."""
    args = [None] * (max(map(int, re.findall(r"\$(\d+)", query))) - 1)  # credential 1; the rest: any
    async with pool.acquire() as conn:
        explained = await conn.fetchval(f"explain (format json, costs off, verbose) {query}", 1, *args)
    plan = json.loads(explained)[0]["Plan"]
    assert plan["Node Type"] == "Nested Loop", plan
    outer, inner = plan["Plans"]
    assert outer.get("Relation Name") == "credential", outer
    assert "revoked_at IS NULL" in outer.get("Filter", ""), outer
    assert (inner["Node Type"], inner.get("Function Name")) == ("Function Scan", function), inner
    assert inner["Function Call"].startswith(f"{function}(c.institution_id"), inner
