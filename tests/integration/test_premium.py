"""A close relative's resident premium paid from an employee's personal account (国办发〔2024〕38号 (a)),
through the real gRPC server: every rule with its refusal, replays, refunds, the ledger, the report.

Rates are shared by the whole session, so each test uses 统筹区 of its own (new_region()); the refusal
order itself is held to its twin in tests/integration/test_twins.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid

import asyncpg
import grpc
import pytest
from harness import fingerprint
from prometheus_client import REGISTRY
from support import (
    CHILD,
    EMPLOYEE,
    RESIDENT,
    SPOUSE,
    SUSPENDED,
    Api,
    bearer,
    field_violations,
    new_person_id,
    refused,
)

from gongji import errors
from gongji.api.validate import china_today
from gongji.domain.people import mask_id
from gongji.store import credentials, premiums
from gongji.v1 import account_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")

S = grpc.StatusCode
PARENT_BORN, CHILD_BORN, GRANDPARENT_BORN = dt.date(1975, 3, 1), dt.date(2012, 5, 1), dt.date(1940, 2, 2)
PREMIUM = 40_000
_regions = itertools.count(1)


def new_region(province: str = "61") -> str:
    """A 统筹区 code no other test uses (rates are shared by the session)."""
    return f"{province}9{next(_regions):03d}"


def years() -> tuple[int, int]:
    """This year and next, in China's calendar."""
    today = china_today()
    return today.year, today.year + 1


def open_window() -> tuple[dt.date, dt.date]:
    """A window for next year's premium open today, and still tomorrow (a test run across midnight)."""
    this, next_ = years()
    return dt.date(this, 1, 1), dt.date(next_, 12, 31)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def family(
    api: Api, region: str, *, balance_fen: int = 100_000, payers: int = 1, rate: bool = True
) -> tuple[list[str], str]:
    """Employee parents with money and their resident-insured child, each parent granting the child
    mutual aid; next year's premium set for the region with its window open."""
    child = await api.enroll(scheme=RESIDENT, region=region, birth=CHILD_BORN)
    parents = [await api.enroll(region=region, birth=PARENT_BORN, balance_fen=balance_fen) for _ in range(payers)]
    for parent in parents:
        await api.grant(parent, child, CHILD)
    if rate:
        await api.set_premium_rate(region, years()[1], PREMIUM, *open_window())
    return parents, child


async def test_a_parent_pays_the_childs_premium_from_the_account(api: Api) -> None:
    region = new_region()
    (parent,), child = await family(api, region)
    year = years()[1]
    reply = await api.pay_premium(parent, child, year)
    p = reply.payment
    assert (reply.replayed, reply.balance_fen) == (False, 100_000 - PREMIUM)
    assert (p.payer_id, p.beneficiary_id, p.year, p.amount_fen) == (parent, child, year, PREMIUM)
    assert (p.region_key, p.region_code, p.beneficiary_id_masked) == (region, region, mask_id(child))
    assert not p.HasField("refunded_at") and p.refund_reason == ""
    assert await api.balance(parent) == 100_000 - PREMIUM

    entry = (await api.ledger(parent))[0]
    assert (entry.kind, entry.amount_fen, entry.balance_after_fen) == ("PREMIUM", -PREMIUM, 100_000 - PREMIUM)
    assert entry.premium_payment_id == p.payment_id
    assert entry.counterpart_id_masked == mask_id(child)
    assert entry.note == f"premium for {mask_id(child)}, {year}"
    assert child not in entry.note


async def test_a_grandchild_pays_a_grandparents_premium(api: Api) -> None:
    """The close relatives of 2024 include grandparents: the grant is the only relation checked."""
    region = new_region()
    grandmother = await api.enroll(scheme=RESIDENT, region=region, birth=GRANDPARENT_BORN)
    grandson = await api.enroll(region=region, birth=dt.date(1990, 1, 1), balance_fen=50_000)
    await api.grant(grandson, grandmother, types_pb2.RELATIONSHIP_GRANDPARENT)
    await api.set_premium_rate(region, years()[1], PREMIUM, *open_window())
    assert (await api.pay_premium(grandson, grandmother, years()[1])).balance_fen == 10_000


async def test_the_same_request_again_replays_and_moves_nothing(api: Api) -> None:
    (parent,), child = await family(api, new_region())
    year = years()[1]
    request_id = f"p-{uuid.uuid4()}"
    first = await api.pay_premium(parent, child, year, request_id=request_id)
    again = await api.pay_premium(parent, child, year, request_id=request_id)
    assert again.replayed and not first.replayed
    assert (again.payment, again.balance_fen) == (first.payment, first.balance_fen)
    assert await api.balance(parent) == 100_000 - PREMIUM
    assert [e.kind for e in await api.ledger(parent)] == ["PREMIUM", "CREDIT"]
    # Other content under the same request id: refused, whatever it asks.
    other_year = years()[0]
    await refused(
        api.pay_premium(parent, child, other_year, request_id=request_id), S.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"
    )


async def test_a_second_payer_for_the_same_year_is_refused(api: Api, pool: asyncpg.Pool) -> None:
    (mother, father), child = await family(api, new_region(), payers=2)
    year = years()[1]
    await api.pay_premium(mother, child, year)
    before = await fingerprint(pool)
    error = await refused(api.pay_premium(father, child, year), S.ALREADY_EXISTS, "PREMIUM_ALREADY_PAID")
    assert str(year) in (error.details() or "")
    # The same payer with a new request id too: one premium per year, whoever asks.
    await refused(api.pay_premium(mother, child, year), S.ALREADY_EXISTS, "PREMIUM_ALREADY_PAID")
    assert await fingerprint(pool) == before
    assert await api.balance(father) == 100_000


async def test_a_refund_gives_the_money_back_once_and_the_year_may_be_paid_again(api: Api) -> None:
    (mother, father), child = await family(api, new_region(), payers=2)
    year = years()[1]
    paid = (await api.pay_premium(mother, child, year)).payment
    refunded = await api.refund_premium(paid.payment_id, "paid for the wrong year")
    assert (refunded.replayed, refunded.balance_fen) == (False, 100_000)
    assert refunded.payment.HasField("refunded_at")
    assert refunded.payment.refund_reason == "paid for the wrong year"
    assert await api.balance(mother) == 100_000

    again = await api.refund_premium(paid.payment_id, "another reason")
    assert again.replayed and (again.payment, again.balance_fen) == (refunded.payment, refunded.balance_fen)
    assert await api.balance(mother) == 100_000

    entries = await api.ledger(mother)
    assert [(e.kind, e.amount_fen) for e in entries[:2]] == [("PREMIUM_REFUND", PREMIUM), ("PREMIUM", -PREMIUM)]
    assert entries[0].note == f"premium refunded for {mask_id(child)}, {year}"
    assert "wrong year" not in entries[0].note, "the operator's reason stays out of ledgers"

    # Refunded: the year is open again, for the other parent as well.
    repaid = await api.pay_premium(father, child, year)
    assert repaid.payment.payment_id != paid.payment_id
    assert await api.balance(father) == 100_000 - PREMIUM


async def test_refunding_an_unknown_payment_is_not_found(api: Api) -> None:
    await refused(api.refund_premium(str(uuid.uuid4())), S.NOT_FOUND, "PREMIUM_PAYMENT_NOT_FOUND")


async def test_outside_the_window_is_refused_naming_the_window(api: Api, pool: asyncpg.Pool) -> None:
    region = new_region()
    (parent,), child = await family(api, region, rate=False)
    this, next_ = years()
    # This year's premium was collected last year; next year's is not collected yet.
    await api.set_premium_rate(region, this, PREMIUM, dt.date(this - 1, 9, 1), dt.date(this - 1, 12, 31))
    await api.set_premium_rate(region, next_, PREMIUM, dt.date(next_, 1, 1), dt.date(next_, 6, 30))
    before = await fingerprint(pool)
    error = await refused(api.pay_premium(parent, child, this), S.FAILED_PRECONDITION, "PREMIUM_WINDOW_CLOSED")
    assert f"from {this - 1}-09-01 to {this - 1}-12-31" in (error.details() or "")
    error = await refused(api.pay_premium(parent, child, next_), S.FAILED_PRECONDITION, "PREMIUM_WINDOW_CLOSED")
    assert f"from {next_}-01-01 to {next_}-06-30" in (error.details() or "")
    assert await fingerprint(pool) == before


async def test_without_a_rate_for_the_region_and_year_it_is_not_set(api: Api) -> None:
    region = new_region()
    (parent,), child = await family(api, region, rate=False)
    await refused(api.pay_premium(parent, child, years()[1]), S.FAILED_PRECONDITION, "PREMIUM_NOT_SET")
    # Another region's rate, or another year's, does not apply.
    await api.set_premium_rate(new_region(), years()[1], PREMIUM, *open_window())
    await api.set_premium_rate(region, years()[0], PREMIUM, dt.date(years()[0] - 1, 1, 1), dt.date(years()[0], 12, 31))
    await refused(api.pay_premium(parent, child, years()[1]), S.FAILED_PRECONDITION, "PREMIUM_NOT_SET")
    assert await api.balance(parent) == 100_000


async def test_the_regions_own_rate_wins_over_its_provinces(api: Api) -> None:
    """Guizhou (52) sets one premium; one 统筹区 of it sets its own. Each beneficiary pays the most
    specific, and the payment names the rate applied and the beneficiary's 统筹区."""
    own, other = "520100", "520200"
    year = years()[1]
    await api.set_premium_rate("52", year, 38_000, *open_window())
    await api.set_premium_rate(own, year, 42_000, *open_window())
    for region, amount, key in ((own, 42_000, own), (other, 38_000, "52")):
        (parent,), child = await family(api, region, rate=False)
        p = (await api.pay_premium(parent, child, year)).payment
        assert (p.amount_fen, p.region_key, p.region_code) == (amount, key, region)


async def test_a_rate_changed_later_leaves_payments_made_as_they_were(api: Api) -> None:
    region = new_region()
    (first_parent,), first_child = await family(api, region)
    year = years()[1]
    paid = (await api.pay_premium(first_parent, first_child, year)).payment
    changed = (await api.set_premium_rate(region, year, 45_000, *open_window())).rate
    assert changed.amount_fen == 45_000 and changed.HasField("updated_at")
    (parent,), child = await family(api, region, rate=False)
    assert (await api.pay_premium(parent, child, year)).payment.amount_fen == 45_000
    assert await api.balance(first_parent) == 100_000 - paid.amount_fen == 100_000 - PREMIUM
    listed = await api.account.ListPremiumRates(
        account_pb2.ListPremiumRatesRequest(year=year), metadata=bearer(api.tokens.operator)
    )
    mine = [r for r in listed.rates if r.region_key == region]
    assert [(r.year, r.amount_fen, r.opens_on, r.closes_on) for r in mine] == [
        (year, 45_000, open_window()[0].isoformat(), open_window()[1].isoformat())
    ]
    assert all(r.year == year for r in listed.rates)


async def test_a_short_balance_moves_nothing(api: Api, pool: asyncpg.Pool) -> None:
    """The whole premium from the account or nothing: no part in cash, no part from the account."""
    (parent,), child = await family(api, new_region(), balance_fen=PREMIUM - 1)
    before = await fingerprint(pool)
    await refused(api.pay_premium(parent, child, years()[1]), S.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")
    assert await fingerprint(pool) == before
    await api.credit(parent, 1)
    assert (await api.pay_premium(parent, child, years()[1])).balance_fen == 0


async def test_a_revoked_grant_or_none_is_refused(api: Api) -> None:
    region = new_region()
    (parent,), child = await family(api, region)
    await api.revoke(parent, child, requester_id=child)
    await refused(api.pay_premium(parent, child, years()[1]), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    # The grant goes one way: the child's account would not pay the parent's premium either (nor
    # would the parent be resident-insured), and a stranger with money has no grant.
    stranger = await api.enroll(region=region, balance_fen=100_000)
    await refused(api.pay_premium(stranger, child, years()[1]), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    assert await api.balance(parent) == await api.balance(stranger) == 100_000


async def test_who_may_pay_for_whom_in_the_order_of_the_rules(api: Api) -> None:
    region = new_region()
    (parent,), child = await family(api, region)
    year = years()[1]
    unknown = new_person_id()  # valid, and enrolled nowhere
    await refused(api.pay_premium(unknown, child, year), S.NOT_FOUND, "PERSON_NOT_FOUND")
    await refused(api.pay_premium(parent, unknown, year), S.NOT_FOUND, "PERSON_NOT_FOUND")
    # A suspended payer: not active, before anything else about them.
    suspended = await api.enroll(region=region, status=SUSPENDED, balance_fen=100_000)
    await refused(api.pay_premium(suspended, child, year), S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    # A resident-insured payer has no personal account.
    resident = await api.enroll(scheme=RESIDENT, region=region)
    await refused(api.pay_premium(resident, child, year), S.FAILED_PRECONDITION, "NOT_EMPLOYEE_INSURED")
    # An employee-insured beneficiary, even one the payer granted: they pay their own premium.
    spouse = await api.enroll(region=region, scheme=EMPLOYEE)
    await api.grant(parent, spouse, SPOUSE)
    await refused(api.pay_premium(parent, spouse, year), S.FAILED_PRECONDITION, "BENEFICIARY_NOT_RESIDENT")
    assert await api.balance(parent) == 100_000


async def test_bad_input_names_each_field_and_writes_nothing(api: Api, pool: asyncpg.Pool) -> None:
    (parent,), child = await family(api, new_region())
    before = await fingerprint(pool)
    bad = account_pb2.PayPremiumRequest(request_id="bad id!", payer_id=parent, beneficiary_id=parent, year=1999)
    error = await refused(
        api.account.PayPremium(bad, metadata=bearer(api.tokens.app)), S.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert sorted(field_violations(error)) == ["beneficiary_id", "request_id", "year"]
    too_late = account_pb2.PayPremiumRequest(request_id="x", payer_id=parent, beneficiary_id=child, year=years()[1] + 1)
    error = await refused(
        api.account.PayPremium(too_late, metadata=bearer(api.tokens.app)), S.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert field_violations(error) == ["year"]

    this, next_ = years()
    for rate, fields in (
        (account_pb2.PremiumRate(region_key="610000", year=next_, amount_fen=1, opens_on=f"{this}-01-01",
                                 closes_on=f"{this}-02-01"), ["rate.region_key"]),
        (account_pb2.PremiumRate(region_key="61", year=next_, amount_fen=0, opens_on=f"{this}-03-01",
                                 closes_on=f"{this}-02-01"), ["rate.amount_fen", "rate.closes_on"]),
        (account_pb2.PremiumRate(region_key="61", year=next_, amount_fen=1, opens_on=f"{this - 1}-12-31",
                                 closes_on=f"{next_ + 1}-01-01"), ["rate.closes_on", "rate.opens_on"]),
        (account_pb2.PremiumRate(region_key="6", year=2023, amount_fen=1, opens_on="2022-9-1",
                                 closes_on="２０２２-12-31"), ["rate.closes_on", "rate.opens_on", "rate.region_key",
                                                            "rate.year"]),
    ):  # fmt: skip
        error = await refused(
            api.account.SetPremiumRate(
                account_pb2.SetPremiumRateRequest(rate=rate), metadata=bearer(api.tokens.operator)
            ),
            S.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert sorted(field_violations(error)) == fields, (rate, field_violations(error))

    for request, fields in (
        (account_pb2.RefundPremiumRequest(payment_id="not-a-uuid", reason=" "), ["payment_id", "reason"]),
        (account_pb2.RefundPremiumRequest(payment_id=str(uuid.uuid4()), reason="x" * 129), ["reason"]),
    ):
        error = await refused(
            api.account.RefundPremium(request, metadata=bearer(api.tokens.operator)),
            S.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert sorted(field_violations(error)) == fields
    assert await fingerprint(pool) == before


async def test_report_per_region_and_day(api: Api) -> None:
    """Payments on the day they were made, refunds on the day of the refund, per 统筹区; one page at a
    time; a province's 统筹区 only when asked."""
    first, second = new_region("53"), new_region("53")
    year = years()[1]
    paid = []
    for region, n in ((first, 3), (second, 1)):
        await api.set_premium_rate(region, year, PREMIUM, *open_window())
        for _ in range(n):
            (parent,), child = await family(api, region, rate=False)
            paid.append((await api.pay_premium(parent, child, year)).payment)
    await api.refund_premium(paid[0].payment_id)
    today = china_today().isoformat()

    async def report(**fields: object) -> account_pb2.ReportPremiumsResponse:
        request = account_pb2.ReportPremiumsRequest(from_date=today, to_date=today, **fields)  # type: ignore[arg-type]
        reply: account_pb2.ReportPremiumsResponse = await api.account.ReportPremiums(
            request, metadata=bearer(api.tokens.operator)
        )
        return reply

    whole = await report(region_key="53")
    assert [
        (d.date, d.region_code, d.payment_count, d.paid_fen, d.refund_count, d.refunded_fen) for d in whole.days
    ] == [
        (today, first, 3, 3 * PREMIUM, 1, PREMIUM),
        (today, second, 1, PREMIUM, 0, 0),
    ]
    assert whole.next_page_token == ""
    page = await report(region_key="53", page_size=1)
    assert [d.region_code for d in page.days] == [first] and page.next_page_token
    rest = await report(region_key="53", page_size=1, page_token=page.next_page_token)
    assert [d.region_code for d in rest.days] == [second]
    assert [d.region_code for d in (await report(region_key=second)).days] == [second]
    everyone = await report(page_size=1_000)
    assert {first, second} <= {d.region_code for d in everyone.days}

    for fields, bad in (
        ({"from_date": "2024-01-01", "to_date": "2024-04-02"}, ["to_date"]),  # 93 days; 92 is the most
        ({"from_date": today, "to_date": "2024-01-01"}, ["to_date"]),
        ({"from_date": "2024-02-30", "to_date": "9999-01-01"}, ["from_date", "to_date"]),
        ({"from_date": today, "to_date": today, "region_key": "530000"}, ["region_key"]),
        ({"from_date": today, "to_date": today, "page_token": "x"}, ["page_token"]),
    ):
        request = account_pb2.ReportPremiumsRequest(**fields)  # type: ignore[arg-type]
        error = await refused(
            api.account.ReportPremiums(request, metadata=bearer(api.tokens.operator)),
            S.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert sorted(field_violations(error)) == bad, fields
    ninety_two = await api.account.ReportPremiums(
        account_pb2.ReportPremiumsRequest(from_date="2024-01-01", to_date="2024-04-01"),
        metadata=bearer(api.tokens.operator),
    )
    assert list(ninety_two.days) == []


async def test_metrics_count_outcomes_and_money(api: Api) -> None:
    (mother, father), child = await family(api, new_region(), payers=2)
    year = years()[1]
    ok, replayed = (
        value("gongji_premium_payments_total", outcome="OK"),
        value("gongji_premium_payments_total", outcome="REPLAYED"),
    )
    already = value("gongji_premium_payments_total", outcome="PREMIUM_ALREADY_PAID")
    fen, refunds, refunded = (
        value("gongji_premium_paid_fen_total"),
        value("gongji_premium_refunds_total"),
        value("gongji_premium_refunded_fen_total"),
    )
    request_id = f"p-{uuid.uuid4()}"
    paid = (await api.pay_premium(mother, child, year, request_id=request_id)).payment
    await api.pay_premium(mother, child, year, request_id=request_id)
    await refused(api.pay_premium(father, child, year), S.ALREADY_EXISTS, "PREMIUM_ALREADY_PAID")
    await api.refund_premium(paid.payment_id)
    await api.refund_premium(paid.payment_id)
    assert value("gongji_premium_payments_total", outcome="OK") == ok + 1
    assert value("gongji_premium_payments_total", outcome="REPLAYED") == replayed + 1
    assert value("gongji_premium_payments_total", outcome="PREMIUM_ALREADY_PAID") == already + 1
    assert value("gongji_premium_paid_fen_total") == fen + PREMIUM
    assert value("gongji_premium_refunds_total") == refunds + 1
    assert value("gongji_premium_refunded_fen_total") == refunded + PREMIUM


async def test_a_revoked_app_credential_moves_nothing_whatever_a_cache_believes(api: Api, pool: asyncpg.Pool) -> None:
    """Checked in the payment's own statement, as for every money call: the store is asked directly,
    as a server whose cache still held the credential would ask it."""
    (parent,), child = await family(api, new_region())
    token = await credentials.create(pool, credentials.Kind.APP, "premium app, revoked")
    credential_id = await pool.fetchval(
        "select credential_id from credential where token_sha256 = $1", credentials.token_hash(token)
    )
    await credentials.revoke(pool, str(credential_id))
    before = await fingerprint(pool)
    with pytest.raises(errors.CredentialsInvalid):
        await premiums.pay(
            pool,
            credential_id=credential_id,
            request_id=f"p-{uuid.uuid4()}",
            digest=b"d",
            payer_id=parent,
            beneficiary_id=child,
            year=years()[1],
            today=china_today(),
        )
    assert await fingerprint(pool) == before


async def test_a_revoke_ahead_of_a_payment_wins(api: Api, pool: asyncpg.Pool) -> None:
    """A settlement holds the grant (its row lock) while a Revoke and then a payment queue behind it:
    the Revoke goes first, and the payment, finding the grant ended, is refused and moves nothing."""
    (parent,), child = await family(api, new_region())
    grant_id = await pool.fetchval(
        "select grant_id from mutual_aid_grant where authorizer_id = $1 and beneficiary_id = $2 and status = 'LIVE'",
        parent,
        child,
    )
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("select 1 from mutual_aid_grant where grant_id = $1 for no key update", grant_id)
        revoking = asyncio.ensure_future(api.revoke(parent, child))
        await _until_waiting(pool, "update mutual_aid_grant")
        paying = asyncio.ensure_future(api.pay_premium(parent, child, years()[1]))
        await _until_waiting(pool, "gongji_pay_premium")
    assert (await revoking).grant.end_reason == "REVOKED_BY_AUTHORIZER"
    await refused(paying, S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    assert await api.balance(parent) == 100_000


async def _until_waiting(pool: asyncpg.Pool, statement: str) -> None:
    """Until a statement containing `statement` waits for a lock (bounded)."""
    for _ in range(200):
        waiting = await pool.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
            " and query like '%' || $1 || '%' and pid <> pg_backend_pid()",
            statement,
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {statement} waiting for a lock")
