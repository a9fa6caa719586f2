"""PostgreSQL crashing under load, not stopping politely. The chaos load runs against a `gongji serve`
over a PostgreSQL of the test's own (own_postgres.embedded_cluster: never the shared one), and mid-load
PostgreSQL is killed several times, alternating `pg_ctl stop -m immediate` (every process quits at
once, no checkpoint) and SIGKILL of the postmaster (its orphaned backends exit once they notice; the
test waits for them before starting again, as PostgreSQL needs). Each start is a crash recovery from
the WAL. gongji must recover by itself: health NOT_SERVING during each outage, calls UNAVAILABLE, then
SERVING without a restart of gongji.

Afterwards every settlement, refund, reversal and credit that any client saw answered OK must be in the
books exactly once (looked up before any retry could write it again), `gongji audit` clean, and every
request left without an answer must converge on retry: the checks of test_chaos.py.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from own_postgres import embedded_cluster, kill_postmaster, outage, start_embedded_again, stop_immediate
from test_chaos import SECONDS, Chaos, run_chaos

KINDS = ("immediate", "sigkill")
# Kills spread evenly over the load: at least one of each kind, one per 30 s of load beyond that.
KILLS = max(len(KINDS), int(SECONDS // 30))


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """An embedded PostgreSQL that this test alone uses, and may therefore kill."""
    with embedded_cluster() as server:
        yield server


def _crashing(postgres: Any) -> Any:
    socket_dir = postgres.get_postmaster_info().socket_dir

    async def crash_database(chaos: Chaos, started: float, until: float) -> None:
        for i in range(KILLS):
            await asyncio.sleep(max(0.0, started + SECONDS * (i + 0.5) / KILLS - time.monotonic()))
            kind = KINDS[i % len(KINDS)]
            await outage(chaos, functools.partial(kill, kind), up)
            chaos.figures.database_kills[kind] += 1

    async def kill(kind: str) -> None:
        if kind == "immediate":
            await stop_immediate(postgres.pgdata)
        else:
            await asyncio.to_thread(kill_postmaster, postgres.pgdata)

    async def up() -> None:
        await start_embedded_again(postgres, socket_dir)

    return crash_database


def test_database_crashes_under_load(own_postgres: Any) -> None:
    figures = run_chaos(own_postgres.get_uri("postgres"), _crashing(own_postgres))
    assert figures.violations == [], "\n".join(figures.violations[-10:])
    assert figures.database_kills["immediate"] >= 1 and figures.database_kills["sigkill"] >= 1
    assert figures.acknowledged > 0 and sum(figures.lost.values()) == 0
