"""Kinship-account binding (亲情账户) through gRPC: who may show whose e-voucher. It moves no money."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import grpc
import pytest
from support import EMPLOYEE, RESIDENT, SUSPENDED, Api, bearer, field_violations, new_person_id, refused

from gongji.api.validate import china_today
from gongji.v1 import family_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
PARENT_BORN = dt.date(1960, 1, 1)


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


async def test_bind_show_voucher_and_list(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN, name="王小明")
    child = await api.enroll(scheme=RESIDENT, birth=dt.date(2019, 9, 8), name="王小宝")
    binding = (await api.bind(holder, child, face_verification_ref="")).binding
    assert binding.active
    assert binding.member_id == child
    assert binding.member_id_masked == child[:4] + "*" * 10 + child[-4:]
    assert binding.member_name_masked == "王*宝"

    family = await api.list_family(holder)
    assert (family.bound_member_count, family.bound_member_limit) == (1, 5)
    assert [b.member_id_masked for b in family.bound_members] == [binding.member_id_masked]

    reply = await api.family.IssueVoucher(
        family_pb2.IssueVoucherRequest(person_id=child, requester_id=holder), metadata=bearer(api.tokens.app)
    )
    assert (reply.person_id, reply.requester_id) == (child, holder)  # the voucher names the member
    s = (await api.settle(child, 300, voucher=reply.voucher)).settlement
    assert (s.patient_id, s.psn_cash_pay_fen) == (child, 300)
    # The holder's own voucher still cannot pay for the member (real-name rule).
    await refused(
        api.settle(child, 300, voucher=await api.voucher(holder)), S.PERMISSION_DENIED, "VOUCHER_PATIENT_MISMATCH"
    )


async def test_binding_moves_no_money(api: Api) -> None:
    """A bound member without a grant settles with their own account and cash only."""
    holder = await api.enroll(balance_fen=100_000, birth=PARENT_BORN)
    member = await api.enroll(balance_fen=100, birth=dt.date(1990, 1, 1))
    await api.bind(holder, member)
    voucher = await api.voucher(member, requester_id=holder)
    s = (await api.settle(member, 500, voucher=voucher)).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.authorizer_id) == (100, 0, 400, "")
    assert await api.balance(holder) == 100_000


async def test_identity_must_match_the_enrolment_record(api: Api, pool: asyncpg.Pool) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    member = await api.enroll(birth=dt.date(2015, 5, 5), name="李四")
    other = new_person_id(dt.date(2015, 5, 5))
    for overrides in (
        {"member_name": "李五"},
        {"birth_date": "2015-05-06"},
        {"document_number": other},
        {"document_type": types_pb2.DOCUMENT_TYPE_PASSPORT},
    ):
        await refused(api.bind(holder, member, **overrides), S.FAILED_PRECONDITION, "IDENTITY_MISMATCH")
    assert await pool.fetchval("select count(*) from kinship_binding where holder_id = $1", holder) == 0
    # A member enrolled with a passport is bound with that passport.
    foreigner = await api.enroll(
        birth=dt.date(2012, 1, 1),
        name="ANNA",
        document_type=types_pb2.DOCUMENT_TYPE_PASSPORT,
        document_number="E12345678",
    )
    await refused(api.bind(holder, foreigner), S.FAILED_PRECONDITION, "IDENTITY_MISMATCH")
    passport = {"document_type": types_pb2.DOCUMENT_TYPE_PASSPORT, "document_number": "e12345678"}
    assert (await api.bind(holder, foreigner, **passport)).binding.active


async def test_refusals_of_bind(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    member = await api.enroll(birth=dt.date(2015, 5, 5))
    error = await refused(api.bind(holder, holder), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["member_id"]
    error = await refused(api.bind(holder, member, phone="call me"), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["phone"]
    ghost = new_person_id()
    api.people[ghost] = ("幽灵", dt.date(2000, 1, 1))
    await refused(api.bind(holder, ghost), S.NOT_FOUND, "PERSON_NOT_FOUND")
    suspended = await api.enroll(birth=PARENT_BORN, status=SUSPENDED)
    await refused(api.bind(suspended, member), S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")


async def test_at_most_five_members_and_binding_twice_is_idempotent(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    members = [await api.enroll(birth=dt.date(2010 + i, 1, 1)) for i in range(6)]
    first = [(await api.bind(holder, m)).binding.binding_id for m in members[:5]]
    again = await api.bind(holder, members[0])
    assert again.binding.binding_id == first[0]
    await refused(api.bind(holder, members[5]), S.RESOURCE_EXHAUSTED, "FAMILY_LIMIT_REACHED")
    assert (await api.list_family(holder)).bound_member_count == 5
    await api.unbind(holder, members[1])
    assert (await api.bind(holder, members[5])).binding.active


async def test_concurrent_binds_cannot_pass_the_limit(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    members = [await api.enroll(birth=dt.date(2010, 1, 1 + i)) for i in range(8)]
    results = await asyncio.gather(*(api.bind(holder, m) for m in members), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 5
    assert len(refusals) == 3
    assert all(r.code() == S.RESOURCE_EXHAUSTED for r in refusals)
    assert (await api.list_family(holder)).bound_member_count == 5


async def test_face_verification_for_members_over_16(api: Api) -> None:
    """Older than 16 on the day of binding (China's calendar day; a birthday today counts)."""
    today = china_today()
    holder = await api.enroll(birth=PARENT_BORN)
    seventeen_today = await api.enroll(birth=_years_before(today, 17))
    sixteen_today = await api.enroll(birth=_years_before(today, 16))
    seventeen_tomorrow = await api.enroll(birth=_years_before(today, 17) + dt.timedelta(days=1))
    await refused(
        api.bind(holder, seventeen_today, face_verification_ref=""), S.FAILED_PRECONDITION, "FACE_VERIFICATION_REQUIRED"
    )
    assert (await api.bind(holder, seventeen_today, face_verification_ref="face-20261122-0001")).binding.active
    assert (await api.bind(holder, sixteen_today, face_verification_ref="")).binding.active
    assert (await api.bind(holder, seventeen_tomorrow, face_verification_ref="")).binding.active


async def test_unbind_ends_showing_the_members_voucher(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    member = await api.enroll(balance_fen=1_000, birth=dt.date(2012, 1, 1))
    await api.bind(holder, member)
    issued_before = await api.voucher(member, requester_id=holder)
    ended = (await api.unbind(holder, member)).binding
    assert not ended.active
    assert ended.HasField("ended_at")
    await refused(api.voucher(member, requester_id=holder), S.PERMISSION_DENIED, "NOT_ALLOWED")
    await refused(api.settle(member, 100, voucher=issued_before), S.FAILED_PRECONDITION, "VOUCHER_INVALID")
    again = (await api.unbind(holder, member)).binding  # unbinding is always allowed, and idempotent
    assert again.binding_id == ended.binding_id
    await refused(api.unbind(holder, await api.enroll()), S.NOT_FOUND, "BINDING_NOT_FOUND")
    # The member's own voucher is untouched.
    assert (await api.settle(member, 100)).settlement.acct_pay_fen == 100
    family = await api.list_family(holder)
    assert family.bound_member_count == 0
    assert [b.active for b in family.bound_members] == [False]


async def test_list_family_shows_grants_in_settlement_order(api: Api) -> None:
    mother = await api.enroll(balance_fen=1_000, birth=PARENT_BORN)
    father = await api.enroll(balance_fen=1_000, birth=PARENT_BORN)
    aunt = await api.enroll(balance_fen=1_000, birth=PARENT_BORN)
    child = await api.enroll(scheme=RESIDENT, birth=dt.date(2016, 1, 1))
    await api.grant(mother, child, types_pb2.RELATIONSHIP_CHILD)
    await api.grant(father, child, types_pb2.RELATIONSHIP_CHILD)
    await api.grant(aunt, child, types_pb2.RELATIONSHIP_CHILD)
    await api.revoke(aunt, child, requester_id=child)
    held = (await api.list_family(child)).grants_held
    assert [(g.authorizer_id, g.settlement_order) for g in held] == [(mother, 1), (father, 2), (aunt, 0)]
    assert held[2].status == types_pb2.GRANT_STATUS_REVOKED
    assert held[2].end_reason == "REVOKED_BY_BENEFICIARY"
    assert held[2].HasField("ended_at")
    assert held[0].authorizer_id_masked == mother[:4] + "*" * 10 + mother[-4:]
    # The order ListFamily shows is the one settlement uses.
    assert (await api.settle(child, 100)).settlement.authorizer_id == mother
    given = (await api.list_family(mother)).grants_given
    assert [(g.beneficiary_id, g.status) for g in given] == [(child, types_pb2.GRANT_STATUS_LIVE)]


async def test_a_holder_may_also_be_a_granting_parent(api: Api) -> None:
    """Binding and granting are independent: with both, the bound child's voucher draws on the grant."""
    parent = await api.enroll(balance_fen=2_000, birth=PARENT_BORN, scheme=EMPLOYEE)
    child = await api.enroll(scheme=RESIDENT, birth=dt.date(2018, 3, 3))
    await api.bind(parent, child, relationship=types_pb2.RELATIONSHIP_CHILD)
    await api.grant(parent, child, types_pb2.RELATIONSHIP_CHILD)
    voucher = await api.voucher(child, requester_id=parent)
    s = (await api.settle(child, 500, voucher=voucher, request_id=f"kin-{uuid.uuid4()}")).settlement
    assert (s.acct_mulaid_pay_fen, s.authorizer_id) == (500, parent)


async def test_names_compare_as_people_write_them(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    uyghur = await api.enroll(birth=dt.date(2014, 4, 4), name="阿依古丽·买买提")
    foreign = await api.enroll(
        birth=dt.date(2013, 3, 3),
        name="Anna Smith",
        document_type=types_pb2.DOCUMENT_TYPE_PASSPORT,
        document_number="E7654321",
    )
    assert (await api.bind(holder, uyghur, member_name="阿依古丽•买买提")).binding.active
    passport = {"document_type": types_pb2.DOCUMENT_TYPE_PASSPORT, "document_number": "E7654321"}
    assert (await api.bind(holder, foreign, member_name=" ＡＮＮＡ  smith ", **passport)).binding.active


async def test_a_status_update_keeps_the_document_on_record(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    member = await api.enroll(
        birth=dt.date(2011, 1, 1), name="ANNA", document_type=types_pb2.DOCUMENT_TYPE_PASSPORT, document_number="E1"
    )
    await api.set_status(member, types_pb2.PERSON_STATUS_ACTIVE, scheme=RESIDENT)  # no document in the request
    passport = {"document_type": types_pb2.DOCUMENT_TYPE_PASSPORT, "document_number": "E1"}
    assert (await api.bind(holder, member, **passport)).binding.active


async def test_blank_face_verification_is_no_verification(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    adult = await api.enroll(birth=dt.date(1990, 1, 1))
    error = await refused(api.bind(holder, adult, face_verification_ref="   "), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["face_verification_ref"]


async def test_binding_again_does_not_revive_old_vouchers(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    member = await api.enroll(balance_fen=1_000, birth=dt.date(2012, 1, 1))
    await api.bind(holder, member)
    before = await api.voucher(member, requester_id=holder)
    await api.unbind(holder, member)
    await api.bind(holder, member)
    await refused(api.settle(member, 100, voucher=before), S.FAILED_PRECONDITION, "VOUCHER_INVALID")
    assert (await api.settle(member, 100, voucher=await api.voucher(member, requester_id=holder))).settlement


async def test_terminated_members_and_suspended_holders(api: Api) -> None:
    holder = await api.enroll(birth=PARENT_BORN)
    gone = await api.enroll(birth=dt.date(2012, 1, 1), status=types_pb2.PERSON_STATUS_TERMINATED)
    await refused(api.bind(holder, gone), S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    member = await api.enroll(birth=dt.date(2012, 1, 1))
    await api.bind(holder, member)
    await api.set_status(holder, SUSPENDED)
    await refused(api.voucher(member, requester_id=holder), S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
