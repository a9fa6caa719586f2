"""Revocation takes effect at once for money calls (issue 12).

A terminal settles, so the server's credential cache holds its principal; then its credential is
revoked (or its row deleted) and the very next money call, well within the cache's lifetime, must be
refused with UNAUTHENTICATED / CREDENTIALS_INVALID and move no money and write nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY
from support import INSTITUTION_A, Api, account_row_held, bearer, cancel, refused, reverse

from gongji import limits
from gongji.api import credential_watch, server
from gongji.store import credentials, lifecycle, settlements
from gongji.store.credentials import Kind
from gongji.v1 import account_pb2, family_pb2, settlement_pb2

pytestmark = pytest.mark.usefixtures("books")

INVALID = (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")


_REVOKE = "update credential set revoked_at = now() where token_sha256 = $1"
_DELETE = "delete from credential where token_sha256 = $1"


async def _revoke(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute(_REVOKE, credentials.token_hash(token))


async def _delete(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute(_DELETE, credentials.token_hash(token))


async def _unannounced(pool: asyncpg.Pool, statement: str, token: str) -> None:
    """Change the credential with its triggers off: no notification reaches any server, as when the
    listener's connection was down. The server's cache still trusts the credential."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("alter table credential disable trigger user")
        await conn.execute(statement, credentials.token_hash(token))
        await conn.execute("alter table credential enable trigger user")


async def _revoke_unannounced(pool: asyncpg.Pool, token: str) -> None:
    await _unannounced(pool, _REVOKE, token)


async def _delete_unannounced(pool: asyncpg.Pool, token: str) -> None:
    await _unannounced(pool, _DELETE, token)


Withdraw = Callable[[asyncpg.Pool, str], Awaitable[None]]
# The unannounced ways show that money calls do not depend on the notification: only the check inside
# their transaction can refuse them while the cache still holds the credential.
WAYS = [
    pytest.param(_revoke, id="revoked"),
    pytest.param(_delete, id="deleted"),
    pytest.param(_revoke_unannounced, id="revoked-unannounced"),
    pytest.param(_delete_unannounced, id="deleted-unannounced"),
]


async def _terminal(pool: asyncpg.Pool) -> str:
    return await credentials.create(
        pool, Kind.TERMINAL, f"revocation {uuid.uuid4().hex[:8]}", institution_id=INSTITUTION_A, terminal_id="POS-R"
    )


async def _writes(pool: asyncpg.Pool) -> tuple[int, ...]:
    """Counts of every table a money call writes: none may change when a call is refused."""
    row = await pool.fetchrow(
        """select (select count(*) from settlement), (select count(*) from refund), (select count(*) from reversal),
                  (select count(*) from ledger_entry), (select count(*) from idempotency_key),
                  (select count(*) from credit)"""
    )
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("withdraw", WAYS)
async def test_settle_right_after_revocation_is_refused(
    api: Api, pool: asyncpg.Pool, listening: int, withdraw: Withdraw
) -> None:
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
async def test_cancel_right_after_revocation_is_refused(
    api: Api, pool: asyncpg.Pool, listening: int, withdraw: Withdraw
) -> None:
    token = await _terminal(pool)
    patient = await api.enroll(balance_fen=10_000)
    settled = (await api.settle(patient, 500, token=token)).settlement
    await withdraw(pool, token)
    before = await _writes(pool)
    await refused(cancel(api, settled.settlement_id, 0, token=token), *INVALID)
    assert await api.balance(patient) == 9_500
    assert await _writes(pool) == before


@pytest.mark.parametrize("withdraw", WAYS)
async def test_reverse_right_after_revocation_is_refused(
    api: Api, pool: asyncpg.Pool, listening: int, withdraw: Withdraw
) -> None:
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
async def test_credit_right_after_revocation_is_refused(
    api: Api, pool: asyncpg.Pool, listening: int, withdraw: Withdraw
) -> None:
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


# Revocation of everything else: the cache, its notifications, and its bound when they are lost.


async def _until(condition: Callable[[], Awaitable[bool]], limit_s: float) -> float:
    """Poll `condition` (bounded: until `limit_s`); return how long it took to hold."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < limit_s, f"not within {limit_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _listener_pid(pool: asyncpg.Pool) -> int | None:
    pid: int | None = await pool.fetchval(
        "select pid from pg_stat_activity where application_name = $1 and datname = current_database()",
        credential_watch.APPLICATION_NAME,
    )
    return pid


@pytest.fixture
async def listening(running: server.Running, pool: asyncpg.Pool) -> int:
    """The server's credential listener is connected (it may be reconnecting after another test);
    its backend's pid."""

    async def connected() -> bool:
        return running.credentials.connection is not None and await _listener_pid(pool) is not None

    await _until(connected, 15)
    pid = await _listener_pid(pool)
    assert pid is not None
    return pid


async def _refused_now(call: Callable[[], Awaitable[object]]) -> bool:
    """Whether the call is refused for its credentials now; any other failure fails the test."""
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        answer = (exc.code(), exc.details())
    else:
        return False
    assert answer == (grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked credentials")
    return True


def _list_family(api: Api, token: str, person_id: str) -> Callable[[], Awaitable[object]]:
    return lambda: api.family.ListFamily(family_pb2.ListFamilyRequest(person_id=person_id), metadata=bearer(token))


def _get_account(api: Api, token: str, person_id: str) -> Callable[[], Awaitable[object]]:
    return lambda: api.account.GetAccount(account_pb2.GetAccountRequest(person_id=person_id), metadata=bearer(token))


async def test_money_calls_do_not_trust_the_warm_cache(api: Api, pool: asyncpg.Pool, listening: int) -> None:
    token = await _terminal(pool)
    patient = await api.enroll(balance_fen=10_000)
    request_id = f"r-{uuid.uuid4()}"
    await api.settle(patient, 100, request_id=request_id, token=token)
    await _revoke_unannounced(pool, token)
    # Without a notification the cache still trusts the credential for reads (bounded by its TTL) ...
    lookup = settlement_pb2.GetSettlementRequest(request_id=request_id)
    await api.settlement.GetSettlement(lookup, metadata=bearer(token))
    # ... but not for money: the check is inside the settlement's own transaction.
    await refused(api.settle(patient, 100, token=token), *INVALID)
    assert await api.balance(patient) == 9_900


@pytest.mark.parametrize(("kind", "call"), [(Kind.APP, _list_family), (Kind.OPERATOR, _get_account)])
async def test_revoked_credential_is_refused_everywhere_within_a_second(
    api: Api, pool: asyncpg.Pool, listening: int, kind: Kind, call: Callable[..., Callable[[], Awaitable[object]]]
) -> None:
    patient = await api.enroll(balance_fen=100)
    revoked, silent = [await credentials.create(pool, kind, f"revocation {uuid.uuid4().hex[:8]}") for _ in "ab"]
    for token in (revoked, silent):
        await call(api, token, patient)()  # the server's cache is warm
    # The cache is trusted longer than its unlistened bound: a change nobody announces is not seen ...
    await _revoke_unannounced(pool, silent)
    await asyncio.sleep(limits.CREDENTIAL_CACHE_UNLISTENED_TTL_S + 0.2)
    assert not await _refused_now(call(api, silent, patient))
    # ... and an announced revocation is, at once.
    await _revoke(pool, revoked)
    took = await _until(lambda: _refused_now(call(api, revoked, patient)), 1.0)
    assert took < 1.0


async def test_when_the_listener_is_cut_off_revocation_still_takes_effect_and_it_reconnects(
    api: Api, pool: asyncpg.Pool, running: server.Running, listening: int
) -> None:
    patient = await api.enroll(balance_fen=100)
    token = await credentials.create(pool, Kind.OPERATOR, f"revocation {uuid.uuid4().hex[:8]}")
    await _get_account(api, token, patient)()  # warm
    losses = REGISTRY.get_sample_value("gongji_credential_listener_losses_total") or 0.0
    assert await pool.fetchval("select pg_terminate_backend($1)", listening)
    # Whatever the listener missed while it was down: an unannounced revocation stands for it.
    await _revoke_unannounced(pool, token)
    bound = limits.CREDENTIAL_CACHE_UNLISTENED_TTL_S + 0.5  # slack for a loaded machine
    took = await _until(lambda: _refused_now(_get_account(api, token, patient)), bound)
    assert took < bound

    async def back() -> bool:
        pid = await _listener_pid(pool)
        return running.credentials.connection is not None and pid is not None and pid != listening

    await _until(back, 15)
    assert REGISTRY.get_sample_value("gongji_credential_listener_losses_total") == losses + 1
    assert REGISTRY.get_sample_value("gongji_credential_listeners_connected") == 1
    # Listening again: an announced revocation is seen at once.
    other = await credentials.create(pool, Kind.OPERATOR, f"revocation {uuid.uuid4().hex[:8]}")
    await _get_account(api, other, patient)()
    changes = REGISTRY.get_sample_value("gongji_credential_changes_total") or 0.0
    await _revoke(pool, other)
    assert await _until(lambda: _refused_now(_get_account(api, other, patient)), 1.0) < 1.0
    assert (REGISTRY.get_sample_value("gongji_credential_changes_total") or 0.0) > changes


async def test_last_use_is_recorded_in_batches(api: Api, pool: asyncpg.Pool, running: server.Running) -> None:
    token = await credentials.create(pool, Kind.OPERATOR, f"revocation {uuid.uuid4().hex[:8]}")
    patient = await api.enroll()
    query = "select last_used_at from credential where token_sha256 = $1"
    assert await pool.fetchval(query, credentials.token_hash(token)) is None
    before = await pool.fetchval("select now()")
    await _get_account(api, token, patient)()
    assert await pool.fetchval(query, credentials.token_hash(token)) is None, "no write per call"
    await running.credentials.flush()
    used = await pool.fetchval(query, credentials.token_hash(token))
    assert used is not None
    assert before - dt.timedelta(seconds=1) <= used <= await pool.fetchval("select now()")


async def test_revoke_returns_only_once_the_money_calls_that_saw_it_live_are_done(api: Api, pool: asyncpg.Pool) -> None:
    """A settlement that read its credential live and waits on a hot account row is still running when
    the operator revokes: `revoke` waits for it (it commits, as it began before the revocation), and
    once `revoke` has returned the next settlement is refused. Nothing of the credential's moves money
    after the operator was told it is revoked."""
    token = await _terminal(pool)
    credential_id = await pool.fetchval(
        "select credential_id from credential where token_sha256 = $1", credentials.token_hash(token)
    )
    patient = await api.enroll(balance_fen=10_000)
    voucher = await api.voucher(patient)
    async with account_row_held(pool, patient):
        settling = asyncio.ensure_future(api.settle(patient, 100, voucher=voucher, token=token))
        for _ in range(200):  # bounded: until the settlement waits for the held row
            if await pool.fetchval(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and wait_event_type = 'Lock' and query like '%gongji_settle(%' and pid <> pg_backend_pid()"
            ):
                break
            await asyncio.sleep(0.05)
        revoking = asyncio.ensure_future(credentials.revoke(pool, str(credential_id)))
        await asyncio.sleep(0.5)
        assert not revoking.done(), "revoke returned while a settlement that saw the credential live still ran"
    settled = await settling
    assert settled.settlement.acct_pay_fen == 100
    assert await asyncio.wait_for(revoking, 30) == credential_id
    await refused(api.settle(patient, 100, token=token), *INVALID)
    assert await api.balance(patient) == 9_900
