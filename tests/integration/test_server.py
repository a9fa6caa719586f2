"""Credentials, permissions, unimplemented RPCs, health and reflection on the real server."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from conftest import VOUCHER_KEY
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import Served, fresh_database, serving
from support import Api, Tokens, bearer, refused

from gongji.api import server
from gongji.api.app import App
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.store import db
from gongji.v1 import account_pb2, family_pb2, settlement_pb2

S = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_missing_and_unknown_credentials(api: Api) -> None:
    request = account_pb2.GetAccountRequest(person_id="61010219920315402X")
    await refused(api.account.GetAccount(request), S.UNAUTHENTICATED, "CREDENTIALS_MISSING")
    await refused(api.account.GetAccount(request, metadata=bearer("gj_nope")), S.UNAUTHENTICATED, "CREDENTIALS_INVALID")
    await refused(
        api.account.GetAccount(request, metadata=(("authorization", "Basic abc"),)),
        S.UNAUTHENTICATED,
        "CREDENTIALS_INVALID",
    )


async def test_each_credential_reaches_only_its_service(api: Api) -> None:
    get_account = account_pb2.GetAccountRequest(person_id="61010219920315402X")
    enroll = account_pb2.EnrollRequest(person_id="61010219920315402X")
    issue = family_pb2.IssueVoucherRequest(person_id="61010219920315402X")
    quote = settlement_pb2.QuoteRequest()
    await refused(
        api.account.GetAccount(get_account, metadata=bearer(api.tokens.terminal_a)), S.PERMISSION_DENIED, "NOT_ALLOWED"
    )
    for token in (api.tokens.terminal_a, api.tokens.app):
        await refused(api.account.Enroll(enroll, metadata=bearer(token)), S.PERMISSION_DENIED, "NOT_ALLOWED")
    for token in (api.tokens.terminal_a, api.tokens.operator):
        await refused(api.family.IssueVoucher(issue, metadata=bearer(token)), S.PERMISSION_DENIED, "NOT_ALLOWED")
    for token in (api.tokens.app, api.tokens.operator):
        await refused(api.settlement.Quote(quote, metadata=bearer(token)), S.PERMISSION_DENIED, "NOT_ALLOWED")


async def test_the_app_reads_accounts_and_history_but_terminals_do_not(api: Api) -> None:
    person = await api.enroll(balance_fen=100)
    get = account_pb2.GetAccountRequest(person_id=person)
    history = account_pb2.ListLedgerRequest(person_id=person)
    assert (await api.account.GetAccount(get, metadata=bearer(api.tokens.app))).account.balance_fen == 100
    assert len((await api.account.ListLedger(history, metadata=bearer(api.tokens.app))).entries) == 1
    await refused(
        api.account.ListLedger(history, metadata=bearer(api.tokens.terminal_a)), S.PERMISSION_DENIED, "NOT_ALLOWED"
    )
    await refused(
        api.account.Credit(account_pb2.CreditRequest(), metadata=bearer(api.tokens.app)),
        S.PERMISSION_DENIED,
        "NOT_ALLOWED",
    )


async def test_only_the_app_pays_premiums_and_only_operators_set_rates_and_refund(api: Api) -> None:
    """PayPremium moves an insured person's money at their request, through their app: a terminal or
    an operator may not. Rates, refunds and the report are the insurer's: the app may not."""
    pay = account_pb2.PayPremiumRequest(request_id="x", payer_id="61010219920315402X", beneficiary_id="1", year=1)
    for token in (api.tokens.terminal_a, api.tokens.operator):
        await refused(api.account.PayPremium(pay, metadata=bearer(token)), S.PERMISSION_DENIED, "NOT_ALLOWED")
    app = bearer(api.tokens.app)
    for call, request in (
        (api.account.SetPremiumRate, account_pb2.SetPremiumRateRequest()),
        (api.account.ListPremiumRates, account_pb2.ListPremiumRatesRequest()),
        (api.account.RefundPremium, account_pb2.RefundPremiumRequest()),
        (api.account.ReportPremiums, account_pb2.ReportPremiumsRequest()),
    ):
        await refused(call(request, metadata=app), S.PERMISSION_DENIED, "NOT_ALLOWED")
    # Past authorization, the app's PayPremium reaches validation (its fields are bad).
    await refused(api.account.PayPremium(pay, metadata=app), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")


async def test_health_needs_no_credentials(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "gongji.v1.SettlementService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for reply in stub.ServerReflectionInfo(one()):
        names |= {s.name for s in reply.list_services_response.service}
    assert {"gongji.v1.SettlementService", "gongji.v1.FamilyService", "gongji.v1.AccountService"} <= names


async def test_graceful_stop_finishes_in_flight_settlements(
    api: Api, pool: asyncpg.Pool, server_pool: asyncpg.Pool, settings: Settings
) -> None:
    """Stop accepting, finish what is in flight within the grace period."""
    second = await server.start(App(settings, server_pool, VoucherCodec({"k1": VOUCHER_KEY}, "k1")), "127.0.0.1:0")
    patient = await api.enroll(balance_fen=1_000)
    voucher = await api.voucher(patient)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as ch:
        other = Api(ch, api.tokens)
        async with pool.acquire() as blocker:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("select 1 from account where person_id = $1 for update", patient)
            in_flight = asyncio.ensure_future(other.settle(patient, 300, voucher=voucher))
            await asyncio.sleep(0.3)
            stopping = asyncio.ensure_future(second.stop(5.0))
            await asyncio.sleep(0.3)
            await tx.rollback()
        reply = await in_flight
        await stopping
        assert reply.settlement.acct_pay_fen == 300
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await other.settle(patient, 1, deadline_s=2)
        assert caught.value.code() == S.UNAVAILABLE
    assert await api.balance(patient) == 700


@pytest.mark.parametrize(
    "payload",
    [
        b"\x12\x02\xff\xfe",  # field 2 (name): a string that is not UTF-8
        b"\xff\xff\xff\xff",  # not a message at all
    ],
)
async def test_undecodable_requests_are_invalid_argument(channel: grpc.aio.Channel, api: Api, payload: bytes) -> None:
    enroll = channel.unary_unary("/gongji.v1.AccountService/Enroll")
    await refused(enroll(payload, metadata=bearer(api.tokens.operator)), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    # Still authenticated first, and the server keeps serving.
    await refused(enroll(payload), S.UNAUTHENTICATED, "CREDENTIALS_MISSING")
    assert (await api.enroll()) != ""


async def test_a_connection_killed_inside_a_transaction_answers_unavailable(api: Api, pool: asyncpg.Pool) -> None:
    """Regression (found by the chaos suite): a server connection terminated while a Credit waited for
    a row lock inside its transaction answered INTERNAL, because asyncpg reports the loss as the
    failure of the rollback that follows. It is UNAVAILABLE, and the retry credits exactly once."""
    person = await api.enroll(balance_fen=100)
    request_id = f"killed-{person}"
    async with pool.acquire() as blocker:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("select 1 from account where person_id = $1 for update", person)
        crediting = asyncio.ensure_future(api.credit(person, 50, request_id=request_id))
        waiting = None
        for _ in range(200):  # bounded: until the credit waits for the row (10 s at most)
            waiting = await pool.fetchval(
                "select pid from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()"
                " and query like '%from account where person_id = $1 for update%' and pid <> $1",
                blocker.get_server_pid(),
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the credit never waited for the row lock"
        assert await pool.fetchval("select pg_terminate_backend($1)", waiting)
        await refused(crediting, S.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        await tx.rollback()
    assert not (await api.credit(person, 50, request_id=request_id)).replayed
    assert (await api.credit(person, 50, request_id=request_id)).replayed
    assert await api.balance(person) == 150


async def _health_until(served: Served, wanted: int) -> int:
    """Poll health until it reports `wanted` (bounded: 20 s), and answer what it reported last."""
    status = await served.health()
    for _ in range(200):
        if status == wanted:
            break
        await asyncio.sleep(0.1)
        status = await served.health()
    return status


async def test_health_follows_the_database(server_url: str) -> None:
    """NOT_SERVING while the database takes no connections, SERVING again once it does, without a
    restart of gongji; then calls are answered again."""
    async with fresh_database(server_url, "gongji_health") as url, serving(url) as served:
        person = await served.api.enroll(balance_fen=10)
        name = url.split("?")[0].rsplit("/", 1)[1]
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'alter database "{name}" allow_connections false')
            await admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1", name)
            assert await _health_until(served, NOT_SERVING) == NOT_SERVING
        finally:
            await admin.execute(f'alter database "{name}" allow_connections true')
            await admin.close()
        assert await _health_until(served, SERVING) == SERVING
        assert await served.api.balance(person) == 10


async def test_a_database_that_is_not_there_answers_unavailable_and_not_serving(settings: Settings) -> None:
    """Regression (found by the PostgreSQL restart in tests/chaos): while a local PostgreSQL is down its
    Unix socket is gone, and connecting raised FileNotFoundError, which answered INTERNAL. It is
    UNAVAILABLE, promptly, and health reports NOT_SERVING."""
    missing = Path(tempfile.gettempdir()) / f"gongji-no-such-socket-dir-{uuid.uuid4().hex}"
    url = f"postgresql://postgres@/gongji?host={missing}"
    pool = await db.create_pool(url, min_size=0, max_size=2, command_timeout_s=5)
    try:
        running = await server.start(App(settings, pool, VoucherCodec({"k1": VOUCHER_KEY}, "k1")), "127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                served = Served(running, pool, ch, Api(ch, Tokens("a", "b", "c", "d")), url)
                # Authentication asks the database first, so any call meets its absence.
                rpc = ch.unary_unary("/gongji.v1.AccountService/ListRegionPolicies")
                await refused(rpc(b"", metadata=bearer("gj_x"), timeout=30), S.UNAVAILABLE, "DATABASE_UNAVAILABLE")
                assert await _health_until(served, NOT_SERVING) == NOT_SERVING
        finally:
            await running.stop(1.0)
    finally:
        await pool.close()
