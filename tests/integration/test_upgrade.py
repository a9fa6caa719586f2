"""An existing database upgrades in place.

A database is built from the released migrations alone (0001-0004, as a server of before the split of
schema and code left it: functions defined by those migrations, no `schema_code`), filled with people,
balances, a grant and a binding (as SQL in the released schema's columns), then settlements (one with
mutual aid), a refund and a reversal through the functions those migrations defined. Then today's
runner upgrades it, from two connections at once: every numbered migration and every code file is
applied exactly once, every row and balance is as it was, `gongji audit` finds nothing, and today's
settlement statement settles on it.

The released migrations are the files in the tree: the runner refuses a database whose applied
migration differs from its file, so a released file cannot change without every upgrade failing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from harness import fingerprint
from support import with_database

from gongji import demo
from gongji.api.validate import china_today
from gongji.domain.premium import PremiumRate
from gongji.store import audit, credentials, db, migrate, premiums, settlements
from gongji.store.credentials import Kind

RELEASED = 4  # the last numbered migration released before schema and code were split


@pytest.fixture
async def old_database(direct_server_url: str) -> AsyncIterator[str]:
    """A database with the released migrations only; dropped afterwards."""
    name = f"gongji_upgrade_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(direct_server_url)
    await admin.execute(f'create database "{name}"')
    url = with_database(direct_server_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate.migrate(conn, [m for m in migrate.bundled() if m.version <= RELEASED], code=[])
        finally:
            await conn.close()
        yield url
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


_VOUCHER = """
insert into voucher (voucher_id, person_id, requester_id, expires_at)
values (gen_random_uuid(), $1, $1, now() + interval '60 seconds') returning voucher_id"""
# The released functions, called as the released server called them.
_OLD_SETTLE = "select * from gongji_settle($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_OLD_CANCEL = "select * from gongji_cancel($1, $2, $3, $4, $5)"
_OLD_REVERSE = "select * from gongji_reverse($1, $2)"


async def _old_settle(conn: asyncpg.Connection, request_id: str, patient: str, amount_fen: int) -> asyncpg.Record:
    voucher_id = await conn.fetchval(_VOUCHER, patient)
    row = await conn.fetchrow(
        _OLD_SETTLE,
        demo.INSTITUTION_ID,
        demo.TERMINAL_ID,
        request_id,
        b"old",
        voucher_id,
        patient,
        amount_fen,
        None,
        True,
    )
    assert row is not None and row["outcome"] == "OK", row
    return row


# People, balances (a credit and its ledger entry each), a grant and a binding, in the released schema's
# columns: written as SQL, not through today's code, which reads columns the released schema lacks.
_OLD_PEOPLE = """
insert into person (person_id, name, birth_date, region_code, scheme, status)
select * from unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::text[], $6::text[])"""
_OLD_CREDIT = """
with c as (insert into credit (credit_id, request_id, person_id, amount_fen) values (gen_random_uuid(), $1, $2, $3)
           returning credit_id),
     a as (insert into account (person_id, balance_fen) values ($2, $3))
insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, credit_id)
select $2, $3, $3, 'CREDIT', credit_id from c"""
_OLD_INSTITUTION = "insert into institution (institution_id, name) values ($1, 'upgrade test')"
_OLD_GRANT = """
insert into mutual_aid_grant (authorizer_id, beneficiary_id, relationship, scope)
values ($1, $2, $3, 'PROVINCE')"""
_OLD_BINDING = """
insert into kinship_binding (holder_id, member_id, relationship, phone, reason, face_verification_ref)
values ($1, $2, 'SPOUSE', '13800138000', 'upgrade test', 'FV-1')"""
_OLD_BALANCES = ((demo.XIAOMING, 100_000), (demo.XIAOLI, 2_000), (demo.ZHANGWEI, 50_000))


async def _fill(url: str) -> None:
    """What a server of the released migrations would have written."""
    conn = await asyncpg.connect(url)
    try:
        people = [demo.XIAOMING, demo.XIAOLI, demo.XIAOBAO, demo.ZHANGWEI, demo.LIUFANG]
        await conn.execute(
            _OLD_PEOPLE,
            [p.person_id for p in people],
            [p.name for p in people],
            [p.birth_date for p in people],
            [p.region_code for p in people],
            [p.scheme.value for p in people],
            [p.status.value for p in people],
        )
        for person, fen in _OLD_BALANCES:
            await conn.execute(_OLD_CREDIT, f"old-credit-{person.person_id}", person.person_id, fen)
        await conn.execute(_OLD_INSTITUTION, demo.INSTITUTION_ID)
        await conn.execute(_OLD_GRANT, demo.XIAOMING.person_id, demo.XIAOLI.person_id, "SPOUSE")
        await conn.execute(_OLD_GRANT, demo.XIAOMING.person_id, demo.XIAOBAO.person_id, "CHILD")
        await conn.execute(_OLD_BINDING, demo.ZHANGWEI.person_id, demo.LIUFANG.person_id)
        own = await _old_settle(conn, "old-1", demo.XIAOMING.person_id, 1_500)
        aided = await _old_settle(conn, "old-2", demo.XIAOLI.person_id, 3_500)  # 20.00 own, 15.00 mutual aid
        assert aided["acct_mulaid_pay_fen"] > 0
        await _old_settle(conn, "old-3", demo.ZHANGWEI.person_id, 800)
        refund = await conn.fetchrow(
            _OLD_CANCEL, demo.INSTITUTION_ID, "old-refund", b"old", aided["settlement_id"], 500
        )
        assert refund is not None and refund["outcome"] == "OK", refund
        reversal = await conn.fetchrow(_OLD_REVERSE, demo.INSTITUTION_ID, "old-1")
        assert reversal is not None and reversal["settlement_id"] == own["settlement_id"], reversal
    finally:
        await conn.close()


_BALANCES = "select person_id, balance_fen from account order by person_id"


async def test_a_database_of_the_released_migrations_upgrades_in_place(old_database: str) -> None:
    await _fill(old_database)
    conn = await asyncpg.connect(old_database)
    try:
        before, balances = await fingerprint(conn), await conn.fetch(_BALANCES)
        assert before["settlements"] == 3 and before["refunds"] == 2 and before["bindings"] >= 1

        # Two servers starting at once: they take turns; everything is applied once.
        first, second = await asyncpg.connect(old_database), await asyncpg.connect(old_database)
        try:
            applied = await asyncio.gather(migrate.migrate(first), migrate.migrate(second))
        finally:
            await first.close()
            await second.close()
        newer = [m.version for m in migrate.bundled() if m.version > RELEASED]
        assert sorted(m.version for m in applied[0] + applied[1]) == newer
        assert await conn.fetchval("select count(*) from schema_migration") == len(migrate.bundled())
        code = await conn.fetch("select name, sha256 from schema_code order by name")
        assert {(r["name"], r["sha256"]) for r in code} == {(c.name, c.sha256) for c in migrate.bundled_code()}

        after = await fingerprint(conn)
        assert {k: after[k] for k in before} == before
        # The premium tables and the 医保钱包's came with the upgrade, empty.
        assert {k: after[k] for k in after.keys() - before.keys()} == {
            "premium_rates": 0,
            "premium_rates_updated": None,
            "premium_payments": 0,
            "premium_refunds": 0,
            "wallets": 0,
            "wallet_balances_fen": 0,
            "wallets_updated": None,
            "transfers": 0,
            "transfers_pending": 0,
            "transfers_resolved": 0,
            "wallet_entries": 0,
        }
        assert await conn.fetch(_BALANCES) == balances
        assert await audit.differences(conn) == []
        # The ledger's hash chains were built once by the upgrade, over every entry of before.
        assert await conn.fetchval("select count(*) from ledger_entry where link is null") == 0
        assert await audit.chain_breaks(conn) == []
        # The outbox starts empty: the history of before is in the tables, not in the stream.
        assert await conn.fetchval("select count(*) from outbox_event") == 0
        # Nothing left to do on the next start.
        assert await migrate.migrate(conn) == []
    finally:
        await conn.close()
    await _settles_with_todays_code(old_database)


async def _settles_with_todays_code(url: str) -> None:
    pool = await db.create_pool(url, min_size=1, max_size=2, command_timeout_s=30)
    try:
        token = await credentials.create(
            pool, Kind.TERMINAL, "after upgrade", institution_id=demo.INSTITUTION_ID, terminal_id="POS-NEW"
        )
        credential_id = await pool.fetchval(
            "select credential_id from credential where token_sha256 = $1", credentials.token_hash(token)
        )
        # 李小丽's own balance went to old-2: today's code draws on the grant the released one used, and
        # counts it on top of what the upgrade counted for that grant before (gongji audit proves both).
        # Today's voucher is a token only (nothing written at issue): the claims as the server passes them.
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        row = await settlements.settle(
            pool,
            credential_id=credential_id,
            request_id="new-1",
            digest=b"new",
            voucher=settlements.VoucherArgs(uuid.uuid4(), True, expires, None),
            patient_id=demo.XIAOLI.person_id,
            amount_fen=345,
            authorizer_id=None,
            use_personal_account=True,
            timing=settlements.SettleTiming(),
        )
        assert (row.acct_pay_fen, row.acct_mulaid_pay_fen) == (0, 345)
        # The vouchers of the released server stay as history, each used by its settlement.
        assert await pool.fetchval("select count(*) from voucher where used_at is null") == 0
        # A grant made before the upgrade pays a premium: 王小明's, to his resident-insured son.
        today = china_today()
        window = (dt.date(today.year, 1, 1), dt.date(today.year, 12, 31))
        await premiums.set_rate(pool, PremiumRate("610100", today.year + 1, 40_000, *window), 10)
        app = await credentials.create(pool, Kind.APP, "app after upgrade")
        app_id = await pool.fetchval(
            "select credential_id from credential where token_sha256 = $1", credentials.token_hash(app)
        )
        paid = await premiums.pay(
            pool,
            credential_id=app_id,
            request_id="premium-1",
            digest=b"new",
            payer_id=demo.XIAOMING.person_id,
            beneficiary_id=demo.XIAOBAO.person_id,
            year=today.year + 1,
            today=today,
        )
        assert paid.payment.amount_fen == 40_000
        assert await audit.differences(pool) == []
        assert await audit.chain_breaks(pool) == [], "entries written after the upgrade extend the chains"
        # What is written after the upgrade writes its events; credentials of before may read them.
        told = await pool.fetch("select type, data from outbox_event order by event_id")
        assert [r["type"] for r in told] == ["settlement.settled", "premium.paid"]
        assert '"new-1"' in told[0]["data"] and '"acct_mulaid_pay_fen": 345' in told[0]["data"]
        assert await pool.fetchval("select sum(used_fen) from grant_usage") == 1_500 - 500 + 345
    finally:
        await pool.close()


async def test_an_upgrade_under_load_fails_and_is_run_again(old_database: str) -> None:
    """0006 alters ledger_entry, which every settlement writes. While a writer holds the table (here one
    transaction that inserted, as a settlement does, and stays open), the migration waits for its lock at
    most its lock_timeout, then fails whole, applying nothing, instead of queueing every settlement
    behind a waiting ALTER. Run again once the writer is done, it goes through."""
    holder, conn = await asyncpg.connect(old_database), await asyncpg.connect(old_database)
    try:
        pending = holder.transaction()
        await pending.start()
        await holder.execute("lock table ledger_entry in row exclusive mode")  # what an insert takes
        started = time.monotonic()
        with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
            await migrate.migrate(conn)
        waited = time.monotonic() - started
        assert 9 < waited < 30, waited
        versions = [r["version"] for r in await conn.fetch("select version from schema_migration order by 1")]
        assert 6 not in versions
        assert await conn.fetchval("select to_regclass('premium_payment')") is None
        await pending.rollback()
        await migrate.migrate(conn)
        assert await conn.fetchval("select count(*) from schema_migration") == len(migrate.bundled())
    finally:
        await holder.close()
        await conn.close()


async def test_an_upgrade_never_deadlocks_a_settlement_in_flight(old_database: str) -> None:
    """Regression (found by review): with the whole upgrade in one transaction, 0006 held ledger_entry
    while 0007 waited for mutual_aid_grant, and a settlement of the running server that held its grant's
    row then needed ledger_entry for its write: a deadlock, the settlement its victim. The runner now
    locks every table the pending migrations alter first, in the order requests take them: the
    upgrade waits for the settlement, the settlement finishes, then the upgrade goes through."""
    await _fill(old_database)
    settlement, conn = await asyncpg.connect(old_database), await asyncpg.connect(old_database)
    try:
        in_flight = settlement.transaction()
        await in_flight.start()
        # A settlement between its grant lock (step 3) and its write (step 6).
        await settlement.execute("select 1 from mutual_aid_grant for no key update")
        upgrade = asyncio.create_task(migrate.migrate(conn))
        await asyncio.sleep(1.5)  # past deadlock_timeout: a cycle would be found by now
        await settlement.execute("lock table ledger_entry in row exclusive mode")  # what its ledger insert takes
        await in_flight.commit()
        await upgrade
        assert await conn.fetchval("select count(*) from schema_migration") == len(migrate.bundled())
    finally:
        await settlement.close()
        await conn.close()


async def test_a_changed_code_file_is_applied_again_and_a_changed_migration_refused(old_database: str) -> None:
    conn = await asyncpg.connect(old_database)
    try:
        await migrate.migrate(conn)
        code = migrate.bundled_code()
        changed = [migrate.Code(c.name, c.sql + "\n-- changed\n") if c.name == "settle.sql" else c for c in code]
        await migrate.migrate(conn, code=changed)
        recorded = await conn.fetchval("select sha256 from schema_code where name = 'settle.sql'")
        assert recorded == changed[0].sha256 != code[0].sha256
        edited = [migrate.Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in migrate.bundled()]
        with pytest.raises(migrate.MigrationError):
            await migrate.migrate(conn, edited)
    finally:
        await conn.close()
