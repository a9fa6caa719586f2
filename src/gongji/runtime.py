"""Start-up and shut-down of a gongji process: database, migrations, servers, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from pydantic import SecretStr

from gongji import demo, metrics
from gongji.api import server
from gongji.api.app import App
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.store import db, migrate, people

log = logging.getLogger(__name__)

# Keeps the embedded PostgreSQL's handle alive for the life of the process (it stops at exit).
_embedded: list[Any] = []


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    url, handle = db.start_embedded(settings.data_dir.resolve())
    _embedded.append(handle)
    return url


@contextlib.asynccontextmanager
async def database(settings: Settings, *, migrate_schema: bool = True) -> AsyncIterator[asyncpg.Pool]:
    url = database_url(settings)
    pool = await db.patiently(
        lambda: db.create_pool(
            url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            command_timeout_s=settings.db_command_timeout_s,
            statement_cache_size=settings.db_statement_cache_size,
        ),
        settings.db_start_wait_s,
    )
    try:
        if migrate_schema:
            # Tried again like the pool itself while the database is not reachable (or restarts under the
            # first statements): a migration that fails rolls back whole, so it may simply run again.
            applied = await db.patiently(lambda: _migrate(settings, pool), settings.db_start_wait_s, "migrations")
            metrics.MIGRATIONS_APPLIED.inc(len(applied))
        yield pool
    finally:
        await pool.close()


async def _migrate(settings: Settings, pool: asyncpg.Pool) -> list[migrate.Migration]:
    """Through the pool, or over one direct connection when GONGJI_MIGRATE_DATABASE_URL is set: the
    migration lock is a session lock, which PgBouncer in transaction mode would lose between statements."""
    if settings.migrate_database_url is None:
        async with pool.acquire() as conn:
            return await migrate.migrate(conn)
    direct_url = settings.migrate_database_url.get_secret_value()
    direct = await db.patiently(
        lambda: asyncpg.connect(direct_url, command_timeout=60), settings.db_start_wait_s, "migration database"
    )
    try:
        return await migrate.migrate(direct)
    finally:
        await direct.close()


def voucher_codec(settings: Settings) -> VoucherCodec:
    return VoucherCodec(settings.voucher_keys(), settings.voucher_key_id)


_FIRST_CALL = """
gongji is serving gRPC on {grpc} and metrics on http://{metrics}/metrics
Demo data: the 小明/小丽 family (README.md, "Two commands"); tokens in {tokens}
Now 李小丽's own account holds {xiaoli} yuan and 王小明's {xiaoming} (he granted her mutual aid). A
settlement for her pays from her account first, then from his, the rest in cash; to make one of 35.00 yuan:
    .venv/bin/gongji client settle --patient demo:xiaoli --amount-fen 3500
"""


def _yuan(fen: int | None) -> str:
    return "-" if fen is None else f"{fen // 100}.{fen % 100:02d}"


async def _first_call(settings: Settings, pool: asyncpg.Pool) -> str:
    """The banner, with the balances as they are now (a restart after a few settlements says so)."""
    xiaoli, xiaoming = [await people.get_account(pool, p.person_id) for p in (demo.XIAOLI, demo.XIAOMING)]
    return _FIRST_CALL.format(
        grpc=settings.grpc_listen,
        metrics=settings.metrics_listen,
        tokens=settings.data_dir / "demo-tokens.json",
        xiaoli=_yuan(xiaoli.balance_fen if xiaoli else None),
        xiaoming=_yuan(xiaoming.balance_fen if xiaoming else None),
    )


async def prepare(settings: Settings, *, load_demo: bool) -> str:
    """What the parent of `--workers` does once: start the database if embedded, migrate, load the
    demo data; return the database URL for the workers."""
    url = database_url(settings)
    async with database(settings.model_copy(update={"database_url": SecretStr(url)})) as pool:
        if load_demo:
            await demo.seed(pool, settings.data_dir)
            banner = await _first_call(settings, pool)
    if load_demo:
        print(banner, file=sys.stderr, flush=True)
    return url


async def serve_worker(settings: Settings) -> None:
    """One of `--workers`: its own pool and server on the shared port, until SIGTERM."""
    async with database(settings, migrate_schema=False) as pool:
        app = App(settings, pool, voucher_codec(settings))
        running = await server.start(app, settings.grpc_listen, reuse_port=True)
        publisher = asyncio.ensure_future(metrics.publish_pool_gauges(pool))

        async def close() -> None:
            publisher.cancel()

        await server.run_until_signalled(running, settings.grace_period_s, close)


async def serve(settings: Settings, *, load_demo: bool) -> None:
    # The URL known before the pool exists (an embedded server's too), for the credential listener.
    settings = settings.model_copy(update={"database_url": SecretStr(database_url(settings))})
    async with database(settings) as pool:
        app = App(settings, pool, voucher_codec(settings))
        if load_demo:
            await demo.seed(pool, settings.data_dir)
        metrics.serve_http(settings.metrics_listen)
        running = await server.start(app, settings.grpc_listen)
        log.info("serving gRPC on %s (port %d)", settings.grpc_listen, running.port)
        if running.health_port is not None:
            log.info("serving grpc.health.v1 alone, plaintext, on %s", settings.health_listen)
        if load_demo:
            print(await _first_call(settings, pool), file=sys.stderr, flush=True)

        async def close() -> None:
            pass  # the pool closes when `database` exits; the embedded server stops at process exit

        await server.run_until_signalled(running, settings.grace_period_s, close)
