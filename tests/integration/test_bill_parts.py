"""The bill's parts (issue 17): a terminal may send the personal burden as its parts with the kind of
care (med_type) and the insurance (insutype); the patient's region policy per med_type decides whether
the personal account, and mutual aid, pay the wholly self-paid items. Real server, real PostgreSQL.

The policies here are set for 统筹区 and a province no other test uses (Jiangxi, 36), and removed after.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY
from support import RESIDENT, Api, bearer, cancel, field_violations, refused

from gongji.v1 import account_pb2, settlement_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
PHARMACY, OUTPATIENT, INPATIENT = (
    types_pb2.MED_TYPE_PHARMACY,
    types_pb2.MED_TYPE_OUTPATIENT,
    types_pb2.MED_TYPE_INPATIENT,
)
EMPLOYEE_BASIC, RESIDENT_BASIC = types_pb2.INSUTYPE_EMPLOYEE_BASIC, types_pb2.INSUTYPE_RESIDENT_BASIC
SPOUSE = [types_pb2.RELATIONSHIP_SPOUSE]
NANCHANG, JINGDEZHEN = "360100", "360200"


def bill(in_scope: int, over_limit: int = 0, wholly: int = 0) -> types_pb2.BillParts:
    return types_pb2.BillParts(in_scope_fen=in_scope, over_limit_fen=over_limit, wholly_self_paid_fen=wholly)


def parts(p: types_pb2.BillParts) -> tuple[int, int, int]:
    return p.in_scope_fen, p.over_limit_fen, p.wholly_self_paid_fen


async def settle(api: Api, patient: str, b: types_pb2.BillParts | None, **fields: Any) -> types_pb2.Settlement:
    """Settle the bill `b` (None: send the amount only, in fields) at a pharmacy unless told otherwise."""
    if b is not None:
        fields.setdefault("amount_fen", b.in_scope_fen + b.over_limit_fen + b.wholly_self_paid_fen)
        fields.setdefault("med_type", PHARMACY)
        fields["bill"] = b
    request = settlement_pb2.SettleRequest(
        request_id=fields.pop("request_id", None) or f"bill-{uuid.uuid4()}",
        voucher=await api.voucher(patient),
        patient_id=patient,
        **fields,
    )
    reply = await api.settlement.Settle(request, metadata=bearer(api.tokens.terminal_a))
    return reply.settlement


async def quote(api: Api, patient: str, b: types_pb2.BillParts, **fields: Any) -> settlement_pb2.QuoteResponse:
    fields.setdefault("med_type", PHARMACY)
    request = settlement_pb2.QuoteRequest(
        voucher=await api.voucher(patient),
        patient_id=patient,
        amount_fen=b.in_scope_fen + b.over_limit_fen + b.wholly_self_paid_fen,
        bill=b,
        **fields,
    )
    reply: settlement_pb2.QuoteResponse = await api.settlement.Quote(request, metadata=bearer(api.tokens.terminal_a))
    return reply


def split(s: types_pb2.Settlement | settlement_pb2.QuoteResponse) -> tuple[tuple[int, int, int], ...]:
    """What each source paid of each part: own, mutual aid, cash."""
    return parts(s.own_parts), parts(s.mutual_aid_parts), parts(s.cash_parts)


async def family(api: Api, region: str, own_fen: int, *, scheme: int | None = None) -> tuple[str, str]:
    authorizer = await api.enroll(region=region, balance_fen=10_000)
    patient = await api.enroll(region=region, balance_fen=own_fen, **({"scheme": scheme} if scheme else {}))
    await api.grant(authorizer, patient)
    return patient, authorizer


async def set_rules(api: Api, region_key: str, *rules: tuple[int, bool, bool]) -> account_pb2.RegionPolicy:
    reply = await api.set_policy(
        region_key,
        types_pb2.GRANT_SCOPE_PROVINCE,
        SPOUSE,
        wholly_self_paid_rules=[
            account_pb2.WhollySelfPaidRule(med_type=m, account_pays=a, mutual_aid_pays=b) for m, a, b in rules
        ],
    )
    return reply.policy


@pytest.fixture
async def jiangxi(pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await pool.execute("delete from region_policy where region_key in ('36', $1, $2)", NANCHANG, JINGDEZHEN)


async def test_with_no_policy_the_accounts_pay_every_part(api: Api) -> None:
    """The default: wholly self-paid items are paid as a bill sent as its amount only is. The answer says
    how the bill was read and what each source paid of each part; GetSettlement says it again."""
    patient, authorizer = await family(api, "610100", own_fen=250)
    s = await settle(api, patient, bill(300, 100, 200), insutype=EMPLOYEE_BASIC)
    assert (s.bill_reading, parts(s.bill), s.med_type, s.insutype) == (
        types_pb2.BILL_READING_PARTS,
        (300, 100, 200),
        PHARMACY,
        EMPLOYEE_BASIC,
    )
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.psn_acct_pay_fen) == (250, 350, 0, 600)
    # The own account pays within the scope, then over the limit; mutual aid goes on where it stopped.
    assert split(s) == ((250, 0, 0), (50, 100, 200), (0, 0, 0))
    assert s.authorizer_id == authorizer
    got = await api.settlement.GetSettlement(
        settlement_pb2.GetSettlementRequest(settlement_id=s.settlement_id), metadata=bearer(api.tokens.terminal_a)
    )
    assert split(got.settlement) == split(s)
    assert (got.settlement.bill_reading, got.settlement.med_type) == (types_pb2.BILL_READING_PARTS, PHARMACY)


@pytest.mark.usefixtures("jiangxi")
async def test_a_region_may_keep_wholly_self_paid_items_off_the_accounts(api: Api) -> None:
    """Nanchang: at pharmacies the account pays no wholly self-paid item (cash does); in hospital the own
    account may, mutual aid may not. Other kinds of care keep the default."""
    policy = await set_rules(api, NANCHANG, (PHARMACY, False, False), (INPATIENT, True, False))
    assert {(r.med_type, r.account_pays, r.mutual_aid_pays) for r in policy.wholly_self_paid_rules} == {
        (PHARMACY, False, False),
        (INPATIENT, True, False),
    }
    patient, authorizer = await family(api, NANCHANG, own_fen=1_000)
    kept_off = REGISTRY.get_sample_value(
        "gongji_settled_fen_by_part_total", {"source": "cash", "part": "wholly_self_paid"}
    )
    s = await settle(api, patient, bill(300, 100, 200))
    assert split(s) == ((300, 100, 0), (0, 0, 0), (0, 0, 200))
    assert (
        REGISTRY.get_sample_value("gongji_settled_fen_by_part_total", {"source": "cash", "part": "wholly_self_paid"})
        or 0.0
    ) - (kept_off or 0.0) == 200
    assert (s.acct_pay_fen, s.psn_cash_pay_fen) == (400, 200)
    assert await api.balance(patient) == 600

    # In hospital the own account pays the wholly self-paid items first, as only it may, and leaves
    # what mutual aid may pay to mutual aid: the least goes to cash.
    s = await settle(api, patient, bill(500, 0, 400), med_type=INPATIENT)
    assert split(s) == ((200, 0, 400), (300, 0, 0), (0, 0, 0))
    # With the own account empty, the wholly self-paid items are cash.
    s = await settle(api, patient, bill(100, 50, 70), med_type=INPATIENT)
    assert split(s) == ((0, 0, 0), (100, 50, 0), (0, 0, 70))
    assert await api.balance(authorizer) == 10_000 - 300 - 150

    # Cash paying wholly self-paid items the account may not pay is no limit of mutual aid's.
    poor, _ = await family(api, NANCHANG, own_fen=0)
    s = await settle(api, poor, bill(100, 0, 50))
    assert (split(s), s.mutual_aid_limited_by) == (
        ((0, 0, 0), (100, 0, 0), (0, 0, 50)),
        types_pb2.MUTUAL_AID_LIMIT_UNSPECIFIED,
    )

    # Outpatient care has no rule: the default.
    other, _ = await family(api, NANCHANG, own_fen=100)
    s = await settle(api, other, bill(50, 0, 200), med_type=OUTPATIENT)
    assert split(s) == ((50, 0, 50), (0, 0, 150), (0, 0, 0))


@pytest.mark.usefixtures("jiangxi")
async def test_a_province_rule_holds_where_the_region_has_none_and_quote_agrees(api: Api) -> None:
    await set_rules(api, "36", (PHARMACY, True, False))
    patient, _ = await family(api, JINGDEZHEN, own_fen=100)
    b = bill(300, 0, 200)
    q = await quote(api, patient, b)
    s = await settle(api, patient, b)
    assert split(q) == split(s) == ((0, 0, 100), (300, 0, 0), (0, 0, 100))
    assert (q.bill_reading, parts(q.bill), q.insutype) == (types_pb2.BILL_READING_PARTS, (300, 0, 200), EMPLOYEE_BASIC)
    assert q.psn_acct_pay_fen == s.psn_acct_pay_fen == 400


async def test_a_bill_sent_as_its_amount_is_read_as_within_the_scope(api: Api) -> None:
    patient, _ = await family(api, "610100", own_fen=100)
    s = await settle(api, patient, None, amount_fen=500)
    assert (s.bill_reading, parts(s.bill), s.med_type, s.insutype) == (
        types_pb2.BILL_READING_AMOUNT,
        (500, 0, 0),
        types_pb2.MED_TYPE_UNSPECIFIED,
        EMPLOYEE_BASIC,
    )
    assert split(s) == ((100, 0, 0), (400, 0, 0), (0, 0, 0))
    # A med_type without parts is recorded; the bill is still read as its amount.
    s = await settle(api, patient, None, amount_fen=20, med_type=OUTPATIENT)
    assert (s.bill_reading, s.med_type, parts(s.bill)) == (types_pb2.BILL_READING_AMOUNT, OUTPATIENT, (20, 0, 0))
    assert split(s) == ((0, 0, 0), (20, 0, 0), (0, 0, 0))


async def test_a_resident_settles_under_390_and_mutual_aid_pays_the_parts(api: Api) -> None:
    patient, authorizer = await family(api, "610100", own_fen=0, scheme=RESIDENT)
    s = await settle(api, patient, bill(100, 20, 30), insutype=RESIDENT_BASIC)
    assert (s.insutype, split(s)) == (RESIDENT_BASIC, ((0, 0, 0), (100, 20, 30), (0, 0, 0)))
    assert s.authorizer_id == authorizer
    await refused(settle(api, patient, bill(100), insutype=EMPLOYEE_BASIC), S.FAILED_PRECONDITION, "INSUTYPE_MISMATCH")
    employee, _ = await family(api, "610100", own_fen=50)
    await refused(
        settle(api, employee, None, amount_fen=10, insutype=RESIDENT_BASIC), S.FAILED_PRECONDITION, "INSUTYPE_MISMATCH"
    )
    assert await api.balance(employee) == 50


async def test_bad_bills_are_refused_field_by_field_and_write_nothing(api: Api, pool: asyncpg.Pool) -> None:
    patient, _ = await family(api, "610100", own_fen=1_000)
    before = await pool.fetchval("select count(*) from settlement where patient_id = $1", patient)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"amount_fen": 500, "bill": bill(300, 100, 50), "med_type": PHARMACY}, ["bill"]),
        ({"amount_fen": 500, "bill": bill(500)}, ["med_type"]),
        ({"amount_fen": 500, "bill": bill(600, -100), "med_type": PHARMACY}, ["bill.over_limit_fen"]),
        ({"amount_fen": 500, "med_type": 12}, ["med_type"]),
        ({"amount_fen": 500, "insutype": 311}, ["insutype"]),
        ({"amount_fen": 500, "bill": bill(0), "med_type": PHARMACY}, ["bill"]),
    ]
    for fields, violations in cases:
        request = settlement_pb2.SettleRequest(
            request_id=f"bad-bill-{len(violations)}", voucher=await api.voucher(patient), patient_id=patient, **fields
        )
        error = await refused(
            api.settlement.Settle(request, metadata=bearer(api.tokens.terminal_a)),
            S.INVALID_ARGUMENT,
            "INVALID_AMOUNT" if "bill" in fields and violations[0].startswith("bill") else "INVALID_ARGUMENT",
        )
        assert field_violations(error) == violations, fields
    assert await pool.fetchval("select count(*) from settlement where patient_id = $1", patient) == before
    assert await api.balance(patient) == 1_000


async def test_a_retry_replays_its_bill_and_another_bill_under_its_key_is_refused(api: Api) -> None:
    patient, _ = await family(api, "610100", own_fen=1_000)
    first = await settle(api, patient, bill(300, 0, 200), request_id="bill-retry-" + patient)
    again = await settle(api, patient, bill(300, 0, 200), request_id="bill-retry-" + patient)
    assert again.settlement_id == first.settlement_id and split(again) == split(first)
    await refused(
        settle(api, patient, bill(400, 0, 100), request_id="bill-retry-" + patient),
        S.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    await refused(
        settle(api, patient, None, amount_fen=500, request_id="bill-retry-" + patient),
        S.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    # A refund of a settlement read by its parts returns money as any refund does: cash first.
    refund = await cancel(api, first.settlement_id, 200)
    assert refund.settlement.refunded_fen == 200
    assert await api.balance(patient) == 1_000 - 500 + 200
