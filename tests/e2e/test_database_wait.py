"""`gongji serve` started before its database can be reached (a container beside it still starting, a
failover in progress): it keeps trying for GONGJI_DB_START_WAIT_S, then serves as soon as the database
answers, without being restarted; with the wait spent, it exits 1 with one line, not a traceback.

The database "comes up" by a TCP relay of the test's own starting to listen on the port gongji was told
to use; behind it is the suite's real PostgreSQL, with a fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from e2e_support import GONGJI, ROOT, first_call_split, free_port, wait_serving
from harness import fresh_database

WAITING = "not reachable yet"
# Attempts seen before the database is let in: at least two, so the wait is a loop, not one retry.
ATTEMPTS_BEFORE = 2


def _upstream(url: str) -> Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """How to reach the PostgreSQL behind `url`: a Unix socket (the embedded server) or TCP."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    port = parts.port or int(query.get("port", ["5432"])[0])
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    if host.startswith("/"):
        return lambda: asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
    return lambda: asyncio.open_connection(host, port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def _relay(port: int, upstream_url: str) -> AsyncIterator[None]:
    """Listen on 127.0.0.1:`port` and pass every connection through to the real database."""
    connect = _upstream(upstream_url)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await connect()
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    relay = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield
    finally:
        relay.close()


def _through(port: int, url: str) -> str:
    """`url`'s user and database, reached at 127.0.0.1:`port`."""
    parts = urlsplit(url)
    password = f":{parts.password}" if parts.password else ""
    return f"postgresql://{parts.username}{password}@127.0.0.1:{port}{parts.path}"


async def _until(condition: Callable[[], bool], limit_s: float) -> bool:
    for _ in range(int(limit_s * 10)):
        if condition():
            return True
        await asyncio.sleep(0.1)
    return condition()


async def test_serve_waits_for_a_database_that_comes_up_after_it(env: dict[str, str], server_url: str) -> None:
    port = free_port()
    async with fresh_database(server_url, "gongji_wait") as url:
        env = env | {"GONGJI_DATABASE_URL": _through(port, url), "GONGJI_DB_START_WAIT_S": "120"}
        with tempfile.NamedTemporaryFile(prefix="gongji-wait-", suffix=".log") as log:
            proc = await asyncio.to_thread(subprocess.Popen, [GONGJI, "serve", "--demo"], env=env, cwd=ROOT, stderr=log)
            try:
                log_text = lambda: Path(log.name).read_text()  # noqa: E731
                waited = await _until(lambda: log_text().count(WAITING) >= ATTEMPTS_BEFORE, 60)
                assert waited, log_text()
                assert proc.poll() is None, f"gongji serve exited while it should wait:\n{log_text()}"
                async with _relay(port, url):
                    await asyncio.to_thread(wait_serving, env["GONGJI_GRPC_LISTEN"], proc)
                    # Through the database it waited for: the demo family is there, and a settlement goes through.
                    assert await asyncio.to_thread(first_call_split, env) == ("2000", "1500", "0")
                    proc.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait, 30) == 0, log_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
            assert "Traceback" not in log_text()


def test_serve_gives_up_with_one_line_once_the_wait_is_spent(env: dict[str, str]) -> None:
    nobody = f"postgresql://gongji@127.0.0.1:{free_port()}/gongji"
    done = subprocess.run(
        [GONGJI, "serve"],
        env=env | {"GONGJI_DATABASE_URL": nobody, "GONGJI_DB_START_WAIT_S": "1"},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not reachable after" in done.stderr and "GONGJI_DB_START_WAIT_S" in done.stderr
    assert "Traceback" not in done.stderr
    # It did wait, and more than once: the wait is a loop with backoff, not a single retry.
    assert done.stderr.count(WAITING) >= 2, done.stderr


@pytest.mark.parametrize("command", ["serve", "audit"])
def test_waits_while_no_host_accepts_what_the_url_asks(env: dict[str, str], server_url: str, command: str) -> None:
    """During a failover every host of a multi-host URL with target_session_attrs=read-write may be a
    standby for a moment: asyncpg then raises TargetServerAttributeNotMatched, not an OSError. That is
    "not reachable yet" too, not a configuration error. Stood in for here by asking the suite's primary
    for read-only, which no host gives."""
    separator = "&" if "?" in server_url else "?"
    url = f"{server_url}{separator}target_session_attrs=read-only"
    done = subprocess.run(
        [GONGJI, command],
        env=env | {"GONGJI_DATABASE_URL": url, "GONGJI_DB_START_WAIT_S": "1"},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "not reachable after" in done.stderr and "TargetServerAttributeNotMatched" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count(WAITING) >= 2, done.stderr
