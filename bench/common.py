"""What the benchmark's parts share: paths, the result of one measurement, processes, databases."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from cost import Cost

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Result:
    scenario: str
    users: int
    workers: int
    requests: int = 0
    failures: int = 0
    throughput_rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    # The same calls as the server measured them (grpc_server_handling_seconds, from its first byte to
    # its answer): what Locust adds on top is the load generator's and the network's time.
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None
    rss_mb_per_worker: float = 0.0
    note: str = ""
    # CPU and database work over the scenario's window (bench/cost.py).
    cost: Cost | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _with_database(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


async def reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def fresh_database(server_url: str, name: str) -> str:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    return _with_database(server_url, name)


@contextmanager
def process(args: list[str], *, env: dict[str, str], log: Path, cwd: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """A child process of ours, ended by its PID (SIGTERM, then SIGKILL after 30 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}); see the logs in the results folder")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)  # a worker may still be binding
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}")


class RssSampler:
    """The largest resident set of a server process (and of each of its workers) while load runs."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.max_mb = 0.0

    def sample(self) -> None:
        procs = [self.root, *self.root.children()]
        workers = [p for p in procs if "gongji" in " ".join(p.cmdline()) or "bare_server" in " ".join(p.cmdline())]
        for p in workers or procs:
            self.max_mb = max(self.max_mb, p.memory_info().rss / 2**20)
