"""Settlements (and premiums paid from the same accounts) under contention: exact to the fen, no deadlocks,
atomic under cancellation."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import random
import uuid

import asyncpg
import grpc
import pytest
from harness import reason_of
from prometheus_client import REGISTRY
from support import CHILD, RESIDENT, SPOUSE, STATEMENT_CACHE_SIZE, SUSPENDED, Api, account_row_held, bearer

from gongji.api.validate import china_today
from gongji.store import audit, credentials, db, grants, settlements
from gongji.v1 import account_pb2, settlement_pb2

pytestmark = pytest.mark.usefixtures("books")

PARENT_BORN = dt.date(1960, 1, 1)
CHILD_BORN = dt.date(1990, 1, 1)


async def _balances(api: Api, people: list[str]) -> dict[str, int]:
    return {p: await api.balance(p) for p in people}


async def test_500_concurrent_settlements_on_one_family(api: Api, pool: asyncpg.Pool) -> None:
    authorizer = await api.enroll(balance_fen=150_000, birth=PARENT_BORN)
    members = [await api.enroll(balance_fen=5_000, birth=CHILD_BORN) for _ in range(3)]
    members.append(await api.enroll(scheme=RESIDENT, birth=CHILD_BORN))
    for m in members:
        await api.grant(authorizer, m, SPOUSE if m == members[0] else CHILD)
    everyone = [authorizer, *members]
    before = await _balances(api, everyone)

    rng = random.Random(2026)
    plan = [(rng.choice(members), rng.randint(1, 2_000)) for _ in range(500)]
    vouchers = [await api.voucher(patient) for patient, _ in plan]
    results = await asyncio.gather(
        *(api.settle(p, amount, voucher=v) for (p, amount), v in zip(plan, vouchers, strict=True)),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], failures[:3]  # no deadlock, no serialization failure, nothing refused
    settled = [r.settlement for r in results if isinstance(r, settlement_pb2.SettleResponse)]
    assert len(settled) == 500

    after = await _balances(api, everyone)
    own_paid: collections.Counter[str] = collections.Counter()
    for s in settled:
        assert s.acct_pay_fen + s.acct_mulaid_pay_fen + s.psn_cash_pay_fen == s.amount_fen
        own_paid[s.patient_id] += s.acct_pay_fen
        if s.acct_mulaid_pay_fen:
            assert s.authorizer_id == authorizer
    for m in members:
        assert before[m] - after[m] == own_paid[m]
    assert before[authorizer] - after[authorizer] == sum(s.acct_mulaid_pay_fen for s in settled)
    assert after[authorizer] == 0, "demand exceeds the authorizer's balance, so it is drawn to zero"
    assert sum(s.psn_cash_pay_fen for s in settled) > 0
    assert all(b >= 0 for b in after.values())

    # Every success is in the ledger exactly once per account it moved.
    ids = [uuid.UUID(s.settlement_id) for s in settled]
    rows = await pool.fetch(
        "select settlement_id, kind, count(*) as n from ledger_entry where settlement_id = any($1::uuid[])"
        " group by settlement_id, kind",
        ids,
    )
    assert all(r["n"] == 1 for r in rows)
    expected = sum((s.acct_pay_fen > 0) + (s.acct_mulaid_pay_fen > 0) for s in settled)
    assert len(rows) == expected
    # Written at once by 500 settlements, each account's hash chain holds, in one line.
    family = {s.patient_id for s in settled} | {s.authorizer_id for s in settled if s.authorizer_id}
    assert not [b for b in await audit.chain_breaks(pool) if any(p in b for p in family)]


async def test_opposite_lock_orders_never_deadlock(api: Api) -> None:
    """Spouses who granted each other: each settlement locks both accounts, from opposite sides."""
    p = await api.enroll(balance_fen=400_000)
    q = await api.enroll(balance_fen=400_000)
    await api.grant(p, q)
    await api.grant(q, p)
    rounds = 150
    plan = [(p, q), (q, p)] * rounds
    vouchers = [await api.voucher(patient) for patient, _ in plan]
    results = await asyncio.gather(
        *(
            api.settle(patient, 2_000, voucher=v, authorizer_id=other)
            for (patient, other), v in zip(plan, vouchers, strict=True)
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], failures[:3]
    total = 2 * rounds * 2_000
    assert await api.balance(p) + await api.balance(q) == 800_000 - total


async def _settle_calls_in_flight(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval(
        "select count(*) from pg_stat_activity where datname = current_database() and state = 'active'"
        " and query like '%gongji_settle(%'"
        " and pid <> pg_backend_pid()"
    )
    return n


@pytest.mark.parametrize("cut_off_by", ["deadline", "client_cancel"])
async def test_cut_off_while_waiting_for_a_lock_is_all_or_nothing(
    api: Api, pool: asyncpg.Pool, server_pool: asyncpg.Pool, cut_off_by: str
) -> None:
    """The call is cut off (its deadline passes, or the client cancels) while its settlement waits
    for a row lock. Whether the statement was cancelled or went on to commit, it is all or nothing,
    and the POS's retry with the same request id converges."""
    authorizer = await api.enroll(balance_fen=1_000)
    patient = await api.enroll(balance_fen=100)
    await api.grant(authorizer, patient)
    voucher = await api.voucher(patient)
    request_id = f"held-up-{uuid.uuid4()}"
    async with account_row_held(pool, authorizer):
        if cut_off_by == "deadline":
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.settle(patient, 500, voucher=voucher, request_id=request_id, deadline_s=0.5)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            call = api.settlement.Settle(
                settlement_pb2.SettleRequest(
                    request_id=request_id, voucher=voucher, patient_id=patient, amount_fen=500
                ),
                metadata=bearer(api.tokens.terminal_a),
            )
            await asyncio.sleep(0.5)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
    for _ in range(100):  # bounded: at most 5 s for the server to finish or cancel the statement
        if await _settle_calls_in_flight(pool) == 0:
            break
        await asyncio.sleep(0.05)

    committed = await pool.fetchval("select count(*) from settlement where request_id = $1", request_id)
    used = await pool.fetchval("select count(*) from settlement where patient_id = $1", patient)
    balances = (await api.balance(authorizer), await api.balance(patient))
    if committed:
        assert used == 1
        assert balances == (600, 0)
    else:
        assert not used
        assert balances == (1_000, 100)
    # The pool still serves, and the POS's retry with the same request id settles exactly once.
    retry = await api.settle(patient, 500, voucher=voucher, request_id=request_id)
    assert retry.replayed == bool(committed)
    assert (retry.settlement.acct_pay_fen, retry.settlement.acct_mulaid_pay_fen) == (100, 400)
    assert await pool.fetchval("select count(*) from settlement where request_id = $1", request_id) == 1
    assert (await api.balance(authorizer), await api.balance(patient)) == (600, 0)
    assert server_pool.get_size() <= 10


async def test_random_cancellations_converge_on_retry(api: Api, pool: asyncpg.Pool) -> None:
    """Calls cut off at random points either committed whole or not at all; retrying each with the
    same request id and voucher gives exactly one settlement per request."""
    authorizer = await api.enroll(balance_fen=1_000_000, birth=PARENT_BORN)
    members = [await api.enroll(balance_fen=20_000, birth=CHILD_BORN) for _ in range(3)]
    for m in members:
        await api.grant(authorizer, m, CHILD)
    rng = random.Random(7)
    plan = [(f"cut-{uuid.uuid4()}", rng.choice(members), rng.randint(1, 3_000)) for _ in range(120)]
    vouchers = {rid: await api.voucher(patient) for rid, patient, _ in plan}

    # Half get a generous deadline, half one that cuts them off somewhere along the way.
    deadlines = {rid: 10.0 if i % 2 else rng.uniform(0.001, 0.05) for i, (rid, _, _) in enumerate(plan)}

    async def attempt(rid: str, patient: str, amount: int) -> grpc.StatusCode:
        try:
            await api.settle(patient, amount, voucher=vouchers[rid], request_id=rid, deadline_s=deadlines[rid])
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(attempt(*p) for p in plan))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    first = [code == grpc.StatusCode.OK for code in codes]
    assert 0 < sum(first) < len(plan), "some calls were cut off and some were answered"
    await asyncio.sleep(0.5)
    retries = await asyncio.gather(
        *(api.settle(patient, amount, voucher=vouchers[rid], request_id=rid) for rid, patient, amount in plan)
    )
    for answered, reply in zip(first, retries, strict=True):
        if answered:
            assert reply.replayed
    counts = await pool.fetch(
        "select request_id, count(*) as n from settlement where request_id = any($1::text[]) group by request_id",
        [rid for rid, _, _ in plan],
    )
    assert len(counts) == len(plan)
    assert all(r["n"] == 1 for r in counts)
    assert sum(r.settlement.amount_fen for r in retries) == sum(amount for _, _, amount in plan)


async def test_revoke_is_not_starved_by_a_stream_of_settlements(api: Api) -> None:
    """A Revoke on a busy grant takes its turn in the lock queue: it completes while settlements are
    still streaming, and no settlement sent after it returned draws on the grant."""
    authorizer = await api.enroll(balance_fen=10_000_000, birth=PARENT_BORN)
    patient = await api.enroll(scheme=RESIDENT, birth=CHILD_BORN)
    await api.grant(authorizer, patient, CHILD)
    workers, per_worker = 10, 30  # bounded: 300 settlements in all
    vouchers = [[await api.voucher(patient) for _ in range(per_worker)] for _ in range(workers)]
    revoked = asyncio.Event()
    sent_after_revoke: list[settlement_pb2.Settlement] = []
    used_grant = 0

    async def worker(mine: list[str]) -> None:
        nonlocal used_grant
        for v in mine:
            after = revoked.is_set()
            s = (await api.settle(patient, 100, voucher=v)).settlement
            used_grant += s.acct_mulaid_pay_fen > 0
            if after:
                sent_after_revoke.append(s)

    async def revoke_soon() -> None:
        await asyncio.sleep(0.05)
        await api.revoke(authorizer, patient)
        revoked.set()

    await asyncio.gather(*(worker(v) for v in vouchers), revoke_soon())
    assert used_grant > 0, "settlements drew on the grant before it ended"
    assert sent_after_revoke, "the revoke finished while settlements were still streaming"
    assert all((s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (0, 100) for s in sent_after_revoke)


async def test_revoke_takes_its_turn_at_the_store(api: Api, db_url: str) -> None:
    """The same at the store, without gRPC in between, so that the database always has settlements
    holding the grant: with share locks a waiting Revoke was starved until the load stopped."""
    authorizer = await api.enroll(balance_fen=10_000_000, birth=PARENT_BORN)
    patient = await api.enroll(scheme=RESIDENT, birth=CHILD_BORN)
    await api.grant(authorizer, patient, CHILD)
    workers, per_worker = 16, 60  # bounded: 960 settlements
    store_pool = await db.create_pool(
        db_url,
        min_size=workers + 1,
        max_size=workers + 1,
        command_timeout_s=30,
        statement_cache_size=STATEMENT_CACHE_SIZE,
    )
    try:
        credential_id = await store_pool.fetchval(
            "select credential_id from credential where token_sha256 = $1",
            credentials.token_hash(api.tokens.terminal_a),
        )
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        voucher_ids = [[uuid.uuid4() for _ in range(per_worker)] for _ in range(workers)]
        revoked = asyncio.Event()
        after_revoke: list[settlements.SettlementRow] = []

        done = 0
        hundred_done = asyncio.Event()

        async def worker(ids: list[uuid.UUID]) -> None:
            nonlocal done
            for vid in ids:
                sent_after = revoked.is_set()
                row = await settlements.settle(
                    store_pool,
                    credential_id=credential_id,
                    request_id=f"store-{vid}",
                    digest=b"d",
                    voucher=settlements.VoucherArgs(vid, True, expires, None),
                    patient_id=patient,
                    amount_fen=100,
                    authorizer_id=None,
                    use_personal_account=True,
                    timing=settlements.SettleTiming(),
                )
                if sent_after:
                    after_revoke.append(row)
                done += 1
                if done == 100:
                    hundred_done.set()

        async def revoke_soon() -> None:
            await hundred_done.wait()
            assert await grants.revoke(store_pool, authorizer, patient, "REVOKED_BY_AUTHORIZER") is not None
            revoked.set()

        await asyncio.gather(*(worker(ids) for ids in voucher_ids), revoke_soon())
    finally:
        await store_pool.close()
    # Issued after 100 of 960 settlements, a Revoke that waits its turn returns long before the rest
    # are done (about 860 sent after it here); a starved one returned only as the load ended (6).
    assert len(after_revoke) > (workers * per_worker - 100) // 2, len(after_revoke)
    assert all(r.acct_mulaid_pay_fen == 0 for r in after_revoke)


async def test_settlement_racing_a_revoke_moves_on_to_the_next_grant(api: Api, pool: asyncpg.Pool) -> None:
    """The oldest grant is revoked while a settlement waits for its row: the settlement does not use
    it (not even in part) and draws on the next live grant instead."""
    mother = await api.enroll(balance_fen=1_000, birth=PARENT_BORN)
    father = await api.enroll(balance_fen=1_000, birth=PARENT_BORN)
    child = await api.enroll(scheme=RESIDENT, birth=CHILD_BORN)
    oldest = int((await api.grant(mother, child, CHILD)).grant.grant_id)
    await api.grant(father, child, CHILD)
    voucher = await api.voucher(child)
    async with pool.acquire() as revoker:
        tx = revoker.transaction()
        await tx.start()
        await revoker.execute("select 1 from mutual_aid_grant where grant_id = $1 for update", oldest)
        settling = asyncio.ensure_future(api.settle(child, 600, voucher=voucher))
        for _ in range(100):  # bounded: until the settlement waits for the grant's row
            if await _settle_calls_in_flight(pool):
                break
            await asyncio.sleep(0.02)
        await revoker.execute(
            "update mutual_aid_grant set status = 'REVOKED', ended_at = now(), end_reason = 'REVOKED_BY_AUTHORIZER'"
            " where grant_id = $1",
            oldest,
        )
        await tx.commit()
    s = (await settling).settlement
    assert (s.authorizer_id, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (father, 600, 0)
    assert (await api.balance(mother), await api.balance(father)) == (1_000, 400)


async def test_status_change_racing_settlements_ends_the_grant_cleanly(api: Api) -> None:
    """The authorizer is suspended (Enroll) while family members settle against the grant: each
    settlement used the grant whole before it ended or not at all, and none sent after the change
    returned draws on it."""
    authorizer = await api.enroll(balance_fen=10_000_000, birth=PARENT_BORN)
    members = [await api.enroll(scheme=RESIDENT, birth=CHILD_BORN) for _ in range(3)]
    for m in members:
        await api.grant(authorizer, m, CHILD)
    workers, per_worker = 9, 25  # bounded: 225 settlements
    plan = [[(members[w % 3], await api.voucher(members[w % 3])) for _ in range(per_worker)] for w in range(workers)]
    changed = asyncio.Event()
    sent_after: list[settlement_pb2.Settlement] = []
    drawn_fen = 0

    async def worker(mine: list[tuple[str, str]]) -> None:
        nonlocal drawn_fen
        for patient, voucher in mine:
            after = changed.is_set()
            s = (await api.settle(patient, 100, voucher=voucher)).settlement
            assert s.acct_mulaid_pay_fen in (0, 100)  # whole or nothing
            drawn_fen += s.acct_mulaid_pay_fen
            if after:
                sent_after.append(s)

    async def suspend_soon() -> None:
        await asyncio.sleep(0.05)
        reply = await api.set_status(authorizer, SUSPENDED)
        assert reply.grants_ended == 3
        changed.set()

    await asyncio.gather(*(worker(p) for p in plan), suspend_soon())
    assert sent_after, "the status change finished while settlements were still streaming"
    assert all(s.acct_mulaid_pay_fen == 0 for s in sent_after)
    assert await api.balance(authorizer) == 10_000_000 - drawn_fen


async def test_paying_with_own_money_does_not_queue_on_the_authorizer(api: Api, pool: asyncpg.Pool) -> None:
    authorizer = await api.enroll(balance_fen=10_000, birth=PARENT_BORN)
    rich = await api.enroll(balance_fen=5_000, birth=CHILD_BORN)
    poor = await api.enroll(balance_fen=5_000, birth=CHILD_BORN)
    for member in (rich, poor):
        await api.grant(authorizer, member, CHILD)
    async with account_row_held(pool, authorizer):
        own_only = await api.settle(rich, 1_000, deadline_s=10)  # completes although the row is held
        needs_aid = asyncio.ensure_future(api.settle(poor, 6_000))
        await asyncio.sleep(0.3)
        assert not needs_aid.done(), "a settlement that draws on the authorizer waits for the row"
    assert (own_only.settlement.acct_pay_fen, own_only.settlement.authorizer_id) == (1_000, "")
    aided = (await needs_aid).settlement
    assert (aided.acct_pay_fen, aided.acct_mulaid_pay_fen) == (5_000, 1_000)


async def test_a_stale_balance_peek_runs_the_settlement_again(api: Api, pool: asyncpg.Pool) -> None:
    """The patient's balance is spent (through another grant) while a settlement waits for the row it
    peeked at; the authorizer it needs sorts first, so it cannot be locked late: the settlement runs
    again and pays with what is left, then mutual aid."""
    first, second, third = sorted([await api.enroll(birth=PARENT_BORN) for _ in range(3)])
    authorizer, patient, other = first, second, third  # the authorizer's key sorts before the patient's
    await api.credit(authorizer, 10_000)
    await api.credit(other, 10_000)
    await api.credit(patient, 1_000)
    await api.grant(authorizer, patient, SPOUSE)  # the oldest grant: used when none is named
    await api.grant(other, patient, SPOUSE)
    retries_before = REGISTRY.get_sample_value("gongji_settle_retries_total") or 0.0
    waiting_voucher = await api.voucher(patient)
    spending_voucher = uuid.uuid4()  # a genuine token's claims, as the server passes them
    async with account_row_held(pool, patient) as blocker:
        waiting = asyncio.ensure_future(api.settle(patient, 600, voucher=waiting_voucher))
        for _ in range(100):  # bounded: until the settlement waits for the patient's row
            if await _settle_calls_in_flight(pool):
                break
            await asyncio.sleep(0.02)
        assert await _settle_calls_in_flight(pool), "the settlement waits for the patient's row"
        # In the blocker's transaction, a real settlement through the other grant spends 900 of 1,000.
        spent = await blocker.fetchrow(
            "select outcome, (settled).acct_pay_fen from gongji_settle('H61010300101', 'POS-A1', $1,"
            " '\\x00'::bytea, $2, true, now() + interval '1 minute', null, null, 'E_VOUCHER', $3, 900, $4, true,"
            " null, null, null, null, null, null, null)",
            f"spend-{uuid.uuid4()}",
            spending_voucher,
            patient,
            other,
        )
        assert (spent["outcome"], spent["acct_pay_fen"]) == ("OK", 900)
    s = (await waiting).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.authorizer_id) == (100, 500, authorizer)
    assert (REGISTRY.get_sample_value("gongji_settle_retries_total") or 0.0) == retries_before + 1


async def test_premiums_and_settlements_on_the_same_accounts_never_deadlock(api: Api, pool: asyncpg.Pool) -> None:
    """Four relatives try to pay each of three children's premium of one year, several times each, while
    the children settle at the pharmacy drawing on the same four accounts (a premium locks the grant
    then the account, as a settlement does). Exactly one payment per child and year; every settlement
    goes through; no deadlock, no balance below zero, the books exact. Then the payments are refunded
    while the relatives pay again: at most one unrefunded payment per child, still."""
    region, year = "618901", china_today().year + 1
    premium = 30_000
    await api.set_premium_rate(region, year, premium, dt.date(year - 1, 1, 1), dt.date(year, 12, 31))
    payers = [await api.enroll(region=region, birth=PARENT_BORN, balance_fen=500_000) for _ in range(4)]
    children = [await api.enroll(scheme=RESIDENT, region=region, birth=CHILD_BORN) for _ in range(3)]
    for payer in payers:
        for child in children:
            await api.grant(payer, child, CHILD)
    before = await _balances(api, payers)

    rng = random.Random(38)
    pays = [(p, c, f"cp-{uuid.uuid4()}") for p in payers for c in children for _ in range(3)]
    pays += [rng.choice(pays) for _ in range(6)]  # retries of the same request: replays
    sales = [(rng.choice(children), rng.randint(100, 3_000), rng.choice([None, *payers])) for _ in range(90)]
    vouchers = [await api.voucher(child) for child, _, _ in sales]
    calls = [api.pay_premium(p, c, year, request_id=r) for p, c, r in pays]
    calls += [
        api.settle(c, amount, voucher=v, authorizer_id=a) for (c, amount, a), v in zip(sales, vouchers, strict=True)
    ]
    rng.shuffle(calls)
    results = await asyncio.gather(*calls, return_exceptions=True)

    unexpected = [r for r in results if isinstance(r, BaseException) and _reason(r) != "PREMIUM_ALREADY_PAID"]
    assert unexpected == [], unexpected[:3]
    paid = {r.payment.payment_id: r.payment for r in results if isinstance(r, account_pb2.PayPremiumResponse)}
    assert sorted(p.beneficiary_id for p in paid.values()) == sorted(children)
    settled = [r.settlement for r in results if isinstance(r, settlement_pb2.SettleResponse)]
    assert len(settled) == len(sales)
    after = await _balances(api, payers)
    for payer in payers:
        drawn = sum(s.acct_mulaid_pay_fen for s in settled if s.authorizer_id == payer)
        premiums_paid = sum(p.amount_fen for p in paid.values() if p.payer_id == payer)
        assert before[payer] - after[payer] == drawn + premiums_paid >= 0

    # The refunds race new payments of the same years.
    again = [api.refund_premium(payment_id) for payment_id in paid for _ in range(2)]
    again += [api.pay_premium(p, c, year) for p in payers for c in children]
    rng.shuffle(again)
    results = await asyncio.gather(*again, return_exceptions=True)
    unexpected = [r for r in results if isinstance(r, BaseException) and _reason(r) != "PREMIUM_ALREADY_PAID"]
    assert unexpected == [], unexpected[:3]
    refunds = [r for r in results if isinstance(r, account_pb2.RefundPremiumResponse)]
    assert sorted(r.replayed for r in refunds) == [False] * len(paid) + [True] * len(paid)
    unrefunded = await pool.fetch(
        "select beneficiary_id, count(*) as n from premium_payment where beneficiary_id = any($1::text[])"
        " and year = $2 and refunded_at is null group by beneficiary_id",
        children,
        year,
    )
    assert all(r["n"] == 1 for r in unrefunded)
    assert all(b >= 0 for b in (await _balances(api, payers)).values())


def _reason(error: BaseException) -> str:
    return reason_of(error) if isinstance(error, grpc.aio.AioRpcError) else repr(error)
