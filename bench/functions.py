"""Time inside each server-side function of a settlement, and the database ceiling beside it.

    .venv/bin/python bench/functions.py                    # 20,000 people, 8 pgbench clients, 30 s
    .venv/bin/python bench/functions.py --against HEAD~1   # alternate with another revision's SQL code
    .venv/bin/python bench/functions.py --variant "SQL" --undo "SQL"   # alternate with a schema change
    .venv/bin/python bench/functions.py --server-python ../before/.venv/bin/python   # another checkout's
    .venv/bin/python bench/functions.py --books   # what the hash chain and the outbox cost (issue 19)

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
With `--books`, the rounds alternate four configurations of this tree: as it is, without the outbox's
triggers, without the hash chain's (the link made nullable), without both; a table of PostgreSQL's CPU
and the rate per configuration follows, each beside "neither". The triggers are put back after each
round; the link stays nullable when entries were written without it (the database is a scratch one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys

import asyncpg
from ceilings import prepare_pgbench, run_db_ceiling
from common import DEFAULT_SERVER_URL, ROOT, Result, fresh_database

DATABASE = "gongji_functions"
# A version measured: its name, its server-side code (None: what is there), a schema change applied
# before each of its rounds and what undoes it after each.
Version = tuple[str, str | None, str | None, str | None]


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


# --books (issue 19): the settlement's two kinds of per-row triggers, each left out in turn. The outbox's
# are the deferred constraint triggers calling gongji_*_event (a settlement fires settlement_event only);
# the chain's are the two BEFORE INSERT link triggers, whose column must then take nulls.
_NO_OUTBOX = r"""
do $$
declare t record;
begin
    for t in select g.tgname, g.tgrelid::regclass as tab from pg_trigger g join pg_proc p on p.oid = g.tgfoid
              where p.proname like 'gongji\_%\_event'
    loop
        execute format('drop trigger %I on %s', t.tgname, t.tab);
    end loop;
end
$$"""
_NO_CHAIN = """
drop trigger ledger_entry_link on ledger_entry;
drop trigger wallet_entry_link on wallet_entry;
alter table ledger_entry alter column link drop not null;
alter table wallet_entry alter column link drop not null"""
_BOOKS = ("chain + outbox (as is)", "chain, no outbox", "outbox, no chain", "neither")


def _books_versions() -> list[Version]:
    """The four configurations of --books. Re-applying chain.sql and events.sql puts back what one
    dropped, as the code files define it: chain.sql creates the link triggers, events.sql's DO block
    every outbox trigger that is missing."""
    from gongji.store import migrate

    restore = "\n".join(code.sql for code in migrate.bundled_code() if code.name in ("chain.sql", "events.sql"))
    changes = (None, _NO_OUTBOX, _NO_CHAIN, _NO_OUTBOX + ";\n" + _NO_CHAIN)
    return [(name, None, change, change and restore) for name, change in zip(_BOOKS, changes, strict=True)]


async def _restore_link_not_null(db_url: str) -> None:
    """The link NOT NULL again, unless rounds without the chain wrote entries without a link."""
    conn = await asyncpg.connect(db_url)
    try:
        for table in ("ledger_entry", "wallet_entry"):
            unlinked = await conn.fetchval(f"select count(*) from {table} where link is null")
            if unlinked:
                print(f"{table}.link stays nullable: {unlinked:,} entries were written without the chain")
            else:
                await conn.execute(f"alter table {table} alter column link set not null")
    finally:
        await conn.close()


def _books_table(figures: dict[str, list[tuple[float | None, float]]]) -> None:
    """Each configuration's PostgreSQL CPU per settlement and rate, in each round and on average, with
    the difference of the averages to "neither"."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    cpu = {name: mean([pg for pg, _ in rounds]) for name, rounds in figures.items()}
    rate = {name: statistics.fmean(tps for _, tps in rounds) for name, rounds in figures.items()}
    base_cpu, base_rate = cpu["neither"], rate["neither"]
    print(
        "\n| configuration | PostgreSQL CPU µs per settlement, each round | mean | settlements/s, mean"
        " | CPU − neither, µs | settlements/s × neither |\n|---|---|---|---|---|---|"
    )
    for name, rounds in figures.items():
        each = " / ".join("n/a" if pg is None else f"{pg:,.0f}" for pg, _ in rounds)
        diff = "n/a" if cpu[name] is None or base_cpu is None else f"{cpu[name] - base_cpu:+,.0f}"
        mean_cpu = "n/a" if cpu[name] is None else f"{cpu[name]:,.0f}"
        print(f"| {name} | {each} | {mean_cpu} | {rate[name]:,.0f} | {diff} | {rate[name] / base_rate:.2f} |")


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
    parser.add_argument("--server-url", default=os.environ.get("GONGJI_BENCH_SERVER_URL", DEFAULT_SERVER_URL))
    parser.add_argument("--against", metavar="REV", help="alternate with the server-side code of this git revision")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each version")
    parser.add_argument("--variant", metavar="SQL", help="alternate with this tree plus this schema change")
    parser.add_argument("--undo", metavar="SQL", help="what undoes --variant after each of its rounds")
    parser.add_argument("--server-python", metavar="PATH", help="measure another checkout's schema and functions")
    parser.add_argument("--books", action="store_true", help="alternate with and without the chain and the outbox")
    cfg = parser.parse_args()
    if bool(cfg.variant) != bool(cfg.undo):
        parser.error("--variant and --undo go together")
    if cfg.server_python and (cfg.against or cfg.variant or cfg.books):
        parser.error("--server-python measures that checkout alone")
    if cfg.books and (cfg.against or cfg.variant):
        parser.error("--books compares this tree's configurations alone")
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
    versions = _versions(cfg)
    figures: dict[str, list[tuple[float | None, float]]] = {name: [] for name, *_ in versions}
    failures = 0
    for round_ in range(1, cfg.rounds + 1):
        for name, sql, variant, undo in versions:
            asyncio.run(_apply(db_url, sql))
            if variant:
                asyncio.run(_execute(db_url, variant))
            try:
                ceiling = run_db_ceiling(cfg, db_url, len(patients), credential_id, out)
            finally:
                if undo:
                    asyncio.run(_execute(db_url, undo))
            failures += ceiling.failures
            pg_us = ceiling.cost.per_settlement()["postgres_us"] if ceiling.cost is not None else None
            figures[name].append((pg_us, ceiling.throughput_rps))
            _report(f"round {round_}, {name}", ceiling, asyncio.run(_function_times(db_url)))
    asyncio.run(_apply(db_url, versions[0][1]))
    if cfg.books:
        asyncio.run(_restore_link_not_null(db_url))
        _books_table(figures)
    return 0 if failures == 0 else 1


def _versions(cfg: argparse.Namespace) -> list[Version]:
    """What the rounds alternate: this tree and what the options name. Code None: the functions the
    seed applied stay (another checkout's own, or this tree's for --books)."""
    if cfg.server_python:
        return [(f"the checkout of {cfg.server_python}", None, None, None)]
    if cfg.books:
        return _books_versions()
    versions: list[Version] = [("this tree", _code_of(None), None, None)]
    if cfg.against:
        versions.append((cfg.against, _code_of(cfg.against), None, None))
    if cfg.variant:
        versions.append(("this tree with the variant", _code_of(None), cfg.variant, cfg.undo))
    return versions


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
