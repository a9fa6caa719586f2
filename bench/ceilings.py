"""The two ceilings a scenario is compared with: a bare grpc.aio server (the edge) and pgbench running
the settlement SQL (the database)."""

from __future__ import annotations

import argparse
import re
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
from common import ROOT, Result, RssSampler, free_port, process, wait_for_port
from cost import CostMeter
from scenarios import locust, result_from, server_checkout


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


def run_edge_ceiling(cfg: argparse.Namespace, out: Path, env: dict[str, str]) -> Result:
    port = free_port()
    args = [sys.executable, str(ROOT / "bench" / "bare_server.py"), "--listen", f"127.0.0.1:{port}"]
    with process(args, env=env, log=out / "bare_server.log") as server:
        wait_for_port(port, server)
        rss = RssSampler(server.pid)
        with CostMeter(None, server_pid=server.pid) as meter:
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
    # No metrics of its own: the calls Locust counted (answered or failed).
    r.cost = meter.cost
    r.cost.settlements = _count(rows.get("Settle"))
    r.cost.rpcs = _count(rows.get("Aggregated"))
    r.cost.count_source = "Locust's counts"
    return r


def _count(row: dict[str, str] | None) -> int:
    return int((row or {}).get("Request Count", 0) or 0)


def _pgbench_script(cfg: argparse.Namespace) -> Path:
    """The settlement SQL of the server under test: another checkout's own (--server-python) when it has
    one, since its functions take that revision's arguments."""
    other = getattr(cfg, "server_python", None)
    script = server_checkout(other) / "bench" / "pgbench_settle.sql" if other else None
    return script if script is not None and script.exists() else ROOT / "bench" / "pgbench_settle.sql"


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
        str(_pgbench_script(cfg)),
        "-r",
        db_url,
    ]
    # pgbench's backends flush their statistics as they exit: no wait for them after the window.
    with CostMeter(db_url, stats_wait_s=1.0) as meter:
        done = subprocess.run(args, capture_output=True, text=True, timeout=cfg.seconds + 120, check=False)
    (out / "pgbench.log").write_text(done.stdout + done.stderr)
    processed = re.search(r"number of transactions actually processed: ([0-9]+)", done.stdout)
    meter.cost.settlements = int(processed[1]) if processed else None
    meter.cost.count_source = "pgbench's transactions (each reads what issuing a voucher reads, then settles)"
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
        cost=meter.cost,
    )
