"""A PostgreSQL restart under load. The suite starts a PostgreSQL of its own for this (an embedded
server in a data directory of its own; never the server the rest of the suite uses, and never one on
a TCP port), runs the chaos load against a `gongji serve` over it, and mid-load stops PostgreSQL and
starts it again (every RESTART_EVERY_S of load, at least once). While the database is gone, gongji
must report NOT_SERVING on health and answer UNAVAILABLE rather than hang; once it is back, SERVING
again without a restart of gongji. Then the same retries and checks as the rest of the chaos suite:
nothing lost, nothing done twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from own_postgres import embedded_cluster, outage, start_embedded_again, stop_fast
from test_chaos import RESTART_EVERY_S, SECONDS, Chaos, run_chaos


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """An embedded PostgreSQL that this test alone uses, and may therefore stop and start."""
    with embedded_cluster() as server:
        yield server


def _restarting(postgres: Any) -> Any:
    socket_dir = postgres.get_postmaster_info().socket_dir

    async def restart_database(chaos: Chaos, started: float, until: float) -> None:
        """Every RESTART_EVERY_S of load (at least once), starting a third of the way in."""
        at = started + min(RESTART_EVERY_S, SECONDS) / 3
        while at < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await outage(chaos, down, up)
            chaos.figures.database_restarts += 1
            at += RESTART_EVERY_S

    async def down() -> None:
        await stop_fast(postgres.pgdata)

    async def up() -> None:
        await start_embedded_again(postgres, socket_dir)

    return restart_database


def test_a_database_restart_under_load(own_postgres: Any) -> None:
    figures = run_chaos(own_postgres.get_uri("postgres"), _restarting(own_postgres))
    assert figures.violations == [], "\n".join(figures.violations[-10:])
    assert figures.database_restarts >= 1
