"""CPU and database work per settlement, read over one measured window (issue 16).

    with CostMeter(db_url, server_pid=server.pid, metrics_port=metrics_port) as meter:
        ...  # the load runs here
    cost = meter.cost  # totals over the window; cost.per_settlement() divides them

What it reads, at the window's start and end (and every half second in between, for processes that
come and go):

- CPU (user + system, from /proc through psutil) of three groups of processes: the server (the root
  process and its worker children), PostgreSQL (the client backends of the bench database, apart
  from the background processes: checkpointer, walwriter, autovacuum...), and the load generator
  (every child process of the bench that ended in the window: Locust, or pgbench, from
  getrusage(RUSAGE_CHILDREN)). A process first seen inside the window counts with all its CPU; a
  backend that ended inside it is counted up to its end through the postmaster's children's times
  (/proc/<pid>/stat fields 16 and 17). PostgreSQL's CPU is unavailable when its processes are not on
  this machine (or not readable).
- The calls the server counted (`grpc_server_handled_total`, Settle and all RPCs), when given its
  metrics port; otherwise the caller sets them (Locust's or pgbench's counts).
- From PostgreSQL: statements (pg_stat_statements, when loaded) or transactions (pg_stat_database)
  as round trips, commits of the bench database, transaction ids assigned and WAL written
  (cluster-wide). pg_stat_database lags: a busy backend flushes its counts at most once a second, an
  idle one within ten seconds, so those counts are read `stats_wait_s` after the window ends (nothing
  else runs meanwhile); everything else is read at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil
from prometheus_client.parser import text_string_to_metric_families

SAMPLE_S = 0.5
# A backend that has been idle flushes its pending statistics within PGSTAT_IDLE_INTERVAL (10 s).
STATS_WAIT_S = 11.0


@dataclass
class Cost:
    """Totals over one window; None where not measured (no server, no database, not readable)."""

    window_s: float = 0.0
    settlements: int | None = None  # the divisor; None: per RPC only (the app scenario)
    rpcs: int | None = None
    count_source: str = ""
    server_cpu_s: float | None = None
    postgres_cpu_s: float | None = None  # client backends of the bench database
    postgres_background_cpu_s: float | None = None  # checkpointer, walwriter, autovacuum... (cluster-wide)
    postgres_unavailable: str = ""  # why PostgreSQL's CPU could not be read
    load_cpu_s: float | None = None
    round_trips: int | None = None
    round_trips_source: str = ""  # "statements (pg_stat_statements)" or "transactions (pg_stat_database)"
    commits: int | None = None
    writing_commits: int | None = None  # transaction ids assigned, cluster-wide
    wal_bytes: int | None = None  # cluster-wide

    def per_settlement(self) -> dict[str, float | None]:
        """Each figure per settlement (per RPC when there are no settlements); CPU in µs."""
        divisor = self.settlements if self.settlements is not None else self.rpcs

        def per(value: float | None, by: int | None = divisor, scale: float = 1.0) -> float | None:
            return None if value is None or not by else value * scale / by

        return {
            "server_us": per(self.server_cpu_s, scale=1e6),
            "server_us_per_rpc": per(self.server_cpu_s, self.rpcs, 1e6),
            "postgres_us": per(self.postgres_cpu_s, scale=1e6),
            "postgres_background_us": per(self.postgres_background_cpu_s, scale=1e6),
            "load_us": per(self.load_cpu_s, scale=1e6),
            "round_trips": per(self.round_trips),
            "round_trips_per_rpc": per(self.round_trips, self.rpcs),
            "commits": per(self.commits),
            "writing_commits": per(self.writing_commits),
            "wal_bytes": per(self.wal_bytes),
        }


@dataclass
class _Tally:
    """CPU seconds per pid: at first sight (0 when first seen inside the window) and at last sight."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)

    def see(self, pid: int, cpu: float, *, initial: bool) -> None:
        self.first.setdefault(pid, cpu if initial else 0.0)
        self.last[pid] = cpu

    def total(self, pids: set[int] | None = None) -> float:
        return sum(self.last[p] - self.first[p] for p in self.last if pids is None or p in pids)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _handled(metrics_port: int) -> tuple[int, int]:
    """Settle calls and all calls the server has answered (grpc_server_handled_total, every worker)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    settle = every = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "grpc_server_handled_total":
                every += sample.value
                settle += sample.value if sample.labels.get("grpc_method") == "Settle" else 0.0
    return int(settle), int(every)


def _admin_url(db_url: str) -> str:
    """The same server's `postgres` database: the meter's own queries stay out of the bench's counts."""
    base, _, query = db_url.partition("?")
    return base.rsplit("/", 1)[0] + "/postgres" + (f"?{query}" if query else "")


_COUNTERS = """
select d.xact_commit, d.xact_rollback from pg_stat_database d where d.datname = $1"""
_CLUSTER = """
select pg_current_wal_lsn() as lsn, pg_snapshot_xmax(pg_current_snapshot())::text::bigint as xmax"""
_ACTIVITY = "select pid, coalesce(datname, '') as datname, backend_type from pg_stat_activity"


class CostMeter:
    """Measures a window: enter before the load starts, leave after it ended (see the module's doc)."""

    def __init__(
        self,
        db_url: str | None,
        *,
        server_pid: int | None = None,
        metrics_port: int | None = None,
        stats_wait_s: float = STATS_WAIT_S,
    ) -> None:
        self.db_url, self.server_pid, self.metrics_port = db_url, server_pid, metrics_port
        self.stats_wait_s = stats_wait_s
        self.cost = Cost()
        self._server = _Tally()
        self._pg = _Tally()
        self._pg_kind: dict[int, str] = {}  # pid -> "bench", "background" or "other"
        self._postmaster: psutil.Process | None = None
        self._own_pid = 0
        self._statements_loaded = False
        self._postmaster_children_before = 0.0
        self._alive: set[int] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cost-meter", daemon=True)

    def __enter__(self) -> CostMeter:
        self._started = time.monotonic()
        self._load_before = _children_cpu()
        self._handled_before = _handled(self.metrics_port) if self.metrics_port else None
        self._thread.start()
        self._ready.wait()
        self._raise()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.cost.window_s = time.monotonic() - self._started
        self.cost.load_cpu_s = _children_cpu() - self._load_before
        if self._handled_before is not None and self.metrics_port:
            settle, every = _handled(self.metrics_port)
            self.cost.settlements, self.cost.rpcs = settle - self._handled_before[0], every - self._handled_before[1]
            self.cost.count_source = "the server's grpc_server_handled_total"
        self._stop.set()
        self._thread.join()
        if kind is None:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"cost meter: {self._error}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._measure())
        except BaseException as exc:  # reported by the thread that entered or left the window
            self._error = exc
        finally:
            self._ready.set()

    async def _measure(self) -> None:
        conn = await asyncpg.connect(_admin_url(self.db_url)) if self.db_url else None
        try:
            before = await self._database_before(conn) if conn else {}
            await self._sample(conn, initial=True)
            self._ready.set()
            next_sample = time.monotonic() + SAMPLE_S
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
                if time.monotonic() >= next_sample:
                    await self._sample(conn, initial=False)
                    next_sample += SAMPLE_S
            await self._sample(conn, initial=False)
            self._settle_cpu()
            if conn:
                await self._database_after(conn, before)
        finally:
            if conn:
                await conn.close()

    async def _sample(self, conn: asyncpg.Connection | None, *, initial: bool) -> None:
        if self.server_pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(self.server_pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        self._server.see(proc.pid, _cpu(proc), initial=initial)
        if conn is None:
            return
        if initial:
            self._postmaster = await self._find_postmaster(conn)
        if self._postmaster is None:
            return
        for row in await conn.fetch(_ACTIVITY):
            pid = row["pid"]
            if pid == self._own_pid or row["datname"] not in ("", self.bench_db):
                kind = "other"
            else:
                kind = "bench" if row["backend_type"] == "client backend" else "background"
            self._pg_kind.setdefault(pid, kind)
        if initial:
            self._postmaster_children_before = _postmaster_children_cpu(self._postmaster)
        for proc in self._postmaster.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._pg.see(proc.pid, _cpu(proc), initial=initial)
        self._alive = {p.pid for p in self._postmaster.children()}

    @property
    def bench_db(self) -> str:
        return urlsplit(self.db_url or "").path.lstrip("/")

    async def _find_postmaster(self, conn: asyncpg.Connection) -> psutil.Process | None:
        """PostgreSQL's postmaster when it runs on this machine and its processes can be read."""
        self._own_pid = await conn.fetchval("select pg_backend_pid()")
        host = urlsplit(self.db_url or "").hostname or "localhost"
        if host not in ("localhost", "127.0.0.1", "::1") and not host.startswith("/"):
            self.cost.postgres_unavailable = f"the database is on {host}, not this machine"
            return None
        try:
            backend = psutil.Process(self._own_pid)
            postmaster = backend.parent()
            if postmaster is None or "postgres" not in backend.name() + " ".join(backend.cmdline()):
                raise psutil.NoSuchProcess(self._own_pid)
            _cpu(backend)
            return postmaster
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self.cost.postgres_unavailable = (
                "PostgreSQL's processes are not visible here (another machine or container)"
            )
            return None

    def _settle_cpu(self) -> None:
        self.cost.server_cpu_s = self._server.total() if self.server_pid is not None else None
        if self._postmaster is None:
            return
        # Backends that ended inside the window ran on after their last sample: the postmaster's
        # children's times grew by all they used, so what the samples missed is the difference. It
        # goes to the kinds of the backends that ended, in proportion to their number.
        ended = set(self._pg.last) - self._alive
        missed = max(
            0.0,
            _postmaster_children_cpu(self._postmaster)
            - self._postmaster_children_before
            - sum(self._pg.last[p] for p in ended),
        )
        kinds = {
            k: {p for p in self._pg.last if self._pg_kind.get(p, "background") == k} for k in ("bench", "background")
        }
        share = {
            k: len(pids & ended) / len(ended) if ended else (1.0 if k == "background" else 0.0)
            for k, pids in kinds.items()
        }
        self.cost.postgres_cpu_s = self._pg.total(kinds["bench"]) + missed * share["bench"]
        self.cost.postgres_background_cpu_s = self._pg.total(kinds["background"]) + missed * share["background"]

    async def _database_before(self, conn: asyncpg.Connection) -> dict[str, Any]:
        before: dict[str, Any] = dict(await _one(conn, _CLUSTER))
        before |= dict(await conn.fetchrow(_COUNTERS, self.bench_db) or {})
        loaded = await conn.fetchval("select current_setting('shared_preload_libraries')")
        self._statements_loaded = "pg_stat_statements" in loaded
        before["statements"] = await self._statements()
        return before

    async def _database_after(self, conn: asyncpg.Connection, before: dict[str, Any]) -> None:
        cluster = await _one(conn, _CLUSTER)
        self.cost.wal_bytes = int(await conn.fetchval("select pg_wal_lsn_diff($1, $2)", cluster["lsn"], before["lsn"]))
        self.cost.writing_commits = cluster["xmax"] - before["xmax"]
        await asyncio.sleep(self.stats_wait_s)
        counters = await conn.fetchrow(_COUNTERS, self.bench_db)
        if counters is None or "xact_commit" not in before:
            return
        self.cost.commits = counters["xact_commit"] - before["xact_commit"]
        statements = await self._statements()
        if statements is not None and before["statements"] is not None:
            self.cost.round_trips = statements - before["statements"]
            self.cost.round_trips_source = "statements (pg_stat_statements)"
        else:
            self.cost.round_trips = self.cost.commits + counters["xact_rollback"] - before["xact_rollback"]
            self.cost.round_trips_source = "transactions (pg_stat_database)"

    async def _statements(self) -> int | None:
        """Statements run in the bench database so far, when pg_stat_statements is loaded."""
        if not self._statements_loaded or self.db_url is None:
            return None
        conn = await asyncpg.connect(self.db_url)  # the extension's view lives in the bench database
        try:
            await conn.execute("create extension if not exists pg_stat_statements")
            calls = await conn.fetchval(
                "select coalesce(sum(calls), 0)::bigint from pg_stat_statements"
                " where dbid = (select oid from pg_database where datname = current_database())"
            )
            return int(calls)
        except asyncpg.PostgresError:
            return None
        finally:
            await conn.close()


def _postmaster_children_cpu(postmaster: psutil.Process) -> float:
    times = postmaster.cpu_times()
    return float(times.children_user + times.children_system)


async def _one(conn: asyncpg.Connection, query: str) -> asyncpg.Record:
    row = await conn.fetchrow(query)
    assert row is not None, query
    return row
