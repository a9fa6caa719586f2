"""Session fixtures: a real PostgreSQL (embedded, or GONGJI_TEST_DATABASE_URL) with a fresh database,
and a real gongji gRPC server on a loopback port, started in the tests' own event loop (uvloop)."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import uvloop
from e2e_support import free_port
from support import (
    INSTITUTION_A,
    INSTITUTION_B,
    STATEMENT_CACHE_SIZE,
    Api,
    Tokens,
    used_person_ids,
    with_database,
)

from gongji import demo, logs
from gongji.api import server
from gongji.api.app import App
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.store import audit, credentials, db, migrate
from gongji.store.credentials import Kind

ROOT = Path(__file__).resolve().parent.parent
VOUCHER_KEY = b"test-voucher-key-0123456789abcdef-0123456789"
# The 医保钱包's server with a clock the test holds, for the modules that use it.
pytest_plugins = ["wallet_support", "books_support"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything outside tests/unit needs the database (`make test-external` selects these)."""
    for item in items:
        if "/unit/" not in str(item.path):
            item.add_marker(pytest.mark.db)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run the tests, and so the in-process server, on uvloop as production does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session", autouse=True)
def captured_log() -> Iterator[io.StringIO]:
    """Every log line of the session as production writes it (JSON, INFO). After the suite, no ID
    number that any test used may appear in it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)
    text = out.getvalue()
    leaked = [p for p in (*used_person_ids(), *(p.person_id for p in demo.PEOPLE)) if p in text]
    assert leaked == [], f"{len(leaked)} ID numbers in the log"


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A maintenance-database URL of the PostgreSQL server the suite uses."""
    external = os.environ.get("GONGJI_TEST_DATABASE_URL")
    if external:
        yield external
        return
    url, handle = db.start_embedded(ROOT / ".gongji" / "test", database="postgres")
    yield url
    del handle  # stopped when the test process exits


@pytest.fixture(scope="session")
def direct_server_url(server_url: str) -> str:
    """PostgreSQL itself, for creating databases and migrating: GONGJI_TEST_DIRECT_DATABASE_URL when the
    suite runs through a pooler (scripts/pgbouncer_run.py), else the same server as `server_url`."""
    return os.environ.get("GONGJI_TEST_DIRECT_DATABASE_URL", server_url)


@pytest.fixture(scope="session")
async def db_url(server_url: str, direct_server_url: str) -> AsyncIterator[str]:
    """A fresh database for this session, migrated, dropped afterwards. Created and migrated on
    PostgreSQL directly, as production migrates past PgBouncer; the tests use `server_url`'s route."""
    name = f"gongji_test_{uuid.uuid4().hex[:12]}"
    direct = direct_server_url
    admin = await asyncpg.connect(direct)
    await admin.execute(f'create database "{name}"')
    url = with_database(server_url, name)
    try:
        conn = await asyncpg.connect(with_database(direct, name))
        await migrate.migrate(conn)
        await conn.close()
        yield url
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


@pytest.fixture(scope="session")
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(
        db_url, min_size=2, max_size=20, command_timeout_s=30, statement_cache_size=STATEMENT_CACHE_SIZE
    )
    yield p
    await p.close()


@pytest.fixture(scope="session")
def settings(db_url: str, direct_server_url: str) -> Settings:
    # The credential listener's LISTEN needs a session of its own: PostgreSQL itself, as in production
    # behind PgBouncer (GONGJI_LISTEN_DATABASE_URL), even when the suite's calls go through a pooler.
    name = db_url.partition("?")[0].rsplit("/", 1)[1]
    return Settings(
        database_url=db_url,
        listen_database_url=with_database(direct_server_url, name),
        voucher_key=VOUCHER_KEY.decode(),
        grpc_listen="127.0.0.1:0",
    )


@pytest.fixture(scope="session")
async def server_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The server's own pool, sized like production, apart from the connections tests hold."""
    p = await db.create_pool(
        db_url, min_size=2, max_size=10, command_timeout_s=30, statement_cache_size=STATEMENT_CACHE_SIZE
    )
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def running(settings: Settings, server_pool: asyncpg.Pool) -> AsyncIterator[server.Running]:
    app = App(settings, server_pool, VoucherCodec({"k1": VOUCHER_KEY}, "k1"))
    r = await server.start(app, "127.0.0.1:0")
    yield r
    await r.stop(1.0)


@pytest.fixture(scope="session")
async def tokens(pool: asyncpg.Pool) -> Tokens:
    return Tokens(
        terminal_a=await credentials.create(
            pool, Kind.TERMINAL, "test A", institution_id=INSTITUTION_A, terminal_id="POS-A1"
        ),
        terminal_b=await credentials.create(
            pool, Kind.TERMINAL, "test B", institution_id=INSTITUTION_B, terminal_id="POS-B1"
        ),
        app=await credentials.create(pool, Kind.APP, "test app"),
        operator=await credentials.create(pool, Kind.OPERATOR, "test operator"),
        consumer=await credentials.create(pool, Kind.CONSUMER, "test consumer"),
    )


@pytest.fixture(scope="session")
async def channel(running: server.Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
async def api(channel: grpc.aio.Channel, tokens: Tokens) -> Api:
    return Api(channel, tokens)


@pytest.fixture
async def books(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Use in tests that move money: after the test, the ledger must explain every balance."""
    yield
    assert await audit.differences(pool) == []


@pytest.fixture
def env(server_url: str) -> Iterator[dict[str, str]]:
    """A fresh data dir; the embedded PostgreSQL unless the suite runs against an external server."""
    data_dir = ROOT / ".gongji" / f"e2e-{uuid.uuid4().hex[:8]}"
    e = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
    e |= {
        "GONGJI_DATA_DIR": str(data_dir),
        "GONGJI_GRPC_LISTEN": f"127.0.0.1:{free_port()}",
        "GONGJI_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "GONGJI_GRACE_PERIOD_S": "3",
    }
    external = os.environ.get("GONGJI_TEST_DATABASE_URL")
    name = f"gongji_e2e_{uuid.uuid4().hex[:8]}"
    if external:
        subprocess.run(["psql", external, "-qc", f'create database "{name}"'], check=True)
        e["GONGJI_DATABASE_URL"] = with_database(external, name)
    yield e
    if external:
        subprocess.run(["psql", external, "-qc", f'drop database if exists "{name}" with (force)'], check=True)
    shutil.rmtree(data_dir, ignore_errors=True)
