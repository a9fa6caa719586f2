"""Caps and a floor on mutual aid: a grant's yearly cap, a beneficiary's yearly cap across grants, the
authorizer's floor. Each test has a 统筹区 of Tibet (54) to itself, so its region policy touches no
other test."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import asyncpg
import grpc
import pytest
from support import RESIDENT, Api, bearer, cancel, field_violations, refused

from gongji.api.validate import china_today
from gongji.store import audit
from gongji.v1 import account_pb2, settlement_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
PROVINCE = types_pb2.GRANT_SCOPE_PROVINCE
CLOSE = [
    types_pb2.RELATIONSHIP_SPOUSE,
    types_pb2.RELATIONSHIP_PARENT,
    types_pb2.RELATIONSHIP_CHILD,
    types_pb2.RELATIONSHIP_SIBLING,
    types_pb2.RELATIONSHIP_GRANDPARENT,
    types_pb2.RELATIONSHIP_GRANDCHILD,
]
GRANT_CAP = types_pb2.MUTUAL_AID_LIMIT_GRANT_CAP
BENEFICIARY_CAP = types_pb2.MUTUAL_AID_LIMIT_BENEFICIARY_CAP
FLOOR = types_pb2.MUTUAL_AID_LIMIT_AUTHORIZER_FLOOR
NONE = types_pb2.MUTUAL_AID_LIMIT_UNSPECIFIED
CHILD = types_pb2.RELATIONSHIP_CHILD
OLD, YOUNG = dt.date(1960, 1, 1), dt.date(2010, 1, 1)


def parts(s: settlement_pb2.QuoteResponse | types_pb2.Settlement) -> tuple[int, int, int]:
    return s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen


async def quote(api: Api, patient: str, amount_fen: int) -> settlement_pb2.QuoteResponse:
    return await api.quote(patient, amount_fen)


async def test_a_grants_yearly_cap_limits_it_and_a_refund_gives_it_back(api: Api) -> None:
    authorizer = await api.enroll(region="540100", birth=OLD, balance_fen=100_000)
    child = await api.enroll(region="540100", birth=YOUNG, scheme=RESIDENT)
    await api.grant(authorizer, child, CHILD)
    capped = (await api.set_grant_cap(authorizer, child, 1_000)).grant
    assert (capped.yearly_cap_fen, capped.cap_left_fen) == (1_000, 1_000)

    first = (await api.settle(child, 800)).settlement
    assert parts(first) == (0, 800, 0) and first.mutual_aid_limited_by == NONE
    q = await quote(api, child, 500)
    assert parts(q) == (0, 200, 300)
    assert (q.mutual_aid_limited_by, q.grant_cap_left_fen, q.HasField("beneficiary_cap_left_fen")) == (
        GRANT_CAP,
        200,
        False,
    )
    second = (await api.settle(child, 500)).settlement
    assert parts(second) == (0, 200, 300) and second.mutual_aid_limited_by == GRANT_CAP

    # A refund of the first settlement (all mutual aid) gives the cap back.
    await cancel(api, first.settlement_id, 300)
    held = (await api.list_family(child)).grants_held
    assert [(g.yearly_cap_fen, g.cap_left_fen) for g in held] == [(1_000, 300)]
    assert parts(await quote(api, child, 500)) == (0, 300, 200)

    # The beneficiary may not change the cap; the authorizer clears it and the grant pays in full.
    await refused(api.set_grant_cap(authorizer, child, 5_000, requester_id=child), S.PERMISSION_DENIED, "NOT_ALLOWED")
    cleared = (await api.set_grant_cap(authorizer, child, None)).grant
    assert not cleared.HasField("yearly_cap_fen") and not cleared.HasField("cap_left_fen")
    assert parts((await api.settle(child, 500)).settlement) == (0, 500, 0)
    # A cap of 0 stops the grant paying.
    await api.set_grant_cap(authorizer, child, 0)
    zero = (await api.settle(child, 100)).settlement
    assert parts(zero) == (0, 0, 100) and zero.mutual_aid_limited_by == GRANT_CAP and zero.authorizer_id == ""


async def test_a_beneficiarys_yearly_cap_counts_every_grant(api: Api) -> None:
    await api.set_policy("540200", PROVINCE, CLOSE, beneficiary_yearly_cap_fen=1_500)
    father = await api.enroll(region="540200", birth=OLD, balance_fen=100_000)
    mother = await api.enroll(region="540200", birth=OLD, balance_fen=100_000)
    child = await api.enroll(region="540200", birth=YOUNG, scheme=RESIDENT)
    await api.grant(father, child, CHILD)
    await api.grant(mother, child, CHILD)

    assert parts((await api.settle(child, 1_000)).settlement) == (0, 1_000, 0)
    second = (await api.settle(child, 1_000, authorizer_id=mother)).settlement
    assert parts(second) == (0, 500, 500) and second.mutual_aid_limited_by == BENEFICIARY_CAP
    third = (await api.settle(child, 100)).settlement
    assert parts(third) == (0, 0, 100) and third.mutual_aid_limited_by == BENEFICIARY_CAP
    q = await quote(api, child, 100)
    assert (q.beneficiary_cap_left_fen, q.mutual_aid_limited_by) == (0, BENEFICIARY_CAP)
    assert (await api.list_family(child)).beneficiary_cap_left_fen == 0
    # The cap is the region's, so it applies to the father as a beneficiary too, untouched so far.
    assert (await api.list_family(father)).beneficiary_cap_left_fen == 1_500
    # A replay answers the limit as the original did.
    settled = await api.settle(child, 100, request_id="cap-replay-" + child)
    again = await api.settle(child, 100, request_id="cap-replay-" + child, voucher=await api.voucher(child))
    assert again.replayed and again.settlement.mutual_aid_limited_by == settled.settlement.mutual_aid_limited_by


async def test_mutual_aid_never_takes_the_authorizer_below_the_floor(api: Api) -> None:
    await api.set_policy("540300", PROVINCE, CLOSE, authorizer_floor_fen=5_000)
    authorizer = await api.enroll(region="540300", birth=OLD, balance_fen=6_000)
    child = await api.enroll(region="540300", birth=YOUNG, scheme=RESIDENT)
    await api.grant(authorizer, child, CHILD)
    s = (await api.settle(child, 3_000)).settlement
    assert parts(s) == (0, 1_000, 2_000) and s.mutual_aid_limited_by == FLOOR
    assert parts((await api.settle(child, 100)).settlement) == (0, 0, 100)
    # The authorizer's own settlements may go below it.
    own = (await api.settle(authorizer, 4_500)).settlement
    assert parts(own) == (4_500, 0, 0) and own.balc_fen == 500


async def test_bad_caps_are_named_and_write_nothing(api: Api) -> None:
    authorizer = await api.enroll(region="540400", birth=OLD, balance_fen=1_000)
    child = await api.enroll(region="540400", birth=YOUNG, scheme=RESIDENT)
    error = await refused(api.set_grant_cap(authorizer, child, -1), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["yearly_cap_fen"]
    await refused(api.set_grant_cap(authorizer, child, 100), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    error = await refused(
        api.set_policy("540400", PROVINCE, CLOSE, authorizer_floor_fen=-5, beneficiary_yearly_cap_fen=10**12),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert sorted(field_violations(error)) == ["policy.authorizer_floor_fen", "policy.beneficiary_yearly_cap_fen"]
    listed = await api.account.ListRegionPolicies(
        account_pb2.ListRegionPoliciesRequest(), metadata=bearer(api.tokens.operator)
    )
    assert "540400" not in [p.region_key for p in listed.policies]


async def test_caps_hold_under_concurrency(api: Api, pool: asyncpg.Pool) -> None:
    """Many settlements at once of four beneficiaries of one authorizer, one grant capped, each
    beneficiary capped by region: the counts never pass a cap, and the books are exact (the `books`
    fixture runs gongji audit, which proves the counts against the settlements)."""
    await api.set_policy("540500", PROVINCE, CLOSE, beneficiary_yearly_cap_fen=4_000)
    authorizer = await api.enroll(region="540500", birth=OLD, balance_fen=1_000_000)
    children = [await api.enroll(region="540500", birth=YOUNG, scheme=RESIDENT) for _ in range(4)]
    for child in children:
        await api.grant(authorizer, child, CHILD)
    await api.set_grant_cap(authorizer, children[0], 2_500)
    rng = random.Random(14)
    plan = [(rng.choice(children[:1] * 3 + children), rng.randrange(300, 1_500)) for _ in range(48)]

    async def one(child: str, amount: int) -> types_pb2.Settlement:
        return (await api.settle(child, amount)).settlement

    settled = await asyncio.gather(*(one(c, a) for c, a in plan))
    by_child = {c: sum(s.acct_mulaid_pay_fen for s in settled if s.patient_id == c) for c in children}
    assert by_child[children[0]] <= 2_500
    assert all(fen <= 4_000 for fen in by_child.values()), by_child
    assert all(sum(parts(s)) == s.amount_fen for s in settled)
    hits = [s.mutual_aid_limited_by for s in settled if s.mutual_aid_limited_by != NONE]
    assert GRANT_CAP in hits and BENEFICIARY_CAP in hits, hits
    counted = await pool.fetch(
        "select beneficiary_id, used_fen from beneficiary_usage where beneficiary_id = any($1::text[])", children
    )
    assert {r["beneficiary_id"]: r["used_fen"] for r in counted} == {c: f for c, f in by_child.items() if f}


async def test_the_2024_rules_under_one_load(api: Api, pool: asyncpg.Pool) -> None:
    """One concurrent run of the 2024 rules together, its figures printed (`pytest -s`): three
    resident grandchildren of one grandparent settle at the pharmacy (one grant capped, every
    grandchild capped by region, a floor under the grandparent), while the grandparent pays each one's
    resident premium for next year twice over (one payment per grandchild and year may stand), then
    refunds race new settlements. Nothing passes a cap or the floor, and the books are exact."""
    region, floor, ben_cap, grant_cap, premium = "540600", 20_000, 3_000, 1_500, 10_000
    await api.set_policy(region, PROVINCE, CLOSE, beneficiary_yearly_cap_fen=ben_cap, authorizer_floor_fen=floor)
    today = china_today()
    window = (dt.date(today.year, 1, 1), dt.date(today.year, 12, 31))
    await api.set_premium_rate(region, today.year + 1, premium, *window)
    grandparent = await api.enroll(region=region, birth=dt.date(1950, 1, 1), balance_fen=56_000)
    grandchildren = [await api.enroll(region=region, birth=YOUNG, scheme=RESIDENT) for _ in range(3)]
    for child in grandchildren:
        await api.grant(grandparent, child, types_pb2.RELATIONSHIP_GRANDCHILD)
    await api.set_grant_cap(grandparent, grandchildren[0], grant_cap)
    rng = random.Random(2024)

    async def settle(child: str) -> types_pb2.Settlement:
        return (await api.settle(child, rng.randrange(200, 1_200))).settlement

    async def pay(child: str) -> str:
        try:
            await api.pay_premium(grandparent, child, today.year + 1)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    calls = [settle(rng.choice(grandchildren)) for _ in range(40)] + [pay(c) for c in grandchildren * 2]
    rng.shuffle(calls)
    first = await asyncio.gather(*calls)
    settled = [s for s in first if isinstance(s, types_pb2.Settlement)]
    paid = [p for p in first if isinstance(p, str)]
    refunds = [cancel(api, s.settlement_id, 0) for s in settled[:10] if s.acct_mulaid_pay_fen]
    more = [settle(rng.choice(grandchildren)) for _ in range(20)]
    second = await asyncio.gather(*refunds, *more)
    settled += [s for s in second if isinstance(s, types_pb2.Settlement)]

    balance = await api.balance(grandparent)
    mulaid = {c: sum(s.acct_mulaid_pay_fen for s in settled if s.patient_id == c) for c in grandchildren}
    counted = dict(
        await pool.fetch(
            "select beneficiary_id, used_fen from beneficiary_usage where beneficiary_id = any($1::text[])",
            grandchildren,
        )
    )
    hits = {
        types_pb2.MutualAidLimit.Name(k): sum(s.mutual_aid_limited_by == k for s in settled)
        for k in (GRANT_CAP, BENEFICIARY_CAP, FLOOR)
    }
    differences = await audit.differences(pool)
    print(
        f"\n2024 rules, one load: {len(settled)} settlements ({sum(mulaid.values())} fen of mutual aid),"
        f" premium payments {sorted(paid)}, {len(refunds)} refunds, cap and floor hits {hits},"
        f" grandparent's balance {balance} fen (floor {floor}), audit differences: {len(differences)}"
    )
    assert differences == []
    assert sorted(paid) == ["ALREADY_EXISTS"] * 3 + ["OK"] * 3
    # Mutual aid never took the grandparent below the floor: every mutual-aid debit left at least it.
    after = await pool.fetch(
        "select balance_after_fen from ledger_entry where person_id = $1 and kind = 'MUTUAL_AID'", grandparent
    )
    assert after and min(r["balance_after_fen"] for r in after) >= floor
    assert all(counted.get(c, 0) <= ben_cap for c in grandchildren), counted
    grant_used = await pool.fetchval(
        "select coalesce(sum(u.used_fen), 0) from grant_usage u join mutual_aid_grant g using (grant_id)"
        " where g.beneficiary_id = $1",
        grandchildren[0],
    )
    assert grant_used <= grant_cap


async def test_a_cap_set_while_a_settlement_runs_still_holds(api: Api, pool: asyncpg.Pool, db_url: str) -> None:
    """Regression (found by review): a settlement that read no beneficiary cap took no turn on the
    beneficiary's year, so one settling through another grant once a cap was set read the count
    without the first's mutual aid and passed the cap. T1 settles 800 through one grant and holds its
    transaction open; the region then caps the beneficiary at 1,000; T2, through another grant, must
    wait for T1 and pay only the 200 left."""
    father = await api.enroll(region="540700", birth=OLD, balance_fen=100_000)
    mother = await api.enroll(region="540700", birth=OLD, balance_fen=100_000)
    child = await api.enroll(region="540700", birth=YOUNG, scheme=RESIDENT)
    await api.grant(father, child, CHILD)
    await api.grant(mother, child, CHILD)
    # A fresh voucher naming the child, as the server passes a genuine token's claims.
    settle = (
        "select outcome, (settled).acct_mulaid_pay_fen, (settled).mulaid_limited_by"
        " from gongji_settle($1, 'POS-RACE', $2, '\\x00'::bytea, gen_random_uuid(), true,"
        " now() + interval '1 minute', null, null, 'E_VOUCHER', $3, $4, $5, true, null, null, null, null, null, null,"
        " null)"
    )
    institution = await pool.fetchval("select institution_id from institution order by institution_id limit 1")
    first, second = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        t1 = first.transaction()
        await t1.start()
        one = await first.fetchrow(settle, institution, f"race-1-{child}", child, 800, father)
        assert (one["outcome"], one["acct_mulaid_pay_fen"]) == ("OK", 800)
        await api.set_policy("540700", PROVINCE, CLOSE, beneficiary_yearly_cap_fen=1_000)
        two = asyncio.create_task(second.fetchrow(settle, institution, f"race-2-{child}", child, 900, mother))
        await asyncio.sleep(0.3)
        assert not two.done(), "T2 waits for T1's turn on the beneficiary's year"
        await t1.commit()
        row = await two
        assert (row["outcome"], row["acct_mulaid_pay_fen"], row["mulaid_limited_by"]) == ("OK", 200, "BENEFICIARY_CAP")
    finally:
        await first.close()
        await second.close()
    assert await pool.fetchval("select used_fen from beneficiary_usage where beneficiary_id = $1", child) == 1_000
