"""A connection goes back to the pool without a round trip only when it is known clean (store/db.py,
Connection); any other release resets it, and a connection the reset cannot clean is discarded.

Each test leaves one kind of dirt on the only connection of a one-connection pool, gives it back, and
looks at what the next borrower gets. The pool talks to PostgreSQL itself (session state is what this
is about, which a transaction-mode pooler would scatter over its own connections).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from importlib import resources

import asyncpg
import pytest
from support import with_database

from gongji.store import db, migrate

pytestmark = pytest.mark.db


@pytest.fixture
async def one(db_url: str, direct_server_url: str) -> AsyncIterator[asyncpg.Pool]:
    name = db_url.partition("?")[0].rsplit("/", 1)[1]
    p = await db.create_pool(with_database(direct_server_url, name), min_size=1, max_size=1, command_timeout_s=5)
    yield p
    await p.close()


class Sent:
    """The statements a connection sends, as asyncpg's query loggers see them (called soon after)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        self.queries.append(record.query)

    async def resets(self) -> int:
        await asyncio.sleep(0.05)
        return sum("pg_advisory_unlock_all" in q for q in self.queries)


async def _backend(pool: asyncpg.Pool) -> int:
    pid: int = await pool.fetchval("select pg_backend_pid()")
    return pid


async def test_a_known_clean_statement_releases_without_a_round_trip(one: asyncpg.Pool) -> None:
    sent = Sent()
    async with one.acquire() as conn:
        conn.add_query_logger(sent)
    await sent.resets()
    sent.queries.clear()
    for _ in range(3):
        assert dict(await db.fetchrow(one, "select 1 as x") or {}) == {"x": 1}
    assert await sent.resets() == 0, sent.queries
    assert sent.queries == ["select 1 as x"] * 3

    # The same statement through the pool's own shortcut is not known clean: reset on release.
    await one.fetchval("select 1")
    assert await sent.resets() == 1


async def test_an_open_transaction_is_rolled_back(one: asyncpg.Pool) -> None:
    async with one.acquire() as conn:
        await conn.execute("begin")
        await conn.execute("create temp table left_behind (x int) on commit drop")
    # A fresh statement outside any transaction: its transaction started with it.
    assert await one.fetchval("select to_regclass('pg_temp.left_behind') is null")


async def test_session_state_is_reset(one: asyncpg.Pool) -> None:
    pid = await _backend(one)
    async with one.acquire() as conn:
        await conn.execute("set statement_timeout = '1234ms'")
        await conn.execute("select pg_advisory_lock(4242)")
        await conn.execute("listen gongji_test_channel")
        async with conn.transaction():
            await conn.execute("declare kept cursor with hold for select 1")
    async with one.acquire() as conn:
        assert await _backend(conn) == pid, "the same session, cleaned"
        assert await conn.fetchval("show statement_timeout") == "0"
        assert await conn.fetchval("select count(*) from pg_locks where locktype = 'advisory' and pid = $1", pid) == 0
        assert await conn.fetchval("select count(*) from pg_listening_channels()") == 0
        assert await conn.fetchval("select count(*) from pg_cursors where name = 'kept'") == 0


async def test_a_failed_statement_is_not_known_clean(one: asyncpg.Pool) -> None:
    sent = Sent()
    async with one.acquire() as conn:
        conn.add_query_logger(sent)
    await sent.resets()
    sent.queries.clear()
    with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
        await db.fetchrow(one, "select 1 / 0")
    assert await sent.resets() == 1
    assert dict(await db.fetchrow(one, "select 2 as x") or {}) == {"x": 2}


async def test_a_statement_cut_off_leaves_no_transaction_and_no_lock(one: asyncpg.Pool) -> None:
    """A call cancelled mid-statement (a client gone, a deadline): the statement holds a transaction-level
    lock when it is cut off. The next borrower gets a connection in no transaction, holding nothing."""
    pid = await _backend(one)
    task = asyncio.ensure_future(
        db.fetchrow(one, "select pg_advisory_xact_lock(4343), pg_sleep(2), pg_advisory_lock(4444)")
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with one.acquire() as conn:
        assert not conn.is_in_transaction()
        holders = "select count(*) from pg_locks where locktype = 'advisory' and pid = $1"
        assert await conn.fetchval(holders, await _backend(conn)) == 0
        assert await conn.fetchval(holders, pid) == 0


def test_our_sql_takes_no_session_state() -> None:
    """What makes a completed statement of ours known clean: none of our server-side code takes state
    that outlives its transaction (session advisory locks, SET without LOCAL, set_config for the
    session, LISTEN, cursors WITH HOLD, temporary tables, prepared statements)."""
    session_state = re.compile(
        r"pg_(try_)?advisory_lock(_shared)?\s*\(|set_config\s*\([^)]*false\s*\)|^\s*set\s+(?!local\b)"
        r"|\blisten\b|\bwith\s+hold\b|\bcreate\s+temp|\bprepare\b",
        re.IGNORECASE | re.MULTILINE,
    )
    folder = resources.files("gongji.store").joinpath("sql")
    for name in migrate.CODE_FILES:
        text = re.sub(r"--[^\n]*", "", folder.joinpath(name).read_text(encoding="utf-8"))
        found = session_state.findall(text)
        assert not [f for f in found if any(f)], f"{name} takes session state: {found}"
