"""Benchmarks for peak pharmacy load, with the limits measured beside them in the same run.

    make bench                 # the full run: 100,000 people, 64 users, 30 s per scenario
    make bench-smoke           # a small, fast run (CI): nothing asserted, everything exercised

In one run on one machine: seed a fresh database, start gongji, drive each scenario headless with
Locust for a fixed time at a fixed user count, measure the two ceilings with the same load generator
and database (a bare grpc.aio server that answers at once; pgbench running the settlement SQL
directly), check the books, and print one table with the ratios to the ceilings. JSON, Markdown,
Locust's HTML reports and a PNG of throughput and p99 over time go to bench/results/<time>/.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import itertools
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from prometheus_client.parser import text_string_to_metric_families

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
    extra: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _with_database(server_url: str, name: str) -> str:
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


async def _reachable(url: str) -> bool:
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


async def prepare_pgbench(db_url: str, patients: list[str]) -> int:
    """pgbench picks patients by number: give it the map, and a terminal credential of its own to settle
    as (gongji checks it in the settlement's statement); return the credential's id."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("create table bench_patient (n integer primary key, person_id text not null)")
        await conn.copy_records_to_table("bench_patient", records=list(enumerate(patients, start=1)))
        credential_id: int = await conn.fetchval(
            "insert into credential (token_sha256, kind, institution_id, terminal_id, label)"
            " values ($1, 'TERMINAL', 'HBENCHPGBENCH', 'PGBENCH', 'pgbench') returning credential_id",
            secrets.token_bytes(32),  # no token exists for it: only pgbench's SQL settles as it
        )
        return credential_id
    finally:
        await conn.close()


@contextmanager
def process(args: list[str], *, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process of ours, ended by its PID (SIGTERM, then SIGKILL after 30 s)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
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


@contextmanager
def profiled(enabled: bool, pid: int, out: Path, scenario: str, seconds: int) -> Iterator[None]:
    """With --profile: py-spy samples the server process while the scenario runs (idle threads left
    out); its collapsed stacks go to <scenario>.folded and a summary to <scenario>.profile.txt."""
    if not enabled:
        yield
        return
    folded = out / f"{scenario}.folded"
    command = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "250", "--duration", str(seconds)]
    spy = subprocess.Popen(
        [*command, "--format", "raw", "--nonblocking", "--output", str(folded)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        try:
            spy.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    if folded.exists():
        summary = profile_summary(folded.read_text())
        (out / f"{scenario}.profile.txt").write_text(summary)
        print("\n".join("    " + line for line in summary.splitlines()[:8]), flush=True)


def profile_summary(folded: str, top: int = 25) -> str:
    """The functions most often on top of the stack (self) and anywhere on it (inclusive), as shares of
    all samples, from py-spy's collapsed stacks ("frame;frame;frame count" per line)."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r" \(.*?:\d+\)$", "", f.strip()) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            anywhere[frame] = anywhere.get(frame, 0) + count
    if not total:
        return "no samples\n"

    def rows(counts: dict[str, int]) -> list[str]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [f"{100 * n / total:5.1f} %  {frame}" for frame, n in ranked]

    lines = [f"{total} samples; self (on top of the stack):", *rows(own), ""]
    return "\n".join([*lines, "inclusive (anywhere on the stack):", *rows(anywhere)]) + "\n"


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


def locust(
    scenario: str,
    user_class: str,
    *,
    host: str,
    users: int,
    seconds: int,
    out: Path,
    env: dict[str, str],
    rss: RssSampler | None,
    rate: float = 0.0,
) -> dict[str, dict[str, str]]:
    """Run one headless Locust scenario; return its stats rows by name."""
    args = [
        str(BIN / "locust"),
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "5",
        "--host",
        host,
        "--csv",
        str(out / scenario),
        "--csv-full-history",
        "--html",
        str(out / f"{scenario}.html"),
        "--exit-code-on-error",
        "0",
        user_class,
    ]
    run_env = env | {
        "BENCH_RATE": str(rate),
        "BENCH_USERS": str(users),
        "BENCH_SEEN_FILE": str(out / f"{scenario}.seen.json"),
    }
    with process(args, env=run_env, log=out / f"{scenario}.locust.log") as proc:
        deadline = time.monotonic() + seconds + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if rss is not None:
                rss.sample()
            time.sleep(0.5)
    with (out / f"{scenario}_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def result_from(scenario: str, rows: dict[str, dict[str, str]], name: str, users: int, workers: int) -> Result:
    row = rows.get(name) or {}
    return Result(
        scenario=scenario,
        users=users,
        workers=workers,
        requests=int(row.get("Request Count", 0) or 0),
        failures=int(row.get("Failure Count", 0) or 0),
        throughput_rps=float(row.get("Requests/s", 0) or 0),
        p50_ms=float(row.get("50%", 0) or 0),
        p99_ms=float(row.get("99%", 0) or 0),
        p999_ms=float(row.get("99.9%", 0) or 0),
        extra={k: int(r.get("Request Count", 0) or 0) - int(r.get("Failure Count", 0) or 0) for k, r in rows.items()},
    )


def gongji_env(db_url: str, port: int, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
    return env | {
        "GONGJI_DATABASE_URL": db_url,
        "GONGJI_GRPC_LISTEN": f"127.0.0.1:{port}",
        "GONGJI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "GONGJI_VOUCHER_KEY": secrets.token_urlsafe(48),
        "GONGJI_LOG_FORMAT": "json",
    }


def _settle_histogram(metrics_port: int) -> dict[float, float]:
    """Cumulative counts per upper bound of the server's Settle latency histogram (all workers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handling_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("grpc_method") == "Settle":
                le = float(sample.labels["le"])
                counts[le] = counts.get(le, 0.0) + sample.value
    return counts


def _quantile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over what happened between two scrapes: linear within the
    bucket the quantile falls in, so only as fine as the buckets (1, 2.5, 5, 10, 25, 50, 100 ms...)."""
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower * 1000
            return (lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)) * 1000
        lower, below = bound, count
    return None


def run_gongji_scenarios(cfg: argparse.Namespace, db_url: str, out: Path, env: dict[str, str]) -> list[Result]:
    results: list[Result] = []
    for workers in (1, 2):
        port, metrics_port = _free_port(), _free_port()
        server_env = gongji_env(db_url, port, metrics_port)
        args = [str(BIN / "gongji"), "serve", "--workers", str(workers)]
        with process(args, env=server_env, log=out / f"gongji-{workers}w.log") as server:
            wait_for_port(port, server)
            host = f"127.0.0.1:{port}"
            plan = [("pharmacy", "PharmacyUser", "Settle")]
            if workers == 1:
                plan += [("app", "AppUser", "Aggregated"), ("hot_family", "HotFamilyUser", "Settle")]
            for name, user_class, row_name in plan:
                scenario = name if workers == 1 else f"{name}_{workers}w"
                rss = RssSampler(server.pid)
                histogram = _settle_histogram(metrics_port)
                with profiled(cfg.profile and workers == 1, server.pid, out, scenario, cfg.seconds):
                    rows = locust(
                        scenario, user_class, host=host, users=cfg.users, seconds=cfg.seconds, out=out, env=env, rss=rss
                    )
                r = result_from(scenario, rows, row_name, cfg.users, workers)
                r.rss_mb_per_worker = round(rss.max_mb, 1)
                _server_latency(r, histogram, _settle_histogram(metrics_port))
                results.append(r)
                print(
                    f"  {scenario}: {r.throughput_rps:.0f}/s p99 {r.p99_ms:.0f} ms, {r.failures} failures", flush=True
                )
                if scenario == "pharmacy":
                    # The same traffic at half the saturating rate: latency when not at the limit.
                    half = round(r.throughput_rps / 2, 1)
                    rss = RssSampler(server.pid)
                    histogram = _settle_histogram(metrics_port)
                    with profiled(cfg.profile, server.pid, out, "pharmacy_half_rate", cfg.seconds):
                        rows = locust(
                            "pharmacy_half_rate",
                            user_class,
                            host=host,
                            users=cfg.users,
                            seconds=cfg.seconds,
                            out=out,
                            env=env,
                            rss=rss,
                            rate=half,
                        )
                    h = result_from("pharmacy_half_rate", rows, "Settle", cfg.users, workers)
                    h.rss_mb_per_worker, h.note = round(rss.max_mb, 1), f"paced at {half}/s"
                    _server_latency(h, histogram, _settle_histogram(metrics_port))
                    results.append(h)
                    print(f"  pharmacy_half_rate: {h.throughput_rps:.0f}/s p99 {h.p99_ms:.0f} ms", flush=True)
    return results


def _server_latency(r: Result, before: dict[float, float], after: dict[float, float]) -> None:
    """Settle's server-side p50 and p99 over the scenario (None for scenarios without Settle)."""
    r.server_p50_ms, r.server_p99_ms = _quantile_ms(before, after, 0.5), _quantile_ms(before, after, 0.99)


def run_edge_ceiling(cfg: argparse.Namespace, out: Path, env: dict[str, str]) -> Result:
    port = _free_port()
    args = [sys.executable, str(ROOT / "bench" / "bare_server.py"), "--listen", f"127.0.0.1:{port}"]
    with process(args, env=env, log=out / "bare_server.log") as server:
        wait_for_port(port, server)
        rss = RssSampler(server.pid)
        rows = locust(
            "edge_ceiling",
            "PharmacyUser",
            host=f"127.0.0.1:{port}",
            users=cfg.users,
            seconds=cfg.seconds,
            out=out,
            env=env,
            rss=rss,
        )
    r = result_from("edge_ceiling", rows, "Settle", cfg.users, 1)
    r.rss_mb_per_worker, r.note = round(rss.max_mb, 1), "bare grpc.aio server, answers at once"
    return r


def run_db_ceiling(cfg: argparse.Namespace, db_url: str, patients: int, credential_id: int, out: Path) -> Result:
    clients = max(2, min(16, cfg.users // 4))
    args = [
        "pgbench",
        "-n",
        "-M",
        "extended",
        "-c",
        str(clients),
        "-j",
        "2",
        "-T",
        str(cfg.seconds),
        "-D",
        f"patients={patients}",
        "-D",
        f"credential_id={credential_id}",
        "-f",
        str(ROOT / "bench" / "pgbench_settle.sql"),
        "-r",
        db_url,
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=cfg.seconds + 120, check=False)
    (out / "pgbench.log").write_text(done.stdout + done.stderr)
    tps = re.search(r"tps = ([0-9.]+)", done.stdout)
    latency = re.search(r"latency average = ([0-9.]+) ms", done.stdout)
    failed = re.search(r"number of failed transactions: ([0-9]+)", done.stdout)
    return Result(
        scenario="db_ceiling",
        users=clients,
        workers=0,
        requests=int(float(tps[1]) * cfg.seconds) if tps else 0,
        failures=int(failed[1]) if failed else (0 if done.returncode == 0 else 1),
        throughput_rps=float(tps[1]) if tps else 0.0,
        p50_ms=float(latency[1]) if latency else 0.0,
        note=f"pgbench, {clients} clients, the settlement SQL directly (latency is the average)",
    )


async def _books_counts(db_url: str, settlements: list[str], refunds: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        return {
            "settlements_in_books": await conn.fetchval(
                "select count(*) from settlement where institution_id like 'HBENCH0%'"
            ),
            "seen_settlements_in_books": await conn.fetchval(
                "select count(*) from settlement where settlement_id = any($1::uuid[])", settlements
            ),
            "refunds_in_books": await conn.fetchval("select count(*) from refund where institution_id like 'HBENCH0%'"),
            "seen_refunds_in_books": await conn.fetchval(
                "select count(*) from refund where refund_id = any($1::uuid[])", refunds
            ),
        }
    finally:
        await conn.close()


def check_books(db_url: str, out: Path) -> dict[str, Any]:
    """gongji audit (every balance, settlement and refund against the ledger), and every settlement and
    refund a client got an answer for found in the books exactly once."""
    audit = subprocess.run(
        [str(BIN / "gongji"), "audit"],
        env=os.environ | {"GONGJI_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    settlements: list[str] = []
    refunds: list[str] = []
    for path in out.glob("*.seen.json"):
        if path.name.startswith("edge_ceiling"):
            continue  # the bare server's answers are not real settlements
        seen = json.loads(path.read_text())
        settlements += seen["settlements"]
        refunds += seen["refunds"]
    counts = asyncio.run(_books_counts(db_url, settlements, refunds))
    exactly_once = (
        len(set(settlements)) == len(settlements) == counts["seen_settlements_in_books"]
        and len(set(refunds)) == len(refunds) == counts["seen_refunds_in_books"]
    )
    return {
        "audit_exit_code": audit.returncode,
        "audit_differences": [line for line in audit.stdout.splitlines() if line.strip()],
        "settlements_answered": len(settlements),
        "refunds_answered": len(refunds),
        **counts,
        # Settled, but the answer reached no client before it stopped (a POS would retry or reverse).
        "settlements_unanswered_at_stop": counts["settlements_in_books"] - len(set(settlements)),
        "exactly_once": exactly_once,
    }


def targets(by: dict[str, Result], books: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 6's targets and where each stands (reported, never asserted)."""
    edge, db, uniform = by["edge_ceiling"], by["db_ceiling"], by["pharmacy"]
    half, hot = by["pharmacy_half_rate"], by["hot_family"]
    ratio = uniform.throughput_rps / edge.throughput_rps if edge.throughput_rps else 0.0
    hot_ratio = hot.throughput_rps / uniform.throughput_rps if uniform.throughput_rps else 0.0
    errors = sum(r.failures for r in by.values())
    rss = max(r.rss_mb_per_worker for n, r in by.items() if n not in ("edge_ceiling", "db_ceiling"))
    return [
        ("Settle throughput >= 0.5 x edge ceiling", f"{ratio:.2f} x ({uniform.throughput_rps:.0f}/s)", ratio >= 0.5),
        ("p99 <= 50 ms at saturation", f"{uniform.p99_ms:.0f} ms", uniform.p99_ms <= 50),
        ("p99 <= 20 ms at half the saturating rate", f"{half.p99_ms:.0f} ms", half.p99_ms <= 20),
        ("hot family >= 0.8 x uniform", f"{hot_ratio:.2f} x ({hot.throughput_rps:.0f}/s)", hot_ratio >= 0.8),
        ("zero errors", f"{errors} failed requests", errors == 0),
        ("zero audit differences", f"{len(books['audit_differences'])}", books["audit_exit_code"] == 0),
        (
            "every answered success exactly once in the books",
            f"{books['seen_settlements_in_books']} of {books['settlements_answered']} settlements, "
            f"{books['seen_refunds_in_books']} of {books['refunds_answered']} refunds",
            bool(books["exactly_once"]),
        ),
        ("server RSS <= 200 MB per worker", f"{rss:.0f} MB", rss <= 200),
        ("(for scale) DB ceiling, settlements/s", f"{db.throughput_rps:.0f}/s", True),
    ]


def markdown(meta: dict[str, Any], results: list[Result], checks: list[tuple[str, str, bool]]) -> str:
    edge = next(r.throughput_rps for r in results if r.scenario == "edge_ceiling") or 1.0
    db = next(r.throughput_rps for r in results if r.scenario == "db_ceiling") or 1.0
    lines = [
        f"Run {meta['started']} on {meta['machine']}; {meta['people']} people, {meta['users']} Locust users, "
        f"{meta['seconds']} s per scenario. Command: `{meta['command']}`.",
        "",
        "| scenario | workers | req/s | p50 ms | p99 ms | p99.9 ms | server p50 / p99 ms | failures |"
        " RSS MB/worker | x edge | x DB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        server = (
            f"{r.server_p50_ms:.1f} / {r.server_p99_ms:.1f}"
            if r.server_p50_ms is not None and r.server_p99_ms is not None
            else ""
        )
        lines.append(
            f"| {r.scenario} | {r.workers} | {r.throughput_rps:.0f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} | "
            f"{r.p999_ms:.0f} | {server} | {r.failures} | {r.rss_mb_per_worker:.0f} | "
            f"{r.throughput_rps / edge:.2f} | {r.throughput_rps / db:.2f} |"
        )
    lines += ["", "| target | where it stands | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in checks]
    return "\n".join(lines) + "\n"


def _history(path: Path) -> tuple[list[int], list[float], list[float]]:
    """Seconds, Settle (or all) requests per second, and current p99 from a Locust history CSV.

    Per-name rows carry cumulative counts only: the rate is their change per second. The current
    p99 is on the aggregated rows."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    name = "Settle" if any(r["Name"] == "Settle" for r in rows) else "Aggregated"
    counted = [r for r in rows if r["Name"] == name]
    p99 = {r["Timestamp"]: r["99%"] for r in rows if r["Name"] == "Aggregated"}
    xs: list[int] = []
    rates: list[float] = []
    tails: list[float] = []
    for before, now in itertools.pairwise(counted):
        seconds = int(now["Timestamp"]) - int(before["Timestamp"])
        if seconds <= 0:
            continue
        xs.append(int(now["Timestamp"]) - int(counted[0]["Timestamp"]))
        rates.append((int(now["Total Request Count"]) - int(before["Total Request Count"])) / seconds)
        value = p99.get(now["Timestamp"], "")
        tails.append(float(value) if value not in ("", "N/A") else 0.0)
    return xs, rates, tails


def plot(out: Path, scenarios: list[str]) -> None:
    """Throughput and p99 over time, one line per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for scenario in scenarios:
        path = out / f"{scenario}_stats_history.csv"
        if path.exists():
            xs, rates, tails = _history(path)
            top.plot(xs, rates, label=scenario)
            bottom.plot(xs, tails, label=scenario)
    top.set_ylabel("Settle/s (app: requests/s)")
    bottom.set_ylabel("p99 ms (all requests)")
    bottom.set_xlabel("seconds into the scenario")
    top.legend(fontsize=8)
    top.set_title("gongji under Locust: throughput and p99 over time")
    fig.tight_layout()
    fig.savefig(out / "throughput_p99.png", dpi=100)


async def database_server(cfg: argparse.Namespace) -> tuple[str, object]:
    """The PostgreSQL server to bench on: the one named, the one on :5432, or an embedded one."""
    if await _reachable(cfg.server_url):
        return cfg.server_url, None
    from gongji.store import db

    url, handle = db.start_embedded(ROOT / ".gongji" / "bench", database="postgres")
    return url, handle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=30, help="per scenario")
    parser.add_argument("--smoke", action="store_true", help="2,000 people, 8 users, 3 s per scenario")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the one-worker server with py-spy during each scenario (<scenario>.profile.txt, .folded)",
    )
    parser.add_argument("--server-url", default=os.environ.get("GONGJI_BENCH_SERVER_URL", DEFAULT_SERVER_URL))
    cfg = parser.parse_args()
    if cfg.smoke:
        cfg.people, cfg.users, cfg.seconds = 2_000, 8, 3
    started = dt.datetime.now(dt.UTC)
    out = ROOT / "bench" / "results" / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True)
    server_url, handle = asyncio.run(database_server(cfg))
    db_url = asyncio.run(fresh_database(server_url, "gongji_bench"))
    population = out / "population.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "seed.py"),
            "--database-url",
            db_url,
            "--people",
            str(cfg.people),
            "--out",
            str(population),
        ],
        check=True,
        cwd=ROOT,
    )
    patients = json.loads(population.read_text())["patients"]
    pgbench_credential = asyncio.run(prepare_pgbench(db_url, patients))
    env = os.environ | {"BENCH_POPULATION": str(population)}

    results = run_gongji_scenarios(cfg, db_url, out, env)
    results.append(run_edge_ceiling(cfg, out, env))
    results.append(run_db_ceiling(cfg, db_url, len(patients), pgbench_credential, out))
    books = check_books(db_url, out)
    checks = targets({r.scenario: r for r in results}, books)

    meta = {
        "started": started.isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {psutil.virtual_memory().total // 2**30} GiB, "
        f"Python {platform.python_version()}",
        "people": cfg.people,
        "users": cfg.users,
        "seconds": cfg.seconds,
        "command": "make bench-smoke" if cfg.smoke else "make bench",
    }
    report = markdown(meta, results, checks)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "results": [asdict(r) for r in results],
                "books": books,
                "targets": [{"target": n, "value": v, "met": ok} for n, v, ok in checks],
            },
            indent=2,
        )
    )
    plot(out, [r.scenario for r in results])
    print("\n" + report)
    print(f"results, Locust reports and the plot: {out.relative_to(ROOT)}")
    del handle
    return 0 if books["audit_exit_code"] == 0 and books["exactly_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
