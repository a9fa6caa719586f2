"""A gongji server of a test's own, over a database of its own, for the suites that do what the shared
session server must not suffer: hostile input that may change region policy, a model that owns every
row, chaos that kills the server's database connections. Also the checks those suites share: a
fingerprint of everything the store holds, the process's memory, and the one ErrorInfo of a status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import uvloop
from conftest import VOUCHER_KEY
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from support import INSTITUTION_A, INSTITUTION_B, Api, Tokens, with_database

from gongji import logs
from gongji.api import server
from gongji.api.app import App
from gongji.clock import SYSTEM_CLOCK, Clock
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.store import credentials, db, migrate
from gongji.store.credentials import Kind

CODEC = VoucherCodec({"k1": VOUCHER_KEY}, "k1")


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A new, migrated database on the suite's PostgreSQL server; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    try:
        url = with_database(server_url, name)
        conn = await asyncpg.connect(url)
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        # A connection of its own: the server may have been restarted since (tests/chaos).
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()


@dataclass
class Served:
    running: server.Running
    pool: asyncpg.Pool  # the server's own pool (application_name 'gongji')
    channel: grpc.aio.Channel
    api: Api
    db_url: str

    @property
    def tokens(self) -> Tokens:
        return self.api.tokens

    async def health(self) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        reply = await health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return reply.status


async def make_tokens(pool: asyncpg.Pool) -> Tokens:
    return Tokens(
        terminal_a=await credentials.create(
            pool, Kind.TERMINAL, "own A", institution_id=INSTITUTION_A, terminal_id="POS-A9"
        ),
        terminal_b=await credentials.create(
            pool, Kind.TERMINAL, "own B", institution_id=INSTITUTION_B, terminal_id="POS-B9"
        ),
        app=await credentials.create(pool, Kind.APP, "own app"),
        operator=await credentials.create(pool, Kind.OPERATOR, "own operator"),
        consumer=await credentials.create(pool, Kind.CONSUMER, "own consumer"),
    )


@contextlib.asynccontextmanager
async def serving(
    db_url: str, *, pool_max_size: int = 10, command_timeout_s: float = 30, clock: Clock = SYSTEM_CLOCK
) -> AsyncIterator[Served]:
    """gongji on a free loopback port over `db_url`, in the running event loop, with fresh tokens, on
    `clock` (a test's ManualClock moves the 医保钱包's time of day)."""
    pool = await db.create_pool(db_url, min_size=2, max_size=pool_max_size, command_timeout_s=command_timeout_s)
    try:
        settings = Settings(database_url=db_url, voucher_key=VOUCHER_KEY.decode(), grpc_listen="127.0.0.1:0")
        running = await server.start(App(settings, pool, CODEC, clock), "127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                yield Served(running, pool, channel, Api(channel, await make_tokens(pool)), db_url)
        finally:
            await running.stop(1.0)
    finally:
        await pool.close()


# Everything a call could change, in one row: counts of every table, and the sums and states that an
# UPDATE moves (balances, refunds, used vouchers, live grants and bindings, re-enrolments).
_FINGERPRINT = """
select (select count(*) from person) as people,
       (select max(updated_at) from person) as people_updated,
       (select count(*) from account) as accounts,
       (select coalesce(sum(balance_fen), 0) from account) as balances_fen,
       (select max(updated_at) from account) as accounts_updated,
       (select count(*) from ledger_entry) as ledger_entries,
       (select count(*) from credit) as credits,
       (select count(*) from settlement) as settlements,
       (select coalesce(sum(refunded_fen), 0) from settlement) as refunded_fen,
       (select count(*) from settlement where reversed_at is not null) as reversed,
       (select count(*) from refund) as refunds,
       (select count(*) from reversal) as reversals,
       (select count(*) from voucher) as vouchers,
       (select count(*) from voucher where used_at is not null) as vouchers_used,
       (select count(*) from mutual_aid_grant) as grants,
       (select count(*) from mutual_aid_grant where status = 'LIVE') as grants_live,
       (select count(*) from kinship_binding) as bindings,
       (select count(*) from kinship_binding where ended_at is null) as bindings_live,
       (select count(*) from idempotency_key) as idempotency_keys,
       (select count(*) from region_policy) as policies,
       (select max(updated_at) from region_policy) as policies_updated,
       (select count(*) from credential) as credentials,
       (select count(*) from institution) as institutions"""


# The premium tables (0006), counted where they exist: tests/integration/test_upgrade.py fingerprints a
# database of the migrations released before them.
_PREMIUM_FINGERPRINT = """
select (select count(*) from premium_rate) as premium_rates,
       (select max(updated_at) from premium_rate) as premium_rates_updated,
       (select count(*) from premium_payment) as premium_payments,
       (select count(*) from premium_payment where refunded_at is not null) as premium_refunds"""


# The 医保钱包's tables (0016), where they exist: wallets, their money, transfers by state, entries.
_WALLET_FINGERPRINT = """
select (select count(*) from wallet) as wallets,
       (select coalesce(sum(balance_fen), 0) from wallet) as wallet_balances_fen,
       (select max(updated_at) from wallet) as wallets_updated,
       (select count(*) from wallet_transfer) as transfers,
       (select count(*) from wallet_transfer where state = 'PENDING') as transfers_pending,
       (select count(*) from wallet_transfer where resolved_at is not null) as transfers_resolved,
       (select count(*) from wallet_entry) as wallet_entries"""


async def fingerprint(conn: asyncpg.Pool | asyncpg.Connection) -> dict[str, object]:
    row = await conn.fetchrow(_FINGERPRINT)
    assert row is not None
    found = dict(row)
    if await conn.fetchval("select to_regclass('premium_payment') is not null"):
        premium = await conn.fetchrow(_PREMIUM_FINGERPRINT)
        assert premium is not None
        found |= dict(premium)
    if await conn.fetchval("select to_regclass('wallet_transfer') is not null"):
        wallets = await conn.fetchrow(_WALLET_FINGERPRINT)
        assert wallets is not None
        found |= dict(wallets)
    return found


@contextlib.contextmanager
def logs_not_kept() -> Iterator[None]:
    """While open, log lines are formatted and written as production writes them (JSON to a stream) but
    not kept. The suite's own handlers (the ID-leak check's and pytest's capture) keep every line, so
    under a flood of calls the process would grow by what the test keeps, not by what the server does."""
    root = logging.getLogger()
    kept = root.handlers[:]
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        sink = logging.StreamHandler(devnull)
        sink.setFormatter(logs.JsonFormatter())
        root.handlers = [sink]
        try:
            yield
        finally:
            root.handlers = kept


def rss_kib() -> int:
    """Resident memory of this process, which includes the in-process server (VmRSS, in KiB)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def error_infos(error: grpc.aio.AioRpcError) -> list[error_details_pb2.ErrorInfo]:
    status = rpc_status.from_call(error)
    if status is None:
        return []
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The reason of the status's one gongji ErrorInfo (asserting there is exactly one)."""
    infos = error_infos(error)
    assert len(infos) == 1, (error.code(), error.details(), infos)
    assert infos[0].domain == "gongji", infos[0]
    return infos[0].reason


@contextlib.contextmanager
def own_loop_server(server_url: str, prefix: str, **kw: Any) -> Iterator[tuple[asyncio.Runner, Served]]:
    """A fresh database and a gongji server in an event loop of the caller's own (uvloop, as in
    production), for synchronous tests that drive it step by step: hypothesis' @given and state
    machines are synchronous, so each step is `runner.run(...)`."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        database = fresh_database(server_url, prefix)
        url = runner.run(database.__aenter__())
        try:
            server_cm = serving(url, **kw)
            served = runner.run(server_cm.__aenter__())
            try:
                yield runner, served
            finally:
                runner.run(server_cm.__aexit__(None, None, None))
        finally:
            runner.run(database.__aexit__(None, None, None))
