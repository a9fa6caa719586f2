"""TLS and mTLS with certificates made on the fly, and the limits a client runs into."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from conftest import VOUCHER_KEY
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import reason_of
from pki import Pem, issue
from support import INSTITUTION_A, INSTITUTION_B, Api, account_row_held, bearer

from gongji.api import server
from gongji.api.app import App
from gongji.api.auth import INSTITUTION_URI_PREFIX
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.v1 import account_pb2, account_pb2_grpc, settlement_pb2

S = grpc.StatusCode


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from another CA
    terminal_a: Pem  # names institution A (urn:gongji:institution:...)
    terminal_b: Pem  # names institution B
    two_institutions: Pem  # names A and B


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, ca_name, ca_key = issue("gongji test CA", None, ca=True)
    _, other_name, other_key = issue("someone else's CA", None, ca=True)
    return Pki(
        ca=ca,
        server=issue("localhost", (ca_name, ca_key), ca=False)[0],
        client=issue("POS-A1", (ca_name, ca_key), ca=False)[0],
        stranger=issue("POS-X", (other_name, other_key), ca=False)[0],
        terminal_a=issue("POS-A1", (ca_name, ca_key), ca=False, uris=(_institution_uri(INSTITUTION_A),))[0],
        terminal_b=issue("POS-B1", (ca_name, ca_key), ca=False, uris=(_institution_uri(INSTITUTION_B),))[0],
        two_institutions=issue(
            "POS-AB", (ca_name, ca_key), ca=False, uris=tuple(map(_institution_uri, (INSTITUTION_A, INSTITUTION_B)))
        )[0],
    )


def _institution_uri(institution_id: str) -> str:
    return f"{INSTITUTION_URI_PREFIX}{institution_id}"


def _files(tmp: Path, pki: Pki, *, mtls: bool) -> dict[str, Path]:
    files = {"tls_cert_file": tmp / "server.pem", "tls_key_file": tmp / "server.key"}
    files["tls_cert_file"].write_bytes(pki.server.cert)
    files["tls_key_file"].write_bytes(pki.server.key)
    if mtls:
        files["tls_client_ca_file"] = tmp / "ca.pem"
        files["tls_client_ca_file"].write_bytes(pki.ca.cert)
    return files


@pytest.fixture
async def start(settings: Settings, server_pool: asyncpg.Pool) -> AsyncIterator[object]:
    started: list[server.Running] = []

    async def go(**overrides: object) -> int:
        running = await server.start(
            App(settings.model_copy(update=overrides), server_pool, VoucherCodec({"k1": VOUCHER_KEY}, "k1")),
            "127.0.0.1:0",
        )
        started.append(running)
        return running.port

    yield go
    for running in started:
        await running.stop(1.0)


async def _healthy(channel: grpc.aio.Channel) -> bool:
    """SERVING over this channel; False when the handshake fails (UNAVAILABLE)."""
    code = S.OK
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    assert code in (S.OK, S.UNAVAILABLE), code
    return code == S.OK


def _secure(port: int, pki: Pki, client: Pem | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


async def test_tls_serves_encrypted_and_refuses_plaintext(start: object, pki: Pki, tmp_path: Path, api: Api) -> None:
    port = await start(**_files(tmp_path, pki, mtls=False))  # type: ignore[operator]
    async with _secure(port, pki, None) as ch:
        assert await _healthy(ch)
        person = await api.enroll()
        reply = await account_pb2_grpc.AccountServiceStub(ch).GetAccount(
            account_pb2.GetAccountRequest(person_id=person), metadata=bearer(api.tokens.operator)
        )
        assert reply.account.person_id == person
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert not await _healthy(ch)


async def test_mtls_requires_a_client_certificate_from_the_configured_ca(
    start: object, pki: Pki, tmp_path: Path
) -> None:
    port = await start(**_files(tmp_path, pki, mtls=True))  # type: ignore[operator]
    async with _secure(port, pki, pki.client) as ch:
        assert await _healthy(ch)
    for client in (None, pki.stranger):
        async with _secure(port, pki, client) as ch:
            assert not await _healthy(ch)


async def test_with_mtls_a_terminals_institution_is_the_one_its_certificate_names(
    start: object, pki: Pki, tmp_path: Path, api: Api, pool: asyncpg.Pool
) -> None:
    """Institution A's token settles over A's certificate; over B's certificate, over one that names no
    institution or two, it is refused (INSTITUTION_MISMATCH) and nothing is written. Operators and the
    app backend need no institution in their certificates."""
    port = await start(**_files(tmp_path, pki, mtls=True))  # type: ignore[operator]
    patient = await api.enroll(balance_fen=1_000)

    async def settle(client: Pem, token: str) -> str:
        async with _secure(port, pki, client) as ch:
            try:
                await Api(ch, api.tokens).settle(patient, 100, voucher=await api.voucher(patient), token=token)
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}/{reason_of(error)}"
            return "OK"

    assert await settle(pki.terminal_a, api.tokens.terminal_a) == "OK"
    assert await settle(pki.terminal_b, api.tokens.terminal_b) == "OK"
    settled = await pool.fetchval("select count(*) from settlement where patient_id = $1", patient)
    for client, token in (
        (pki.terminal_b, api.tokens.terminal_a),
        (pki.terminal_a, api.tokens.terminal_b),
        (pki.client, api.tokens.terminal_a),
        (pki.two_institutions, api.tokens.terminal_a),
    ):
        assert await settle(client, token) == "PERMISSION_DENIED/INSTITUTION_MISMATCH"
    assert await pool.fetchval("select count(*) from settlement where patient_id = $1", patient) == settled
    assert await api.balance(patient) == 800
    async with _secure(port, pki, pki.client) as ch:
        reconciled = await Api(ch, api.tokens).settlement.Reconcile(
            settlement_pb2.ReconcileRequest(date="2026-01-05", institution_id=INSTITUTION_A),
            metadata=bearer(api.tokens.operator),
        )
        assert reconciled.institution_id == INSTITUTION_A


async def test_without_mtls_the_institution_comes_from_the_token(api: Api) -> None:
    patient = await api.enroll(balance_fen=1_000)
    settled = await api.settle(patient, 100, token=api.tokens.terminal_b)
    assert settled.settlement.institution_id == INSTITUTION_B


async def test_concurrent_rpcs_beyond_the_limit_are_resource_exhausted(
    start: object, api: Api, pool: asyncpg.Pool
) -> None:
    port = await start(max_concurrent_rpcs=1)  # type: ignore[operator]
    patient = await api.enroll(balance_fen=1_000)
    voucher = await api.voucher(patient)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        limited = Api(ch, api.tokens)
        async with account_row_held(pool, patient):
            held = asyncio.ensure_future(limited.settle(patient, 100, voucher=voucher))
            for _ in range(200):  # bounded: until the settlement waits for the held row
                if await pool.fetchval(
                    "select count(*) from pg_stat_activity"
                    " where datname = current_database() and wait_event_type = 'Lock'"
                    " and query like '%gongji_settle(%' and pid <> pg_backend_pid()"
                ):
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await limited.balance(patient)
            assert caught.value.code() == S.RESOURCE_EXHAUSTED
            assert reason_of(caught.value) == "SERVER_BUSY"
        assert (await held).settlement.acct_pay_fen == 100
        assert await limited.balance(patient) == 900


async def test_a_message_over_the_size_limit_is_resource_exhausted(api: Api) -> None:
    huge = account_pb2.EnrollRequest(person_id="11010519491231002X", name="名" * 400_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.account.Enroll(huge, metadata=bearer(api.tokens.operator))
    assert caught.value.code() == S.RESOURCE_EXHAUSTED
    assert await api.enroll() != "", "the server keeps serving"
