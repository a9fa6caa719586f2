"""Bills a careless or hostile POS might send as their parts, and rules on wholly self-paid items an
operator might mistype, in one place: each is refused with its status and one reason, nothing is
written, and the server settles a good bill after. And the new fields move money only as the
waterfall says: what a region keeps the accounts from paying is never paid from an account, and no
parts make an account pay more than it holds.

The region of these tests (650200) is theirs alone: its rules must not reach the rest of the suite.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
from harness import fingerprint, reason_of
from support import CHILD, RESIDENT, Api, bearer

from gongji.v1 import account_pb2, settlement_pb2, types_pb2

S = grpc.StatusCode
REGION = "650200"
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
OUTPATIENT, PHARMACY = types_pb2.MED_TYPE_OUTPATIENT, types_pb2.MED_TYPE_PHARMACY
EMPLOYEE_BASIC, RESIDENT_BASIC = types_pb2.INSUTYPE_EMPLOYEE_BASIC, types_pb2.INSUTYPE_RESIDENT_BASIC
BAD_AMOUNT = (S.INVALID_ARGUMENT, "INVALID_AMOUNT")
BAD = (S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
MISMATCH = (S.FAILED_PRECONDITION, "INSUTYPE_MISMATCH")


def _parts(in_scope: int, over_limit: int, wholly: int) -> types_pb2.BillParts:
    return types_pb2.BillParts(in_scope_fen=in_scope, over_limit_fen=over_limit, wholly_self_paid_fen=wholly)


# (case, the request's amount and bill fields, what the patient, an employee, gets)
BILL_CASES: list[tuple[str, dict[str, Any], tuple[S, str]]] = [
    ("a negative part", {"amount_fen": 500, "bill": _parts(600, -100, 0), "med_type": OUTPATIENT}, BAD_AMOUNT),
    ("parts one fen short", {"amount_fen": 500, "bill": _parts(200, 100, 199), "med_type": OUTPATIENT}, BAD_AMOUNT),
    ("parts one fen over", {"amount_fen": 500, "bill": _parts(200, 100, 201), "med_type": OUTPATIENT}, BAD_AMOUNT),
    ("all parts zero", {"amount_fen": 500, "bill": _parts(0, 0, 0), "med_type": OUTPATIENT}, BAD_AMOUNT),
    ("a zero amount of zero parts", {"amount_fen": 0, "bill": _parts(0, 0, 0), "med_type": OUTPATIENT}, BAD_AMOUNT),
    # Each adds up to the amount modulo 2^64: only a sum that wraps would take them.
    (
        "parts whose int64 sum wraps to the amount",
        {"amount_fen": 100, "bill": _parts(INT64_MAX, INT64_MAX, 102), "med_type": OUTPATIENT},
        BAD_AMOUNT,
    ),
    (
        "parts adding up through -2^63",
        {"amount_fen": 100, "bill": _parts(INT64_MIN, INT64_MAX, 101), "med_type": OUTPATIENT},
        BAD_AMOUNT,
    ),
    (
        "a huge wholly self-paid part offset by a negative one",
        {"amount_fen": 500, "bill": _parts(-(10**15), 0, 10**15 + 500), "med_type": OUTPATIENT},
        BAD_AMOUNT,
    ),
    (
        "parts over the largest amount",
        {"amount_fen": 100_000_001, "bill": _parts(100_000_001, 0, 0), "med_type": OUTPATIENT},
        BAD_AMOUNT,
    ),
    ("a bill without med_type", {"amount_fen": 500, "bill": _parts(500, 0, 0)}, BAD),
    ("med_type 12 (no such kind of care)", {"amount_fen": 500, "bill": _parts(500, 0, 0), "med_type": 12}, BAD),
    ("med_type 999", {"amount_fen": 500, "bill": _parts(0, 0, 500), "med_type": 999}, BAD),
    ("med_type -1", {"amount_fen": 500, "bill": _parts(0, 0, 500), "med_type": -1}, BAD),
    ("med_type 12 without a bill", {"amount_fen": 500, "med_type": 12}, BAD),
    ("insutype 12", {"amount_fen": 500, "insutype": 12}, BAD),
    ("insutype 999", {"amount_fen": 500, "bill": _parts(500, 0, 0), "med_type": OUTPATIENT, "insutype": 999}, BAD),
    ("insutype -1", {"amount_fen": 500, "insutype": -1}, BAD),
    ("insutype 311 (close to the employee's)", {"amount_fen": 500, "insutype": 311}, BAD),
    # A bad amount beside a bad enum: not the amount alone.
    ("parts not adding up and med_type 12", {"amount_fen": 500, "bill": _parts(1, 0, 0), "med_type": 12}, BAD),
    ("the resident insutype for an employee", {"amount_fen": 500, "insutype": RESIDENT_BASIC}, MISMATCH),
    (
        "the resident insutype with parts",
        {"amount_fen": 500, "bill": _parts(0, 0, 500), "med_type": PHARMACY, "insutype": RESIDENT_BASIC},
        MISMATCH,
    ),
]


async def _refusal(call: Awaitable[object]) -> tuple[S, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), reason_of(caught.value)


async def _family(api: Api) -> tuple[str, str]:
    """An authorizer with money and their employee-insured child, of this file's region."""
    authorizer = await api.enroll(balance_fen=10_000, birth=dt.date(1960, 1, 1), region=REGION)
    patient = await api.enroll(balance_fen=1_000, birth=dt.date(1990, 1, 1), region=REGION, name="王小宝")
    await api.grant(authorizer, patient, CHILD)
    return authorizer, patient


async def _set_rules(api: Api, rules: list[account_pb2.WhollySelfPaidRule]) -> Any:
    policy = account_pb2.RegionPolicy(
        region_key=REGION,
        scope=types_pb2.GRANT_SCOPE_PROVINCE,
        allowed_relationships=[types_pb2.RELATIONSHIP_CHILD, types_pb2.RELATIONSHIP_PARENT],
        wholly_self_paid_rules=rules,
    )
    request = account_pb2.SetRegionPolicyRequest(policy=policy)
    return await api.account.SetRegionPolicy(request, metadata=bearer(api.tokens.operator))


async def _settle(api: Api, patient: str, token: str | None = None, **fields: Any) -> settlement_pb2.SettleResponse:
    request = settlement_pb2.SettleRequest(request_id=f"bill-{uuid.uuid4()}", voucher=await api.voucher(patient))
    request.MergeFrom(settlement_pb2.SettleRequest(patient_id=patient, **fields))
    reply: settlement_pb2.SettleResponse = await api.settlement.Settle(
        request, metadata=bearer(token or api.tokens.terminal_a)
    )
    return reply


@pytest.mark.parametrize(("case", "fields", "expected"), BILL_CASES, ids=[c[0] for c in BILL_CASES])
async def test_a_bad_bill_is_refused_with_its_reason(
    api: Api, pool: asyncpg.Pool, case: str, fields: dict[str, Any], expected: tuple[S, str]
) -> None:
    authorizer, patient = await _family(api)
    before = await fingerprint(pool)
    quote = settlement_pb2.QuoteRequest(voucher=await api.voucher(patient), patient_id=patient, **fields)
    assert await _refusal(api.settlement.Quote(quote, metadata=bearer(api.tokens.terminal_a))) == expected
    for token in (api.tokens.terminal_a, api.tokens.terminal_b):
        assert await _refusal(_settle(api, patient, token, **fields)) == expected
    assert await fingerprint(pool) == before, "a refused bill wrote something"
    assert (await api.balance(patient), await api.balance(authorizer)) == (1_000, 10_000)
    # The server goes on serving: a good bill of the parts settles.
    good = await _settle(api, patient, amount_fen=500, bill=_parts(300, 200, 0), med_type=OUTPATIENT)
    assert (good.settlement.bill_reading, good.settlement.acct_pay_fen) == (types_pb2.BILL_READING_PARTS, 500)


def _rule(med_type: int, account: bool, mutual_aid: bool) -> account_pb2.WhollySelfPaidRule:
    return account_pb2.WhollySelfPaidRule(
        med_type=types_pb2.MedType.ValueType(med_type), account_pays=account, mutual_aid_pays=mutual_aid
    )


RULE_CASES: list[tuple[str, list[account_pb2.WhollySelfPaidRule]]] = [
    ("two rules for one med_type", [_rule(OUTPATIENT, False, False), _rule(OUTPATIENT, True, True)]),
    ("the same rule twice", [_rule(PHARMACY, True, False), _rule(PHARMACY, True, False)]),
    ("med_type unspecified", [_rule(0, False, False)]),
    ("med_type 12", [_rule(12, False, False)]),
    ("med_type 999", [_rule(999, True, False)]),
    ("med_type -1", [_rule(-1, False, False)]),
    ("mutual aid without the account", [_rule(OUTPATIENT, False, True)]),
    ("one rule more than there are kinds of care", [_rule(m, False, False) for m in (11, 13, 14, 21, 41, 11)]),
    ("a thousand rules", [_rule(OUTPATIENT, False, False)] * 1_000),
    ("good rules and one bad", [_rule(13, False, False), _rule(21, True, False), _rule(41, False, True)]),
]


@pytest.mark.parametrize(("case", "rules"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
async def test_a_bad_wholly_self_paid_rule_is_refused(
    api: Api, pool: asyncpg.Pool, case: str, rules: list[account_pb2.WhollySelfPaidRule]
) -> None:
    """Refused whole: the region keeps the rules it had, and bills are paid by them."""
    await _set_rules(api, [_rule(PHARMACY, False, False)])
    authorizer, patient = await _family(api)
    before = await fingerprint(pool)
    assert await _refusal(_set_rules(api, rules)) == BAD
    assert await fingerprint(pool) == before, "a refused policy wrote something"
    listed = await api.account.ListRegionPolicies(
        account_pb2.ListRegionPoliciesRequest(), metadata=bearer(api.tokens.operator)
    )
    (policy,) = [p for p in listed.policies if p.region_key == REGION]
    assert list(policy.wholly_self_paid_rules) == [_rule(PHARMACY, False, False)]
    reply = await _settle(api, patient, amount_fen=500, bill=_parts(100, 0, 400), med_type=PHARMACY)
    assert (reply.settlement.acct_pay_fen, reply.settlement.psn_cash_pay_fen) == (100, 400)
    assert (await api.balance(patient), await api.balance(authorizer)) == (900, 10_000)


# (account pays, mutual aid pays) the wholly self-paid items of outpatient care in REGION
WHO = [(True, True), (True, False), (False, False)]
# (own balance, in scope, over the limit, wholly self-paid): some bills beyond every balance
BILLS = [(0, 0, 0, 500), (300, 100, 100, 700), (1_000, 0, 0, 20_000), (50, 99_000_000, 500_000, 500_000)]


@pytest.mark.parametrize(("account", "mutual_aid"), WHO)
async def test_the_parts_move_money_only_as_the_waterfall_says(
    api: Api, pool: asyncpg.Pool, account: bool, mutual_aid: bool
) -> None:
    """Whatever the parts, an account pays no more than it holds nor anything the region keeps it from;
    the books move by exactly what the answer says, and Quote says the same as Settle."""
    await _set_rules(api, [_rule(OUTPATIENT, account, mutual_aid)])
    for own, in_scope, over, wholly in BILLS:
        authorizer = await api.enroll(balance_fen=3_000, birth=dt.date(1960, 1, 1), region=REGION)
        patient = await api.enroll(balance_fen=own, birth=dt.date(1990, 1, 1), region=REGION)
        resident = await api.enroll(scheme=RESIDENT, birth=dt.date(2015, 1, 1), region=REGION)
        for person in (patient, resident):
            await api.grant(authorizer, person, CHILD)
            bill: dict[str, Any] = {"amount_fen": in_scope + over + wholly, "bill": _parts(in_scope, over, wholly)}
            quote = settlement_pb2.QuoteRequest(
                voucher=await api.voucher(person), patient_id=person, med_type=OUTPATIENT, **bill
            )
            quoted = await api.settlement.Quote(quote, metadata=bearer(api.tokens.terminal_a))
            before = (await api.balance(person), await api.balance(authorizer))
            s = (await _settle(api, person, med_type=OUTPATIENT, **bill)).settlement
            assert (s.acct_pay_fen, s.acct_mulaid_pay_fen) == (quoted.acct_pay_fen, quoted.acct_mulaid_pay_fen)
            assert s.acct_pay_fen <= before[0] and s.acct_mulaid_pay_fen <= before[1]
            assert (await api.balance(person), await api.balance(authorizer)) == (
                before[0] - s.acct_pay_fen,
                before[1] - s.acct_mulaid_pay_fen,
            )
            if not account:
                assert s.own_parts.wholly_self_paid_fen == s.mutual_aid_parts.wholly_self_paid_fen == 0
                assert s.cash_parts.wholly_self_paid_fen == wholly
            if not mutual_aid:
                assert s.mutual_aid_parts.wholly_self_paid_fen == 0
            assert s.psn_cash_pay_fen >= (0 if account else wholly)
            assert (
                s.own_parts.wholly_self_paid_fen
                + s.mutual_aid_parts.wholly_self_paid_fen
                + (s.cash_parts.wholly_self_paid_fen)
                == wholly
            )
            # The resident has no account of their own: nothing is ever taken from one.
            if person == resident:
                assert (s.acct_pay_fen, s.balc_fen) == (0, 0)
