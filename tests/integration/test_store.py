"""The store's SQL against the reference domain code, and the migration runner."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import Api, cancel, new_person_id, with_database

from gongji import limits
from gongji.domain.bill import Parts, WhollySelfPaid
from gongji.domain.people import Relationship
from gongji.domain.waterfall import (
    Limit,
    Split,
    WalletOrder,
    mutual_aid_room,
    refund_split,
    settlement_limit,
    split,
    split_bill,
)
from gongji.store import audit, bindings, grants, migrate

amounts = st.integers(min_value=1, max_value=limits.AMOUNT_FEN_MAX)
balances = st.none() | st.integers(min_value=0, max_value=10 * limits.AMOUNT_FEN_MAX)


def test_sql_split_agrees_with_the_reference(db_url: str) -> None:
    """gongji_split (the hot path) and domain.waterfall.split_bill agree on arbitrary bills, balances
    (the wallet's among them) and policies on wholly self-paid items and the wallet's place, part by
    part; a bill sent as its amount only, without wallet money, is split as domain.waterfall.split
    always split it."""
    small = st.integers(min_value=0, max_value=60)
    parts = st.one_of(
        st.builds(Parts, amounts),
        st.builds(Parts, small, small, small).filter(lambda p: p.fen > 0),
        st.builds(Parts, amounts, st.integers(0, 1000), st.integers(0, 1000)),
    )
    policies = st.sampled_from([WhollySelfPaid(True, True), WhollySelfPaid(True, False), WhollySelfPaid(False, False)])
    small_balances = st.none() | small
    with asyncio.Runner() as runner:
        conn = runner.run(asyncpg.connect(db_url))
        try:

            @settings(max_examples=800, deadline=None)
            @given(
                parts,
                balances | small_balances,
                balances | small_balances,
                st.none() | small_balances | balances,
                st.booleans(),
                policies,
                st.sampled_from(WalletOrder),
            )
            def agree(
                bill: Parts,
                own: int | None,
                mulaid: int | None,
                wallet: int | None,
                use: bool,
                wholly: WhollySelfPaid,
                order: WalletOrder,
            ) -> None:
                row = runner.run(
                    conn.fetchrow(
                        "select * from gongji_split($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        bill.fen,
                        bill.over_limit_fen,
                        bill.wholly_self_paid_fen,
                        own,
                        mulaid,
                        wallet,
                        use,
                        wholly.account,
                        wholly.mutual_aid,
                        order.value,
                    )
                )
                assert row is not None
                expected = split_bill(
                    bill,
                    own,
                    mulaid,
                    use_personal_account=use,
                    wholly=wholly,
                    wallet_balance_fen=wallet,
                    wallet_order=order,
                )
                assert (row["acct_pay_fen"], row["acct_mulaid_pay_fen"], row["psn_cash_pay_fen"]) == (
                    expected.totals.acct_pay_fen,
                    expected.totals.acct_mulaid_pay_fen,
                    expected.totals.psn_cash_pay_fen,
                )
                assert (row["wallet_pay_fen"], row["wallet_over_limit_fen"], row["wallet_wholly_fen"]) == (
                    expected.wallet.fen,
                    expected.wallet.over_limit_fen,
                    expected.wallet.wholly_self_paid_fen,
                )
                assert (row["acct_over_limit_fen"], row["acct_wholly_fen"]) == (
                    expected.own.over_limit_fen,
                    expected.own.wholly_self_paid_fen,
                )
                assert (row["mulaid_over_limit_fen"], row["mulaid_wholly_fen"]) == (
                    expected.mutual_aid.over_limit_fen,
                    expected.mutual_aid.wholly_self_paid_fen,
                )
                if bill == Parts(bill.fen) and not wallet:
                    assert expected.totals == split(bill.fen, own, mulaid, use_personal_account=use)

            agree()
        finally:
            runner.run(conn.close())


def test_sql_settlement_limit_agrees_with_the_reference(db_url: str) -> None:
    """gongji_settlement_limit and domain.waterfall.settlement_limit: a limit is named only when cash
    paid part of what mutual aid may pay, on bills split under each policy on wholly self-paid items."""
    small = st.integers(min_value=0, max_value=40)
    policies = st.sampled_from([WhollySelfPaid(True, True), WhollySelfPaid(True, False), WhollySelfPaid(False, False)])
    with asyncio.Runner() as runner:
        conn = runner.run(asyncpg.connect(db_url))
        try:

            @settings(max_examples=300, deadline=None)
            @given(
                st.builds(Parts, small, small, small).filter(lambda p: p.fen > 0), st.none() | small, small, policies
            )
            def agree(bill: Parts, own: int | None, room: int, wholly: WhollySelfPaid) -> None:
                s = split_bill(bill, own, room, wholly=wholly)
                sql = runner.run(
                    conn.fetchval(
                        "select gongji_settlement_limit("
                        " row($1, $2, $3, $4, $5, $6, $7, 0, 0, 0)::bill_split, $8, $9, 'GRANT_CAP')",
                        s.totals.acct_pay_fen,
                        s.totals.acct_mulaid_pay_fen,
                        s.totals.psn_cash_pay_fen,
                        s.own.over_limit_fen,
                        s.own.wholly_self_paid_fen,
                        s.mutual_aid.over_limit_fen,
                        s.mutual_aid.wholly_self_paid_fen,
                        bill.wholly_self_paid_fen,
                        wholly.mutual_aid,
                    )
                )
                twin = settlement_limit(s, Limit.GRANT_CAP, wholly)
                assert sql == (None if twin is None else twin.value)
                # A limit named means mutual aid paid all its room.
                assert twin is None or s.totals.acct_mulaid_pay_fen == room

            agree()
        finally:
            runner.run(conn.close())


def test_sql_mutual_aid_room_agrees_with_the_reference(db_url: str) -> None:
    """gongji_mutual_aid_room and domain.waterfall.mutual_aid_room: the same room and the same limit
    named, ties included (small values make them common)."""
    small = st.none() | st.integers(min_value=0, max_value=50)
    with asyncio.Runner() as runner:
        conn = runner.run(asyncpg.connect(db_url))
        try:

            @settings(max_examples=400, deadline=None)
            @given(st.none() | st.integers(0, 50), small, small, small)
            def agree(balance: int | None, floor: int | None, grant_left: int | None, ben_left: int | None) -> None:
                row = runner.run(
                    conn.fetchrow(
                        "select * from gongji_mutual_aid_room($1, $2, $3, $4)", balance, floor, grant_left, ben_left
                    )
                )
                assert row is not None
                room = mutual_aid_room(
                    balance, floor_fen=floor, grant_cap_left_fen=grant_left, beneficiary_cap_left_fen=ben_left
                )
                expected = (None, None) if room is None else (room.fen, room.limited_by)
                assert (row["room_fen"], row["limited_by"]) == expected

            agree()
        finally:
            runner.run(conn.close())


def test_sql_refund_split_agrees_with_the_reference(db_url: str) -> None:
    """gongji_refund_split and domain.waterfall.refund_split agree on whatever is left to refund."""
    with asyncio.Runner() as runner:
        conn = runner.run(asyncpg.connect(db_url))
        try:

            @settings(max_examples=300, deadline=None)
            @given(
                st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**8), st.data()
            )
            def agree(own: int, mulaid: int, wallet: int, cash: int, data: st.DataObject) -> None:
                left = Split(own, mulaid, cash, wallet)
                if left.amount_fen == 0:
                    return
                amount = data.draw(st.integers(1, left.amount_fen))
                row = runner.run(
                    conn.fetchrow(
                        "select * from gongji_refund_split($1, $2, $3, $4, $5)", amount, own, mulaid, wallet, cash
                    )
                )
                assert row is not None
                expected = refund_split(amount, left)
                assert tuple(row.values()) == (
                    expected.acct_pay_fen,
                    expected.acct_mulaid_pay_fen,
                    expected.wallet_pay_fen,
                    expected.psn_cash_pay_fen,
                )

            agree()
        finally:
            runner.run(conn.close())


async def test_migrations_are_applied_once_and_checked(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await migrate.migrate(conn) == []
        recorded = await conn.fetch("select version, sha256 from schema_migration order by version")
        assert [(r["version"], r["sha256"]) for r in recorded] == [(m.version, m.sha256) for m in migrate.bundled()]
        changed = [migrate.Migration(m.version, m.name, m.sql + "\n-- edited") for m in migrate.bundled()]
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            await migrate.migrate(conn, changed)


async def test_concurrent_migrators_take_turns(direct_server_url: str) -> None:
    """On PostgreSQL directly: the migration lock is a session lock, which a transaction-mode pooler
    would lose between statements (migrations never go through PgBouncer)."""
    admin = await asyncpg.connect(direct_server_url)
    await admin.execute('create database "gongji_migrate_race"')
    try:
        url = with_database(direct_server_url, "gongji_migrate_race")
        conns = [await asyncpg.connect(url) for _ in range(3)]
        applied = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        assert sorted(len(a) for a in applied) == [0, 0, len(migrate.bundled())]
        for c in conns:
            await c.close()
    finally:
        await admin.execute('drop database if exists "gongji_migrate_race" with (force)')
        await admin.close()


async def test_audit_checks_refunds_against_the_ledger_and_their_settlement(api: Api, pool: asyncpg.Pool) -> None:
    """Regression: the refund checks were written but never run, so a refund whose split disagreed with
    its ledger entries, or a settlement whose refunded_fen disagreed with its refunds, passed the audit."""
    patient = await api.enroll(balance_fen=1_000)
    s = (await api.settle(patient, 1_500)).settlement
    refund = (await cancel(api, s.settlement_id, 800)).refund
    assert (refund.psn_cash_pay_fen, refund.acct_pay_fen) == (500, 300)
    async with pool.acquire() as conn:
        assert await audit.differences(conn) == []
        for tamper, expected in (
            # The split says one fen more went back as cash than the ledger shows (balances still agree).
            (
                "update refund set acct_pay_fen = acct_pay_fen - 1, psn_cash_pay_fen = psn_cash_pay_fen + 1"
                f" where refund_id = '{refund.refund_id}'",
                f"refund {refund.refund_id}: ledger does not match",
            ),
            (
                f"update settlement set refunded_fen = refunded_fen - 1 where settlement_id = '{s.settlement_id}'",
                f"settlement {s.settlement_id}: refunds do not add up",
            ),
        ):
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(tamper)
                assert expected in await audit.differences(conn)
            finally:
                await tx.rollback()
        assert await audit.differences(conn) == []


async def test_audit_checks_what_a_settlement_names(api: Api, pool: asyncpg.Pool) -> None:
    """The settlement row has no foreign keys since 0009 (gongji_settle guarantees them): the audit
    finds a settlement naming a missing institution or person, a grant that does not join its
    authorizer to its patient, and a ledger entry naming a missing settlement."""
    authorizer = await api.enroll(balance_fen=5_000)
    patient = await api.enroll(balance_fen=100)
    other = await api.enroll()
    await api.grant(authorizer, patient)
    s = (await api.settle(patient, 1_000)).settlement
    assert s.acct_mulaid_pay_fen == 900
    where = f"where settlement_id = '{s.settlement_id}'"
    async with pool.acquire() as conn:
        assert await audit.differences(conn) == []
        for tamper in (
            f"update settlement set institution_id = 'H-NOWHERE' {where}",
            f"update settlement set patient_id = '{new_person_id()}' {where}",
            f"update settlement set authorizer_id = '{other}' {where}",  # a person, not the grant's
            f"update ledger_entry set settlement_id = gen_random_uuid() {where} and amount_fen = -900",
        ):
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(tamper)
                assert any("names a missing institution, person or grant" in d for d in await audit.differences(conn))
            finally:
                await tx.rollback()
        assert await audit.differences(conn) == []


class _Refused(Exception):
    pass


async def _grant_then_refuse(pool: asyncpg.Pool, authorizer: str, beneficiary: str) -> grants.GrantPair:
    try:
        async with grants.pair_for_grant(pool, authorizer, beneficiary) as pair:
            assert pair.authorizer is not None and pair.beneficiary is not None
            await pair.insert(Relationship.CHILD)
            raise _Refused
    except _Refused:
        return pair


async def _bind_then_refuse(pool: asyncpg.Pool, holder: str, member: str) -> None:
    async with bindings.pair_for_bind(pool, holder, member) as bind:
        assert (bind.live_bindings, bind.already_bound) == (0, False)
        await bind.insert(relationship=Relationship.CHILD, phone="", reason="", face_verification_ref="")
        raise _Refused


async def test_a_decision_raised_in_a_grant_or_bind_block_writes_nothing(api: Api, pool: asyncpg.Pool) -> None:
    """The use case decides inside the store's transaction: whatever it raises there, even after the
    write, rolls the write back, and the pair cannot write once its block is left."""
    holder, member = await api.enroll(), await api.enroll(birth=dt.date(2019, 1, 1))
    pair = await _grant_then_refuse(pool, holder, member)
    with pytest.raises(_Refused):
        await _bind_then_refuse(pool, holder, member)
    assert await grants.given_by(pool, holder, 10) == []
    assert await bindings.of_holder(pool, holder, 10) == ([], 0)
    with pytest.raises(AssertionError, match="only inside"):
        await pair.insert(Relationship.CHILD)
