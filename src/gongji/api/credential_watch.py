"""What a server process does in the background for its credential cache (see Authenticator's docstring
for the whole design): listen for credential changes, and write when credentials were last used.

The listener is one connection of its own, not a pooled one: LISTEN belongs to a session, which a pool
(or PgBouncer in transaction mode) hands to others between statements. Every worker of `--workers`
starts its own. It reconnects by itself with backoff after a restart or a failover, logging one line
per change of state and never a traceback; while it is not connected, the Authenticator trusts its
cache for at most CREDENTIAL_CACHE_UNLISTENED_TTL_S, since notifications are being missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from gongji import limits, metrics
from gongji.api.auth import Authenticator
from gongji.store import credentials, db, notifications

log = logging.getLogger(__name__)

CHANNEL = "gongji_credential"  # store/sql/credentials.sql notifies here
# How operators (and the tests) find the listening connection in pg_stat_activity.
APPLICATION_NAME = "gongji-credential-listener"


class CredentialWatch:
    def __init__(self, authenticator: Authenticator, pool: db.Pool, listen_url: str | None) -> None:
        self._auth = authenticator
        self._pool = pool
        self._url = listen_url
        self._tasks: list[asyncio.Task[None]] = []
        self.connection: notifications.Listener | None = None  # while connected (the tests read its pid)
        self._connections = 0
        self._changes = 0  # notifications received, to tell whether a load saw all of them
        self._pending: set[int] = set()  # credentials announced as changed, not yet applied
        self._pending_all = False  # '*' announced (a TRUNCATE): everything changed
        self._drainer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Without a URL there is nothing to listen on: the cache then keeps its short lifetime."""
        if self._url is not None:
            self._tasks.append(asyncio.create_task(self._listen_forever(self._url), name="gongji-credential-listener"))
        self._tasks.append(asyncio.create_task(self._flush_forever(), name="gongji-credential-last-used"))

    async def close(self) -> None:
        """Stop both tasks, close the listening connection, and write the last uses (best effort)."""
        for task in (*self._tasks, *((self._drainer,) if self._drainer else ())):
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        try:
            async with asyncio.timeout(limits.CREDENTIAL_LAST_USED_FINAL_FLUSH_TIMEOUT_S):
                await self.flush()
        except Exception as exc:  # whatever it is (down, slow, closing), shutdown goes on without it
            log.warning("last use of credentials not written at shutdown: %s", type(exc).__name__)

    async def flush(self) -> None:
        """Write the uses remembered since the last flush in one batch; given back if that fails."""
        uses = self._auth.take_last_used()
        if not uses:
            return
        try:
            await credentials.record_last_used(self._pool, uses)
        except BaseException:
            self._auth.give_back_last_used(uses)
            raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(limits.CREDENTIAL_LAST_USED_FLUSH_S)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down or failing over: the next round tries again
                log.warning("could not write the last use of credentials: %s", type(exc).__name__)

    async def _listen_forever(self, url: str) -> None:
        pause = limits.CREDENTIAL_LISTENER_BACKOFF_MIN_S
        failures = 0
        while True:
            try:
                connected = time.monotonic()
                await self._listen_once(url)
                if time.monotonic() - connected >= limits.CREDENTIAL_LISTENER_PING_INTERVAL_S:
                    # It was up a while: back off afresh. (A connection lost at once, again and again,
                    # keeps backing off: each one clears the cache and reloads every token's hash.)
                    pause = limits.CREDENTIAL_LISTENER_BACKOFF_MIN_S
                    failures = 0
                log.warning("credential listener lost its connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timed out, shutting down: all mean "try again"
                failures += 1
                # One line when it starts failing, then one per ten attempts: a long outage must not
                # flood the log (the pool and the health check report it too).
                if failures % 10 == 1:
                    log.warning("credential listener cannot connect (%s); retrying", type(exc).__name__)
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret
            pause = min(pause * 2, limits.CREDENTIAL_LISTENER_BACKOFF_MAX_S)

    async def _listen_once(self, url: str) -> None:
        """Connect, LISTEN, and return when the connection is lost. Whatever happens, the cache is back
        to its short lifetime when this returns or raises."""
        listener = await notifications.Listener.connect(url, APPLICATION_NAME)
        try:
            await listener.listen(CHANNEL, self._notified)
            # From here on every change is announced to us: forget what may have changed before.
            self._auth.listening(True)
            await self._load_known()
            self.connection = listener
            metrics.CREDENTIAL_LISTENERS.inc()
            self._connections += 1
            # A reconnection at the level its loss was logged at, so that whoever saw one sees the other.
            log.log(logging.INFO if self._connections == 1 else logging.WARNING, "credential listener connected")
            while not await listener.lost_or_silent():
                if not self._auth.knows_tokens:  # a load or a refresh failed: try again
                    await self._load_known()
            metrics.CREDENTIAL_LISTENER_LOSSES.inc()
        finally:
            if self.connection is not None:
                metrics.CREDENTIAL_LISTENERS.dec()
            self.connection = None
            if self._drainer is not None:
                self._drainer.cancel()  # what it would learn belongs to a connection no longer listening
            self._pending.clear()
            self._auth.listening(False)
            listener.close()

    def _notified(self, payload: str) -> None:
        """Changes are applied by one task, in batches: a bulk change (thousands of credentials
        created or revoked in one statement) is a few queries, not one per row."""
        metrics.CREDENTIAL_CHANGES.inc()
        self._changes += 1
        self._auth.changing()  # at once: a look-up in flight now must not be cached
        text = payload
        if text.isascii() and text.isdigit():
            self._pending.add(int(text))
        else:
            self._pending_all = True
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="gongji-credential-changes")

    async def _drain(self) -> None:
        while self._pending or self._pending_all:
            if self._pending_all or len(self._pending) > limits.CREDENTIAL_CHANGES_BATCH_MAX:
                self._pending.clear()
                self._pending_all = False
                self._auth.forget_credentials(None)
                await self._load_known()
                continue
            ids, self._pending = self._pending, set()
            self._auth.forget_credentials(ids)
            try:
                live = await credentials.live_hashes_of(self._pool, sorted(ids))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not knowing these, know none: every token is looked up
                log.warning("could not read changed credentials: %s", type(exc).__name__)
                self._auth.know(None)
                continue
            for credential_id in ids:
                self._auth.known_changed(credential_id, live.get(credential_id))

    async def _load_known(self) -> None:
        """Load every live token's hash. After LISTEN, so that no change goes unseen; a change announced
        while loading may be older than what was read, so the load starts over (a few times at most;
        then, and with too many credentials, the Authenticator looks every token up as before, and
        tries again at the next ping)."""
        for _ in range(limits.CREDENTIALS_LOAD_ATTEMPTS):
            seen = self._changes
            try:
                hashes = await credentials.live_hashes(self._pool, limits.CREDENTIALS_IN_MEMORY_MAX)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is failing: look tokens up until the next load
                log.warning("could not load the live credentials: %s", type(exc).__name__)
                break
            if seen == self._changes:
                self._auth.know(hashes if len(hashes) <= limits.CREDENTIALS_IN_MEMORY_MAX else None)
                return
        self._auth.know(None)
