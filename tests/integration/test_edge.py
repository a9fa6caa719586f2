"""The edge of the server: a call's request message must follow its headers within the wait; a call
that ends without one, or comes without credentials, is refused at once with an ErrorInfo; and the
server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from conftest import VOUCHER_KEY
from harness import reason_of
from support import INSTITUTION_A, Tokens, bearer, new_person_id

from gongji.api import server
from gongji.api.app import App
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.store import credentials
from gongji.v1 import account_pb2, settlement_pb2, settlement_pb2_grpc

S = grpc.StatusCode
GET_ACCOUNT = "/gongji.v1.AccountService/GetAccount"
WAIT_S = 0.5
BURST = 300  # far more than UNKNOWN_TOKEN_LOOKUPS_PER_S


@pytest.fixture(scope="module")
async def edge_server(db_url: str, server_pool: asyncpg.Pool) -> AsyncIterator[server.Running]:
    """A server of this module's own whose request-message wait is short."""
    settings = Settings(
        database_url=db_url, voucher_key=VOUCHER_KEY.decode(), grpc_listen="127.0.0.1:0", request_message_wait_s=WAIT_S
    )
    running = await server.start(App(settings, server_pool, VoucherCodec({"k1": VOUCHER_KEY}, "k1")), "127.0.0.1:0")
    try:
        yield running
    finally:
        await running.stop(1.0)


@pytest.fixture(scope="module")
async def edge(edge_server: server.Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge_server.port}") as channel:
        yield channel


def _serialize(message: account_pb2.GetAccountRequest) -> bytes:
    return message.SerializeToString()


async def test_a_stream_that_sends_no_message_is_ended_after_the_wait(edge: grpc.aio.Channel, tokens: Tokens) -> None:
    call = edge.stream_unary(GET_ACCOUNT, request_serializer=_serialize)(metadata=bearer(tokens.operator))
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == S.RESOURCE_EXHAUSTED
    assert reason_of(refused.value) == "REQUEST_MESSAGE_TIMEOUT"
    assert time.monotonic() - started >= WAIT_S


async def test_a_call_that_ends_without_a_message_is_invalid(edge: grpc.aio.Channel, tokens: Tokens) -> None:
    call = edge.stream_unary(GET_ACCOUNT, request_serializer=_serialize)(metadata=bearer(tokens.operator))
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == S.INVALID_ARGUMENT
    assert reason_of(refused.value) == "INVALID_ARGUMENT"


async def test_no_credentials_are_refused_before_any_message(edge: grpc.aio.Channel) -> None:
    """Refused at the headers: well before the message wait would end the call."""
    call = edge.stream_unary(GET_ACCOUNT, request_serializer=_serialize)()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == S.UNAUTHENTICATED
    assert reason_of(refused.value) == "CREDENTIALS_MISSING"
    assert time.monotonic() - started < WAIT_S


async def test_the_server_serves_after_them(edge: grpc.aio.Channel, tokens: Tokens) -> None:
    stub = edge.unary_unary(GET_ACCOUNT, request_serializer=_serialize)
    with pytest.raises(grpc.aio.AioRpcError) as answered:
        await stub(account_pb2.GetAccountRequest(person_id=new_person_id()), metadata=bearer(tokens.operator))
    assert reason_of(answered.value) == "PERSON_NOT_FOUND"  # a real answer from the database


async def test_a_burst_from_a_credential_not_seen_yet_is_answered(
    edge_server: server.Running, edge: grpc.aio.Channel, pool: asyncpg.Pool
) -> None:
    """Hundreds of calls at once with a token no cache holds yet, and that the server's set of live
    tokens has not heard of (inserted with the announcing trigger off, as when its notification is
    still on its way): they share one look-up, none is refused, and only the first spends the
    allowance of look-ups for unknown tokens."""
    for _ in range(100):  # bounded: until the server holds the set of live tokens
        if edge_server.credentials.connection is not None:
            break
        await asyncio.sleep(0.05)
    token = credentials.new_token()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("alter table credential disable trigger credential_created")
        await conn.execute(
            "insert into credential (token_sha256, kind, institution_id, terminal_id, label)"
            " values ($1, 'TERMINAL', $2, 'POS-BURST', 'burst')",
            credentials.token_hash(token),
            INSTITUTION_A,
        )
        await conn.execute("alter table credential enable trigger credential_created")
    stub = settlement_pb2_grpc.SettlementServiceStub(edge)
    request = settlement_pb2.ReconcileRequest(date="2026-01-05")
    results = await asyncio.gather(
        *(stub.Reconcile(request, metadata=bearer(token), timeout=30) for _ in range(BURST)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert refused == [], refused[:3]
