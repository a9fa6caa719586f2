"""The 医保钱包 expiry work: transfers nobody accepted by their due time go back to their senders.

Every server runs it: once at start (catching up on what came due while gongji was down) and then every
`wallet_expiry_interval_s`. Several replicas never return a transfer twice: each batch takes the due
transfers' rows with FOR UPDATE SKIP LOCKED and re-reads their state under the lock (store/sql/wallet.sql,
gongji_expire_transfers), so one replica's batch skips what another holds, and an accept or decline in
flight wins or loses whole. Time is the service's clock (gongji.clock): tests move it.

The same work gives back the money of holds at the till nobody captured in time (store/sql/hold.sql,
gongji_expire_holds), by the same rules.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from gongji import limits, metrics
from gongji.api import upkeep
from gongji.api.wallet import count_ended
from gongji.clock import Clock
from gongji.store import holds, wallets

log = logging.getLogger(__name__)


class WalletExpiry:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, interval_s: float) -> None:
        self._pool = pool
        self._clock = clock
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Return every transfer due by now, a batch per transaction; how many were returned. Then read
        what is still pending for the gauges, and expire the holds past their time (expire_holds)."""
        returned = 0
        while True:
            batch = await wallets.expire_due(self._pool, self._clock.now(), limits.WALLET_EXPIRY_BATCH)
            for t in batch:
                count_ended(t)
            returned += len(batch)
            if len(batch) < limits.WALLET_EXPIRY_BATCH:
                break
        stats = await wallets.pending_stats(self._pool, self._clock.now())
        metrics.WALLET_PENDING.set(stats.pending)
        metrics.WALLET_PENDING_FEN.set(stats.pending_fen)
        metrics.WALLET_OVERDUE_SECONDS.set(stats.overdue_s or 0.0)
        if returned:
            log.info("wallet transfers returned to their senders", extra={"returned": returned})
        await self.expire_holds()
        return returned

    async def expire_holds(self) -> int:
        """Give back the money of every hold at the till past its time, a batch per transaction, by the
        same rules (gongji_expire_holds); how many. Then read what is still held for the gauges."""
        released = 0
        while True:
            batch = await holds.expire_due(self._pool, self._clock.now(), limits.WALLET_EXPIRY_BATCH)
            metrics.HOLDS.labels("EXPIRED").inc(len(batch))
            released += len(batch)
            if len(batch) < limits.WALLET_EXPIRY_BATCH:
                break
        pending, held_fen = await holds.pending_stats(self._pool)
        metrics.HOLDS_PENDING.set(pending)
        metrics.HELD_FEN.set(held_fen)
        if released:
            log.info("holds at the till expired, their money given back", extra={"released": released})
        return released

    def start(self) -> None:
        work = upkeep.every(
            self._interval_s,
            self.run_once,
            lambda outcome: metrics.WALLET_EXPIRY_RUNS.labels(outcome).inc(),
            "wallet expiry work",
            log,
        )
        self._task = asyncio.create_task(work, name="gongji-wallet-expiry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
