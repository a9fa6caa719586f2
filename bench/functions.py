"""Time inside each server-side function of a settlement, and the database ceiling beside it.

    .venv/bin/python bench/functions.py                    # 20,000 people, 8 pgbench clients, 30 s
    .venv/bin/python bench/functions.py --against HEAD~1   # alternate with another revision's SQL code
    .venv/bin/python bench/functions.py --variant "SQL" --undo "SQL"   # alternate with a schema change
    .venv/bin/python bench/functions.py --server-python ../before/.venv/bin/python   # another checkout's

Seeds a fresh database `gongji_functions` (bench/seed.py), turns on PostgreSQL's function statistics for
it (`track_functions = 'pl'`: PL/pgSQL and C functions are counted, SQL functions only when they are
not inlined), runs pgbench with the settlement SQL of the DB ceiling (bench/pgbench_settle.sql), and
prints each function's calls and mean time per call from `pg_stat_user_functions`: `total` includes the
functions it calls, `self` does not. Splitting a function into steps is free only if the caller's mean
`total` does not grow; compare two versions in one sitting on one machine, never across days: with
`--against REV`, the rounds alternate between this tree's server-side code and REV's (its
`store/sql/*.sql`, applied over the same seeded database), so both see the same machine and data.
With `--variant SQL --undo SQL`, they alternate between this tree as it is and this tree with SQL
applied (a constraint dropped, an index added), undone after each of its rounds: evidence for a schema
change before it becomes a migration. With `--server-python PATH` (as in bench/run.py), another
checkout's interpreter seeds the database, so its migrations and functions are measured with its own
`bench/pgbench_settle.sql`: for a revision whose schema differs, run it and this tree's in turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys

import asyncpg
from ceilings import prepare_pgbench, run_db_ceiling
from common import DEFAULT_SERVER_URL, ROOT, Result, fresh_database

DATABASE = "gongji_functions"


def _code_of(rev: str | None) -> str:
    """The server-side code files of this tree (rev None) or of a git revision, in this tree's order
    (a file the revision lacks is left out)."""
    from gongji.store import migrate

    if rev is None:
        return "\n".join(code.sql for code in migrate.bundled_code())
    folder = "src/gongji/store/sql"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:{folder}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    show = ["git", "-C", str(ROOT), "show"]
    return "\n".join(
        subprocess.run([*show, f"{rev}:{folder}/{name}"], check=True, capture_output=True, text=True).stdout
        for name in migrate.CODE_FILES
        if name in listed
    )


# Every gongji function goes before a version's code is applied: another revision's functions may
# answer other columns, which `create or replace` refuses. The schema stays this tree's; code of a
# revision older than the schema writes the columns it knows (the newer ones are nullable).
_DROP_FUNCTIONS = r"""
do $$
declare f regprocedure;
begin
    for f in select p.oid::regprocedure from pg_proc p join pg_namespace n on n.oid = p.pronamespace
              where n.nspname = 'public' and p.proname like 'gongji\_%'
    loop
        execute 'drop function ' || f || ' cascade';
    end loop;
end
$$"""


async def _track_functions(db_url: str) -> None:
    """Count PL/pgSQL functions for the database's sessions from now on."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f"alter database {DATABASE} set track_functions = 'pl'")
    finally:
        await conn.close()


async def _apply(db_url: str, sql: str | None) -> None:
    """This version's server-side code in place of any other (None: leave what is there), and the
    statistics reset."""
    conn = await asyncpg.connect(db_url)
    try:
        if sql is not None:
            async with conn.transaction():
                await conn.execute(_DROP_FUNCTIONS)
                await conn.execute(sql)
        await conn.execute("select pg_stat_reset()")  # each version's figures from zero
    finally:
        await conn.close()


async def _execute(db_url: str, sql: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _function_times(db_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        await asyncio.sleep(1)  # backends report their counters when their transaction ends, within 0.5 s
        return await conn.fetch(
            "select funcname, calls, total_time, self_time from pg_stat_user_functions"
            " where calls > 0 order by total_time desc"
        )
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=32, help="pgbench clients are a quarter of this (2 to 16)")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--server-url", default=DEFAULT_SERVER_URL)
    parser.add_argument("--against", metavar="REV", help="alternate with the server-side code of this git revision")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each version")
    parser.add_argument("--variant", metavar="SQL", help="alternate with this tree plus this schema change")
    parser.add_argument("--undo", metavar="SQL", help="what undoes --variant after each of its rounds")
    parser.add_argument("--server-python", metavar="PATH", help="measure another checkout's schema and functions")
    cfg = parser.parse_args()
    out = ROOT / "bench" / "results" / "functions"
    out.mkdir(parents=True, exist_ok=True)
    db_url = asyncio.run(fresh_database(cfg.server_url, DATABASE))
    population = out / "population.json"
    seed = [cfg.server_python or sys.executable, str(ROOT / "bench" / "seed.py"), "--database-url", db_url]
    seed += ["--people", str(cfg.people)]
    subprocess.run([*seed, "--out", str(population)], check=True, cwd=ROOT)
    patients = json.loads(population.read_text())["patients"]
    credential_id = asyncio.run(prepare_pgbench(db_url, patients))
    asyncio.run(_track_functions(db_url))
    if bool(cfg.variant) != bool(cfg.undo):
        parser.error("--variant and --undo go together")
    if cfg.server_python and (cfg.against or cfg.variant):
        parser.error("--server-python measures that checkout alone")
    # Code None: the functions the seed applied stay (another checkout's own).
    versions: list[tuple[str, str | None, str | None]] = [("this tree", _code_of(None), None)]
    if cfg.server_python:
        versions = [(f"the checkout of {cfg.server_python}", None, None)]
    if cfg.against:
        versions.append((cfg.against, _code_of(cfg.against), None))
    if cfg.variant:
        versions.append(("this tree with the variant", _code_of(None), cfg.variant))
    failures = 0
    for round_ in range(1, cfg.rounds + 1):
        for name, sql, variant in versions:
            asyncio.run(_apply(db_url, sql))
            if variant:
                asyncio.run(_execute(db_url, variant))
            try:
                ceiling = run_db_ceiling(cfg, db_url, len(patients), credential_id, out)
            finally:
                if variant:
                    asyncio.run(_execute(db_url, cfg.undo))
            failures += ceiling.failures
            _report(f"round {round_}, {name}", ceiling, asyncio.run(_function_times(db_url)))
    asyncio.run(_apply(db_url, versions[0][1]))
    return 0 if failures == 0 else 1


def _report(title: str, ceiling: Result, rows: list[asyncpg.Record]) -> None:
    print(f"\n{title}: db ceiling {ceiling.throughput_rps:.0f} settlements/s, {ceiling.p50_ms:.3f} ms average")
    if ceiling.cost is not None:
        per = ceiling.cost.per_settlement()
        pg, wal = per["postgres_us"], per["wal_bytes"]
        print(
            f"PostgreSQL CPU per settlement: {'unavailable' if pg is None else f'{pg:,.0f} µs'};"
            f" WAL per settlement: {'unavailable' if wal is None else f'{wal:,.0f} bytes'} (cluster-wide)"
        )
    print("\n| function | calls | mean total µs | mean self µs |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['funcname']} | {r['calls']} | {1000 * r['total_time'] / r['calls']:.1f}"
            f" | {1000 * r['self_time'] / r['calls']:.1f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
