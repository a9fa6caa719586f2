"""Enrolment, credits, grants and vouchers through gRPC, with a clear refusal for each rule."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import grpc
import pytest
from support import (
    CHILD,
    PARENT,
    RESIDENT,
    SPOUSE,
    SUSPENDED,
    TERMINATED,
    Api,
    bearer,
    field_violations,
    new_person_id,
    refused,
)

from gongji.v1 import account_pb2, family_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode


async def test_enroll_creates_then_updates(api: Api) -> None:
    person_id = new_person_id()
    request = account_pb2.EnrollRequest(
        person_id=person_id,
        name="王五",
        birth_date="1979-02-28",
        region_code="610100",
        scheme=types_pb2.SCHEME_EMPLOYEE,
        status=types_pb2.PERSON_STATUS_ACTIVE,
    )
    first = await api.account.Enroll(request, metadata=bearer(api.tokens.operator))
    again = await api.account.Enroll(request, metadata=bearer(api.tokens.operator))
    assert first.created
    assert not again.created
    assert first.account.has_personal_account
    assert first.account.balance_fen == 0


async def test_enroll_names_every_bad_field(api: Api) -> None:
    error = await refused(
        api.account.Enroll(
            account_pb2.EnrollRequest(person_id="x", name="", birth_date="1990-13-01", region_code="61"),
            metadata=bearer(api.tokens.operator),
        ),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert set(field_violations(error)) == {"person_id", "name", "birth_date", "region_code", "scheme", "status"}


async def test_credit_is_idempotent(api: Api) -> None:
    person = await api.enroll()
    first = await api.credit(person, 12_345, request_id="credit-once-1")
    again = await api.credit(person, 12_345, request_id="credit-once-1")
    assert (first.balance_fen, first.replayed) == (12_345, False)
    assert again.replayed
    assert again.credit_id == first.credit_id
    assert await api.balance(person) == 12_345
    await api.credit(person, 55)
    late = await api.credit(person, 12_345, request_id="credit-once-1")
    assert (late.replayed, late.balance_fen) == (True, 12_345), "a replay answers as the original did"
    assert await api.balance(person) == 12_400
    await refused(api.credit(person, 1, request_id="credit-once-1"), S.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


async def test_credit_refusals(api: Api) -> None:
    resident = await api.enroll(scheme=RESIDENT)
    await refused(api.credit(resident, 100), S.FAILED_PRECONDITION, "NOT_EMPLOYEE_INSURED")
    await refused(api.credit(new_person_id(), 100), S.NOT_FOUND, "PERSON_NOT_FOUND")
    await refused(api.credit(resident, 0), S.INVALID_ARGUMENT, "INVALID_AMOUNT")


async def test_grant_is_idempotent_and_revocable_by_either_side(api: Api) -> None:
    a = await api.enroll(balance_fen=1_000)
    b = await api.enroll()
    first = await api.grant(a, b)
    again = await api.grant(a, b)
    assert not first.already_granted
    assert again.already_granted
    assert again.grant.grant_id == first.grant.grant_id
    revoked = await api.revoke(a, b, requester_id=b)
    assert revoked.grant.status == types_pb2.GRANT_STATUS_REVOKED
    assert revoked.grant.end_reason == "REVOKED_BY_BENEFICIARY"
    await refused(api.revoke(a, b), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    # After the grant ends, b settles with their own account and cash only.
    s = (await api.settle(b, 500)).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (0, 0, 500)
    await refused(api.revoke(a, b, requester_id=await api.enroll()), S.PERMISSION_DENIED, "NOT_ALLOWED")


async def test_grant_eligibility_refusals(api: Api) -> None:
    employee = await api.enroll(birth=dt.date(1960, 1, 1))
    resident = await api.enroll(scheme=RESIDENT)
    suspended = await api.enroll(status=SUSPENDED)
    terminated = await api.enroll(status=TERMINATED)
    guangzhou = await api.enroll(region="440100")
    await refused(api.grant(resident, employee), S.FAILED_PRECONDITION, "NOT_EMPLOYEE_INSURED")
    await refused(api.grant(suspended, resident), S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    await refused(api.grant(employee, suspended), S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    await refused(api.grant(employee, terminated), S.FAILED_PRECONDITION, "BENEFICIARY_NOT_INSURED")
    await refused(api.grant(employee, new_person_id()), S.FAILED_PRECONDITION, "BENEFICIARY_NOT_INSURED")
    await refused(api.grant(new_person_id(), employee), S.NOT_FOUND, "PERSON_NOT_FOUND")
    await refused(api.grant(employee, guangzhou), S.FAILED_PRECONDITION, "REGION_OUT_OF_SCOPE")
    for relationship in (
        types_pb2.RELATIONSHIP_PARENT_IN_LAW,
        types_pb2.RELATIONSHIP_OTHER,
    ):
        await refused(api.grant(employee, resident, relationship), S.FAILED_PRECONDITION, "RELATIONSHIP_NOT_ALLOWED")
    await refused(api.grant(employee, resident, PARENT), S.FAILED_PRECONDITION, "RELATIONSHIP_IMPLAUSIBLE")
    await refused(api.grant(employee, resident, 0), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    await refused(api.grant(employee, resident, 99), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    await refused(api.grant(employee, employee), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert (await api.grant(employee, resident, CHILD)).grant.status == types_pb2.GRANT_STATUS_LIVE


async def test_status_change_ends_grants_and_settlement_stops_using_them(api: Api, pool: asyncpg.Pool) -> None:
    authorizer = await api.enroll(balance_fen=1_000)
    patient = await api.enroll(scheme=RESIDENT)
    await api.grant(authorizer, patient, SPOUSE)
    reply = await api.set_status(authorizer, SUSPENDED)
    assert reply.grants_ended == 1
    row = await pool.fetchrow(
        "select status, end_reason, ended_at from mutual_aid_grant where authorizer_id = $1", authorizer
    )
    assert (row["status"], row["end_reason"]) == ("ENDED", "PERSON_NOT_ACTIVE")
    assert row["ended_at"] is not None
    s = (await api.settle(patient, 300)).settlement
    assert (s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (0, 300)
    assert await api.balance(authorizer) == 1_000


async def test_moving_out_of_the_province_ends_grants(api: Api) -> None:
    authorizer = await api.enroll(balance_fen=1_000)
    patient = await api.enroll()
    await api.grant(authorizer, patient)
    reply = await api.set_status(patient, types_pb2.PERSON_STATUS_ACTIVE, region="440100")
    assert reply.grants_ended == 1


async def test_voucher_for_someone_else_needs_a_binding(api: Api) -> None:
    holder = await api.enroll()
    member = await api.enroll()
    await refused(
        api.family.IssueVoucher(
            family_pb2.IssueVoucherRequest(person_id=member, requester_id=holder), metadata=bearer(api.tokens.app)
        ),
        S.PERMISSION_DENIED,
        "NOT_ALLOWED",
    )
    await refused(api.voucher(new_person_id()), S.NOT_FOUND, "PERSON_NOT_FOUND")
    await refused(api.voucher(await api.enroll(status=SUSPENDED)), S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    await refused(api.voucher(member, ttl_seconds=10_000), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")


async def test_voucher_token_carries_no_personal_data(api: Api, pool: asyncpg.Pool) -> None:
    person = await api.enroll()
    token = await api.voucher(person)
    assert person not in token
    assert person[-6:] not in token
    # Issuing writes nothing: the token is the voucher (gongji.domain.vouchers).
    assert await pool.fetchval("select count(*) from voucher") == 0


async def test_grant_racing_revoke_always_answers_cleanly(api: Api) -> None:
    """Grant and Revoke on one pair, interleaved: every answer is a grant or GRANT_NOT_FOUND."""
    a = await api.enroll()
    b = await api.enroll()

    async def revoke() -> str:
        try:
            await api.revoke(a, b)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}:{exc.details()}"
        return "OK"

    for _ in range(40):  # bounded: 40 rounds of 3 grants racing 3 revokes
        results = await asyncio.gather(*(api.grant(a, b) for _ in range(3)), *(revoke() for _ in range(3)))
        grants, revokes = results[:3], results[3:]
        assert all(g.grant.authorizer_id == a for g in grants)
        assert set(revokes) <= {"OK", "FAILED_PRECONDITION:there is no live grant between these two people"}
