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
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict

import psutil
from books import check_books
from ceilings import prepare_pgbench, run_db_ceiling, run_edge_ceiling
from common import DEFAULT_SERVER_URL, ROOT, fresh_database, reachable
from report import markdown, plot, targets
from scenarios import run_gongji_scenarios, server_checkout


async def database_server(cfg: argparse.Namespace) -> tuple[str, object]:
    """The PostgreSQL server to bench on: the one named, the one on :5432, or an embedded one."""
    if await reachable(cfg.server_url):
        return cfg.server_url, None
    from gongji.store import db

    url, handle = db.start_embedded(ROOT / ".gongji" / "bench", database="postgres")
    return url, handle


def describe_server(server_python: str | None) -> str:
    """Which gongji the scenarios load: this tree's, or another checkout's at its revision."""
    checkout = server_checkout(server_python) if server_python else ROOT
    rev = subprocess.run(
        ["git", "-C", str(checkout), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    which = "another checkout's (--server-python)" if server_python else "this tree's"
    return f"{which} gongji at {rev or 'an unknown revision'}"


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
    parser.add_argument(
        "--server-python",
        metavar="PATH",
        help="the Python of another checkout's virtual environment: load its `gongji serve` (run from that"
        " checkout) instead of this tree's, with this tree's bench (bench/README.md, before and after)",
    )
    cfg = parser.parse_args()
    if cfg.smoke:
        cfg.people, cfg.users, cfg.seconds = 2_000, 8, 3
    if cfg.server_python:  # absolute, the server runs from the other checkout (not resolved: a venv's link)
        cfg.server_python = os.path.abspath(cfg.server_python)
    started = dt.datetime.now(dt.UTC)
    out = ROOT / "bench" / "results" / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True)
    server = describe_server(cfg.server_python)
    print(f"server: {server}", flush=True)
    server_url, handle = asyncio.run(database_server(cfg))
    db_url = asyncio.run(fresh_database(server_url, "gongji_bench"))
    population = out / "population.json"
    # With --server-python the other checkout's interpreter seeds, so the schema and the server-side
    # code are that revision's own (bench/seed.py imports gongji from the interpreter's environment).
    subprocess.run(
        [
            cfg.server_python or sys.executable,
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
        "server": server,
    }
    report = markdown(meta, results, checks)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "results": [
                    asdict(r) | {"cost_per_settlement": r.cost.per_settlement() if r.cost else None} for r in results
                ],
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
