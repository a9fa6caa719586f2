"""Failover under load: the primary lost, its standby promoted, gongji following by itself.

Two PostgreSQL clusters of the test's own on free loopback TCP ports (own_postgres.TcpCluster): a
primary made by initdb, and a standby made by pg_basebackup -R streaming through a replication slot.
gongji is given both in one multi-host URL, `postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/db?
target_session_attrs=read-write`, so each new connection goes to whichever host accepts writes. Under
the chaos load the primary is killed (SIGKILL of the postmaster, or pg_ctl stop -m immediate, by turns)
and the standby promoted (pg_ctl promote); health must go NOT_SERVING, calls answer UNAVAILABLE, then
SERVING again, without a restart of gongji. With CHAOS_FAILOVERS above one, a new standby is cloned
from the new primary onto the lost one's port before the next failover.

Run once with synchronous replication (synchronous_standby_names = '*', synchronous_commit = on: a
commit is acknowledged once the standby has flushed it), where no write any client saw answered OK may
be missing on the new primary; and once with asynchronous replication, where what is missing is the
figure this test reports, not a failure. Then the checks of test_chaos.py on the new primary: every
request converges on retry, `gongji audit` clean, the money adds up.

After a promotion the new primary has no standby: it acknowledges commits alone until a new standby
has caught up (synchronous_standby_names is cleared on it; with a standby it is set again). Waiting for
a standby that does not exist would stop every settlement instead.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from conftest import ROOT
from own_postgres import TcpCluster, outage
from test_chaos import SECONDS, Chaos, Fault, _free_port, run_chaos

KINDS = ("sigkill", "immediate")
FAILOVERS = int(os.environ.get("CHAOS_FAILOVERS", "2"))
CATCH_UP_S = 60.0


class Pair:
    """A primary and its standby; after a failover the roles swap and a new standby takes the lost
    primary's port, so gongji's multi-host URL stays right throughout."""

    def __init__(self, base: Path, synchronous: bool) -> None:
        self.base = base
        self.synchronous = synchronous
        self.nodes = [TcpCluster(base / "node-0", _free_port()), TcpCluster(base / "node-1", _free_port())]
        self.primary = 0
        self.clones = 0

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    @property
    def standby(self) -> int:
        return 1 - self.primary

    async def start(self) -> None:
        await asyncio.to_thread(self.nodes[self.primary].initdb)
        await self.nodes[self.primary].start()
        await self._new_standby()

    async def _new_standby(self) -> None:
        self.clones += 1
        standby = TcpCluster(self.base / f"node-{self.clones + 1}", self.nodes[self.standby].port)
        self.nodes[self.standby] = standby
        await asyncio.to_thread(standby.clone_of, self.nodes[self.primary], f"standby_{self.clones}")
        await standby.start()
        await self._replicate()

    async def _replicate(self) -> None:
        """Wait until the standby streams and has flushed all the primary had written; then, for a
        synchronous pair, make every commit wait for it to flush that commit too."""
        conn = await self.nodes[self.primary].connect()
        try:
            lsn = await conn.fetchval("select pg_current_wal_lsn()::text")
            await _until(conn, CAUGHT_UP, lsn)
            if self.synchronous:
                await conn.execute("alter system set synchronous_standby_names = '*'")
                await conn.execute("alter system set synchronous_commit = 'on'")
                await conn.execute("select pg_reload_conf()")
                await _until(conn, "select count(*) from pg_stat_replication where sync_state = 'sync'")
        finally:
            await conn.close()

    async def kill_primary(self, kind: str) -> None:
        await self.nodes[self.primary].kill(kind)

    async def promote(self) -> None:
        new = self.nodes[self.standby]
        await new.promote()
        conn = await new.connect()
        try:
            # Alone, it has no standby to wait for (see the module's docstring).
            await conn.execute("alter system reset synchronous_standby_names")
            await conn.execute("select pg_reload_conf()")
        finally:
            await conn.close()
        self.primary = self.standby

    async def replace_lost(self) -> None:
        """The lost primary's data is thrown away (it may hold commits the new primary never got, so it
        must not come back as it was): a new standby, cloned from the new primary, on its port."""
        await asyncio.to_thread(self.nodes[self.standby].remove)
        await self._new_standby()

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()
        shutil.rmtree(self.base, ignore_errors=True)


CAUGHT_UP = "select count(*) from pg_stat_replication where state = 'streaming' and flush_lsn >= $1::text::pg_lsn"


async def _until(conn: asyncpg.Connection, query: str, *args: object) -> None:
    """Poll `query` until it counts at least one row, for at most CATCH_UP_S."""
    give_up = time.monotonic() + CATCH_UP_S
    while not await conn.fetchval(query, *args):
        assert time.monotonic() < give_up, f"replication not there after {CATCH_UP_S:g} s: {query}"
        await asyncio.sleep(0.1)


@pytest.fixture(params=["synchronous", "asynchronous"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Two clusters of this test's own (started by the test, in its event loop); both killed and their
    data removed afterwards, whatever happened."""
    pair = Pair(ROOT / ".gongji" / f"failover-{uuid.uuid4().hex[:8]}", request.param == "synchronous")
    try:
        yield pair
    finally:
        pair.remove()


def _failing_over(pair: Pair) -> Fault:
    async def failovers(chaos: Chaos, started: float, until: float) -> None:
        """FAILOVERS failovers spread over the load, each while the clients are busy."""
        for i in range(FAILOVERS):
            await asyncio.sleep(max(0.0, started + SECONDS * (i + 0.5) / FAILOVERS - time.monotonic()))
            kind = KINDS[i % len(KINDS)]
            await outage(chaos, functools.partial(pair.kill_primary, kind), pair.promote)
            chaos.figures.database_kills[kind] += 1
            chaos.figures.promotions += 1
            if i + 1 < FAILOVERS:
                await pair.replace_lost()

    return failovers


def test_failover_under_load(pair: Pair) -> None:
    figures = run_chaos(pair.url, _failing_over(pair), lost_allowed=not pair.synchronous, before=pair.start)
    lost = sum(figures.lost.values())
    replication = "synchronous" if pair.synchronous else "asynchronous"
    print(f"failover: {replication} replication, {figures.promotions} promotions, lost {lost} of"
          f" {figures.acknowledged} acknowledged writes")  # fmt: skip
    assert figures.violations == [], "\n".join(figures.violations[-10:])
    assert figures.promotions == FAILOVERS and figures.acknowledged > 0
    if pair.synchronous:
        assert lost == 0
