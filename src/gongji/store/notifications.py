"""One connection of its own that LISTENs for a channel's notifications (credential changes, see
store/sql/credentials.sql), and tells when it is gone.

Not a pooled connection: LISTEN belongs to a session, which a pool (or PgBouncer in transaction mode)
hands to others between statements. The caller reconnects with backoff (gongji.api.credential_watch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from gongji import limits


class Listener:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._lost = asyncio.Event()
        conn.add_termination_listener(lambda _: self._lost.set())

    @classmethod
    async def connect(cls, url: str, application_name: str) -> Listener:
        conn = await asyncpg.connect(
            url,
            timeout=limits.CREDENTIAL_LISTENER_CONNECT_TIMEOUT_S,
            command_timeout=limits.CREDENTIAL_LISTENER_PING_TIMEOUT_S,
            server_settings={"application_name": application_name},
        )
        return cls(conn)

    async def listen(self, channel: str, on_payload: Callable[[str], None]) -> None:
        """From now on every notification on `channel` calls `on_payload` with its payload."""
        await self._conn.add_listener(channel, lambda _conn, _pid, _channel, payload: on_payload(str(payload)))

    async def lost_or_silent(self) -> bool:
        """Wait one ping interval; True when the connection was closed or does not answer a ping (a
        peer gone without a word, as behind a dropped NAT mapping or a failover, is only found by
        asking)."""
        try:
            async with asyncio.timeout(limits.CREDENTIAL_LISTENER_PING_INTERVAL_S):
                await self._lost.wait()
                return True
        except TimeoutError:
            pass
        try:
            async with asyncio.timeout(limits.CREDENTIAL_LISTENER_PING_TIMEOUT_S):
                await self._conn.fetchval("select 1")
        except asyncio.CancelledError:
            raise
        except Exception:  # timed out, reset, closed: the connection is gone either way
            return True
        return self._lost.is_set()

    def close(self) -> None:
        """At once: a lost connection has nothing to say goodbye to."""
        self._conn.terminate()
