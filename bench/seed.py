"""Build a realistic population for the benchmarks, fast: families with balances, grants, terminals.

    python bench/seed.py --database-url URL --people 100000 --out bench/results/run/population.json

Rows go in with COPY (asyncpg's copy_records_to_table), a table at a time. The books stay exact: every
balance is a credit with its ledger entry, as `gongji audit` checks. Writes the people the load
generator needs (patients, the hot family) and the terminal tokens to --out.

A production database has a history, and the bench must too: with the settlement tables empty when
`analyze` runs, PostgreSQL plans their look-ups (has this voucher been used? was this request seen?)
as sequential scans, and a PL/pgSQL function keeps that plan for its session until autovacuum next
analyzes the table, a minute or more into the load: the bench then measured scans of a growing table,
not gongji. So the seed adds past cash-only settlements (one per two people, a fortnight back, under an
institution of their own that the books check leaves apart; cash-only, so no balance or ledger entry
changes) before it analyzes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from tqdm import tqdm

from gongji.domain.people import resident_id_check_char
from gongji.store import credentials, migrate
from gongji.store.credentials import Kind

BENCH_INSTITUTIONS = 16
HOT_FAMILY_MEMBERS = 64
PG_INSTITUTION = "HBENCHPGBENCH"  # pgbench's settlements, apart from the load generator's
HISTORY_INSTITUTION = "HBENCHHISTORY"  # the past settlements of the seed (module docstring)


@dataclass
class Population:
    people: list[tuple[object, ...]] = field(default_factory=list)
    accounts: list[tuple[str, int]] = field(default_factory=list)
    grants: list[tuple[str, str, str]] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    hot_authorizer: str = ""
    hot_members: list[str] = field(default_factory=list)


def _person_id(region: str, born: dt.date, seq: int) -> str:
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    return first17 + resident_id_check_char(first17)


def build(people: int, rng: random.Random) -> Population:
    """Families of 2 to 4: an employee authorizer, a spouse (employee or resident) and children
    (residents). Six families in ten have grants; the rest settle with their own account and cash."""
    pop = Population()
    family = 0
    while len(pop.people) < people - HOT_FAMILY_MEMBERS - 1:
        k, seq = divmod(family, 1_000)
        head = _person_id("610113", dt.date(1965, 1, 1) + dt.timedelta(days=k), seq)
        spouse = _person_id("610102", dt.date(1967, 1, 1) + dt.timedelta(days=k), seq)
        children = [
            _person_id("610104", dt.date(2005 + c * 3, 1, 1) + dt.timedelta(days=k), seq)
            for c in range(rng.choice((0, 1, 2)))
        ]
        spouse_scheme = "EMPLOYEE" if rng.random() < 0.7 else "RESIDENT"
        _add(pop, head, "EMPLOYEE", dt.date(1965, 1, 1) + dt.timedelta(days=k), rng.randint(0, 300_000))
        _add(pop, spouse, spouse_scheme, dt.date(1967, 1, 1) + dt.timedelta(days=k), rng.randint(0, 50_000))
        for c, child in enumerate(children):
            _add(pop, child, "RESIDENT", dt.date(2005 + c * 3, 1, 1) + dt.timedelta(days=k), 0)
        if rng.random() < 0.6:
            pop.grants += [(head, spouse, "SPOUSE"), *((head, child, "CHILD") for child in children)]
        pop.patients += [spouse, *children, head]
        family += 1
    # The hot family: one authorizer, many members settling against them at once.
    hot = _person_id("610199", dt.date(1960, 6, 1), 0)
    _add(pop, hot, "EMPLOYEE", dt.date(1960, 6, 1), 10**11 // 100)
    pop.hot_authorizer = hot
    for m in range(HOT_FAMILY_MEMBERS):
        member = _person_id("610198", dt.date(1990, 1, 1) + dt.timedelta(days=m), 0)
        _add(pop, member, "EMPLOYEE", dt.date(1990, 1, 1) + dt.timedelta(days=m), rng.randint(0, 2_000))
        pop.grants.append((hot, member, "CHILD"))
        pop.hot_members.append(member)
    return pop


def _add(pop: Population, person_id: str, scheme: str, born: dt.date, balance_fen: int) -> None:
    pop.people.append((person_id, "测试", born, "610100", scheme, "ACTIVE"))
    if scheme == "EMPLOYEE":
        pop.accounts.append((person_id, balance_fen))


async def load(conn: asyncpg.Connection, pop: Population) -> None:
    """COPY the population in; every balance arrives as a credit with its ledger entry."""
    credits = [(uuid.uuid4(), f"bench-credit-{pid}", pid, bal, "bench") for pid, bal in pop.accounts if bal > 0]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=14)
    history = [
        (uuid.uuid4(), HISTORY_INSTITUTION, "POS", f"history-{i}", pid, uuid.uuid4(), 1_000, 0, 0, 1_000, 0, past)
        for i, pid in enumerate(pop.patients[::2])
    ]
    # A schema from before migration 0008 keeps its vouchers in a table that a settlement references:
    # it is seeded without a history (and measured as it was).
    if await conn.fetchval(
        "select exists (select 1 from pg_constraint"
        " where conrelid = 'settlement'::regclass and confrelid = 'voucher'::regclass)"
    ):
        history = []
    steps = [
        ("person", ["person_id", "name", "birth_date", "region_code", "scheme", "status"], pop.people),
        ("account", ["person_id", "balance_fen"], pop.accounts),
        ("mutual_aid_grant", ["authorizer_id", "beneficiary_id", "relationship"], pop.grants),
        ("credit", ["credit_id", "request_id", "person_id", "amount_fen", "memo"], credits),
        (
            "ledger_entry",
            ["person_id", "amount_fen", "balance_after_fen", "kind", "credit_id"],
            [(pid, bal, bal, "CREDIT", cid) for cid, _, pid, bal, _ in credits],
        ),
        (
            "idempotency_key",
            ["scope", "request_id", "request_digest", "resource_id"],
            [("credit", rid, hashlib.sha256(rid.encode()).digest(), cid) for cid, rid, *_ in credits],
        ),
        (
            "settlement",
            [
                "settlement_id",
                "institution_id",
                "terminal_id",
                "request_id",
                "patient_id",
                "voucher_id",
                "amount_fen",
                "acct_pay_fen",
                "acct_mulaid_pay_fen",
                "psn_cash_pay_fen",
                "balc_fen",
                "created_at",
            ],
            history,
        ),
        (
            "idempotency_key",
            ["scope", "request_id", "request_digest", "resource_id"],
            [
                (f"settle/{HISTORY_INSTITUTION}", rid, hashlib.sha256(rid.encode()).digest(), sid)
                for sid, _, _, rid, *_ in history
            ],
        ),
    ]
    await conn.execute("insert into institution values ($1, 'history') on conflict do nothing", HISTORY_INSTITUTION)
    with tqdm(total=sum(len(rows) for *_, rows in steps), unit="row", desc="seeding") as bar:
        for table, columns, rows in steps:
            for start in range(0, len(rows), 20_000):
                chunk = rows[start : start + 20_000]
                await conn.copy_records_to_table(table, records=chunk, columns=columns)
                bar.update(len(chunk))
    await conn.execute("analyze")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    pop = build(args.people, random.Random(args.seed))
    conn = await asyncpg.connect(args.database_url)
    try:
        await migrate.migrate(conn)
        await load(conn, pop)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(args.database_url, min_size=1, max_size=2)
    try:
        terminals = [
            await credentials.create(pool, Kind.TERMINAL, "bench", institution_id=f"HBENCH{i:06d}", terminal_id="POS")
            for i in range(BENCH_INSTITUTIONS)
        ]
        await pool.execute("insert into institution values ($1, 'pgbench') on conflict do nothing", PG_INSTITUTION)
        app = await credentials.create(pool, Kind.APP, "bench app")
        operator = await credentials.create(pool, Kind.OPERATOR, "bench operator")
    finally:
        await pool.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "terminals": terminals,
                "app": app,
                "operator": operator,
                "patients": pop.patients,
                "hot_authorizer": pop.hot_authorizer,
                "hot_members": pop.hot_members,
                "people": len(pop.people),
                "grants": len(pop.grants),
            }
        )
    )
    print(f"seeded {len(pop.people)} people, {len(pop.grants)} grants, {BENCH_INSTITUTIONS} terminals")


if __name__ == "__main__":
    asyncio.run(main())
