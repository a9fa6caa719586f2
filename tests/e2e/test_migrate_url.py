"""GONGJI_MIGRATE_DATABASE_URL: migrations run over their own connection, and the service's own URL
needs no more than reading and writing rows. Shown with a least-privilege role, as production would
run it: the service's role may not create anything, so `gongji serve` can only come up when the
migrations went through the migration URL (the owner's), and without it the same start fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from e2e_support import GONGJI, ROOT, first_call_split, serve, stop
from support import with_database


def _as(url: str, user: str) -> str:
    """`url` with `user` (no password: the suite's servers trust local connections)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@asynccontextmanager
async def _empty_database_and_service_role(server_url: str) -> AsyncIterator[tuple[str, str]]:
    """A new database with nothing in it, owned by the suite's user, and a role that may only use
    the rows of tables created there later (default privileges). Its URL as owner, as that role."""
    name = f"gongji_mig_{uuid.uuid4().hex[:10]}"
    role = f"{name}_svc"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'create database "{name}"')
        await admin.execute(f'create role "{role}" login')
        owner_url = with_database(server_url, name)
        owner = await asyncpg.connect(owner_url)
        try:
            await owner.execute(f'revoke create on schema public from public, "{role}"')
            await owner.execute(f'grant usage on schema public to "{role}"')
            await owner.execute(
                f'alter default privileges in schema public grant select, insert, update, delete on tables to "{role}"'
            )
            await owner.execute(f'alter default privileges in schema public grant usage on sequences to "{role}"')
        finally:
            await owner.close()
        yield owner_url, _as(owner_url, role)
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.execute(f'drop role if exists "{role}"')
        await admin.close()


async def test_migrations_run_over_the_migration_url(env: dict[str, str], server_url: str) -> None:
    async with _empty_database_and_service_role(server_url) as (owner_url, service_url):
        env = env | {"GONGJI_DATABASE_URL": service_url, "GONGJI_MIGRATE_DATABASE_URL": owner_url}
        proc = await asyncio.to_thread(serve, env)  # --demo: the demo family goes in as the service's role
        try:
            assert await asyncio.to_thread(first_call_split, env) == ("2000", "1500", "0")
        finally:
            await asyncio.to_thread(stop, proc)
        conn = await asyncpg.connect(owner_url)
        try:
            owners = await conn.fetch(
                "select distinct tableowner from pg_tables where schemaname = 'public'"
            )  # fmt: skip
        finally:
            await conn.close()
        assert [r["tableowner"] for r in owners] == [urlsplit(owner_url).username]


async def test_without_it_the_service_role_cannot_migrate(env: dict[str, str], server_url: str) -> None:
    """The control: the same role, no migration URL, and `gongji serve` cannot start."""
    async with _empty_database_and_service_role(server_url) as (_, service_url):
        done = await asyncio.to_thread(
            subprocess.run,
            [GONGJI, "serve"], env=env | {"GONGJI_DATABASE_URL": service_url},
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0
        assert "permission denied" in done.stderr
