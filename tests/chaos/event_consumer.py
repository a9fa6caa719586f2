"""A downstream system reading the event stream through the chaos (issue 19): killed and resumed many
times, it must end with every event exactly once after deduplication, in commit order per account."""

from __future__ import annotations

import asyncio
import collections
import random
import time

import asyncpg
import grpc
from events_support import deduplicated, stream_vs_books
from support import Api, bearer

from gongji.v1 import events_pb2

S = grpc.StatusCode
DEFECTS = {S.INTERNAL, S.UNKNOWN, S.DATA_LOSS, S.UNIMPLEMENTED}
# Bounds, whatever the load: how long one session of the consumer lives before it is killed, and how
# many sessions the final catch-up may take.
SESSION_S = (0.2, 2.0)
CATCH_UP_SESSIONS_MAX = 50
SEQUENCED_WAIT_S = 30.0


class EventConsumer:
    """Keeps its cursor as a consumer keeps it in its own database: written now and then (every few
    events, at random), so a kill loses the progress made since, and the events after the saved cursor
    come again. Killed at random moments (its stream cancelled, what it had not saved forgotten), besides
    what the chaos does to the server: restarts, connections terminated."""

    def __init__(self, api: Api, token: str, rng: random.Random) -> None:
        self.api, self.token, self.rng = api, token, rng
        self.received: list[events_pb2.Event] = []
        self.cursor = 0  # the saved cursor: what survives a kill
        self.sessions = 0
        self.kills = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            await self._session(min(self.rng.uniform(*SESSION_S), max(until - time.monotonic(), 0.05)), follow=True)

    async def _session(self, life_s: float, *, follow: bool) -> None:
        self.sessions += 1
        call = self.api.events.StreamEvents(
            events_pb2.StreamEventsRequest(after_position=self.cursor, follow=follow, consumer="chaos"),
            metadata=bearer(self.token),
            timeout=30,
        )
        save_every, unsaved = self.rng.randint(1, 25), 0
        try:
            async with asyncio.timeout(life_s):
                async for reply in call:
                    self.received.append(reply.event)
                    unsaved += 1
                    if unsaved >= save_every:
                        self.cursor, unsaved = reply.event.position, 0
            if not follow and unsaved:
                self.cursor = self.received[-1].position  # ended at the newest: saved
        except TimeoutError:
            self.kills += 1  # killed: the progress since the last save is lost
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] += 1
            if exc.code() in DEFECTS:
                self.violations.append(f"events: the stream ended {exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.1)
        finally:
            call.cancel()

    async def catch_up(self, check: asyncpg.Pool) -> None:
        """Once the load is over: wait for the server to sequence every committed event, then read to the
        newest position (resuming after any failure, a bounded number of times)."""
        deadline = time.monotonic() + SEQUENCED_WAIT_S
        while await check.fetchval("select exists (select 1 from outbox_event where position is null)"):
            if time.monotonic() > deadline:
                self.violations.append(f"events: still not sequenced {SEQUENCED_WAIT_S:g} s after the load")
                return
            await asyncio.sleep(0.1)
        head = await check.fetchval("select position from outbox_head")
        for _ in range(CATCH_UP_SESSIONS_MAX):
            if self.cursor >= head:
                return
            await self._session(10.0, follow=False)
        self.violations.append(f"events: the consumer did not reach position {head} (at {self.cursor})")

    async def check(self, check: asyncpg.Pool) -> list[str]:
        """Every event of the outbox exactly once after deduplication, in position order, and each
        person's events in the order of their entries."""
        events, problems = deduplicated(self.received)
        problems = self.violations + [f"events: {p}" for p in problems]
        written = await check.fetchval("select count(*) from outbox_event")
        if len(events) != written:
            problems.append(f"events: {len(events)} distinct events read, {written} written")
        if [e.position for e in events] != list(range(1, len(events) + 1)):
            problems.append("events: positions read are not 1, 2, 3, ... without a gap")
        people = [r["person_id"] for r in await check.fetch("select person_id from person")]
        problems += [f"events: {p}" for p in await stream_vs_books(check, events, people)]
        return problems

    def line(self) -> str:
        distinct = len({e.event_id for e in self.received})
        return (
            f"chaos: event consumer: {self.sessions} sessions ({self.kills} killed by it, stream errors "
            f"{dict(self.errors)}), {len(self.received)} events received, {distinct} distinct"
        )
