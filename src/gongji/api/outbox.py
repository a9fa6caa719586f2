"""The outbox's upkeep, run by every server (docs/events.md):

- the sequencer, every EVENT_SEQUENCE_INTERVAL_S: committed events get their positions in the stream
  (store/sql/events.sql, gongji_sequence_events). One server at a time does it (the head row's lock,
  skipped by the others), so several replicas only make it more available;
- retention, every EVENT_PRUNE_INTERVAL_S: events older than GONGJI_EVENTS_RETENTION_DAYS are deleted,
  oldest first (a consumer whose cursor is before them is told CURSOR_EXPIRED, never skipped past them);
- the lag of each named consumer, every EVENT_LAG_INTERVAL_S, for the gauges and their alert.

Each part goes on whatever another failed: a failure is logged and counted (gongji_outbox_runs_total),
and the next run catches up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg

from gongji import limits, metrics
from gongji.api import upkeep
from gongji.store import events

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, pool: asyncpg.Pool, retention_days: int) -> None:
        self._pool = pool
        self._retention = dt.timedelta(days=retention_days)
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: set[str] = set()  # the consumer labels the gauges have

    async def sequence(self) -> str:
        """Sequence every committed event, a batch per statement; the run's outcome: ok, or skipped when
        another sequencer held the head (counted apart: a head held for long must not look healthy)."""
        while True:
            counts = await events.sequence(self._pool, limits.EVENT_SEQUENCE_BATCH)
            if counts is None:
                return "skipped"
            for event_type, n in counts.items():
                metrics.EVENTS_WRITTEN.labels(event_type).inc(n)
            if sum(counts.values()) < limits.EVENT_SEQUENCE_BATCH:
                return "ok"

    async def prune(self) -> int:
        """Delete the events past retention, a batch per statement; how many."""
        before = dt.datetime.now(dt.UTC) - self._retention
        deleted = 0
        while True:
            n = await events.prune(self._pool, before, limits.EVENT_PRUNE_BATCH)
            deleted += n
            if n < limits.EVENT_PRUNE_BATCH:
                if deleted:
                    log.info("events past retention deleted", extra={"deleted": deleted})
                return deleted

    async def read_lags(self) -> None:
        metrics.EVENTS_UNSEQUENCED_SECONDS.set(await events.unsequenced_seconds(self._pool))
        lags = await events.consumer_lags(self._pool, dt.timedelta(seconds=limits.EVENT_CONSUMER_FORGET_AFTER_S))
        current = {lag.label for lag in lags}
        for gone in self._consumers - current:
            metrics.EVENT_CONSUMER_LAG_EVENTS.remove(gone)
            metrics.EVENT_CONSUMER_LAG_SECONDS.remove(gone)
        for lag in lags:
            metrics.EVENT_CONSUMER_LAG_EVENTS.labels(lag.label).set(lag.events)
            metrics.EVENT_CONSUMER_LAG_SECONDS.labels(lag.label).set(lag.seconds)
        self._consumers = current

    def _every(self, work: str, interval_s: float, run: Callable[[], Awaitable[object]]) -> Coroutine[Any, Any, None]:
        count = metrics.OUTBOX_RUNS.labels
        return upkeep.every(interval_s, run, lambda outcome: count(work, outcome).inc(), f"outbox's {work} work", log)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every("sequence", limits.EVENT_SEQUENCE_INTERVAL_S, self.sequence)),
            asyncio.create_task(self._every("prune", limits.EVENT_PRUNE_INTERVAL_S, self.prune)),
            asyncio.create_task(self._every("lag", limits.EVENT_LAG_INTERVAL_S, self.read_lags)),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
