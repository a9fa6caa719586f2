"""The patient's choice of grant travels with the e-voucher (the platform's 2207 has no authorizer
field: the patient picks the family member in the app before the code is shown). Real server, real
PostgreSQL."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from support import RESIDENT, Api, bearer, field_violations, refused

from gongji.v1 import family_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode


async def _family(api: Api) -> tuple[str, str, str]:
    """A resident patient with two grants: from `older` (the default pick) and from `picked`."""
    patient = await api.enroll(scheme=RESIDENT)
    older = await api.enroll(balance_fen=10_000)
    picked = await api.enroll(balance_fen=10_000)
    await api.grant(older, patient)
    await api.grant(picked, patient)
    return patient, older, picked


async def test_the_voucher_carries_the_patients_pick(api: Api) -> None:
    patient, older, picked = await _family(api)
    # Without a pick the oldest live grant pays, as always.
    s = (await api.settle(patient, 100)).settlement
    assert (s.authorizer_id, s.acct_mulaid_pay_fen) == (older, 100)
    # With one, the picked member's grant pays, whether the terminal repeats the choice or says nothing.
    s = (await api.settle(patient, 200, voucher=await api.voucher(patient, authorizer_id=picked))).settlement
    assert (s.authorizer_id, s.acct_mulaid_pay_fen) == (picked, 200)
    voucher = await api.voucher(patient, authorizer_id=picked)
    s = (await api.settle(patient, 300, voucher=voucher, authorizer_id=picked)).settlement
    assert s.authorizer_id == picked
    q = await api.quote(patient, 400, voucher=await api.voucher(patient, authorizer_id=picked))
    assert (q.authorizer_id, q.acct_mulaid_pay_fen) == (picked, 400)
    assert (await api.balance(older), await api.balance(picked)) == (9_900, 9_500)


async def test_a_voucher_without_a_pick_leaves_the_choice_to_the_terminal(api: Api) -> None:
    patient, _older, picked = await _family(api)
    voucher = await api.voucher(patient)
    assert voucher.startswith("GJ2.")  # the format a server of the release before reads too
    s = (await api.settle(patient, 100, voucher=voucher, authorizer_id=picked)).settlement
    assert s.authorizer_id == picked


async def test_a_terminal_naming_another_authorizer_is_refused(api: Api, pool: asyncpg.Pool) -> None:
    patient, older, picked = await _family(api)
    voucher = await api.voucher(patient, authorizer_id=picked)
    assert voucher.startswith("GJ3.")
    await refused(
        api.settle(patient, 100, voucher=voucher, authorizer_id=older),
        S.FAILED_PRECONDITION,
        "VOUCHER_AUTHORIZER_MISMATCH",
    )
    await refused(
        api.quote(patient, 100, voucher=voucher, authorizer_id=older),
        S.FAILED_PRECONDITION,
        "VOUCHER_AUTHORIZER_MISMATCH",
    )
    # Refused and written nothing: the voucher is still unused and settles with the patient's pick.
    assert await pool.fetchval("select count(*) from settlement where patient_id = $1", patient) == 0
    s = (await api.settle(patient, 100, voucher=voucher)).settlement
    assert s.authorizer_id == picked


async def test_a_picked_grant_ended_since_is_not_replaced_by_another(api: Api) -> None:
    """The patient chose whose money pays: when that grant ends before the settlement, the settlement
    is refused, not drawn on someone the patient did not pick."""
    patient, older, picked = await _family(api)
    voucher = await api.voucher(patient, authorizer_id=picked)
    await api.revoke(picked, patient)
    await refused(api.settle(patient, 100, voucher=voucher), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    # Paying in cash only draws on no grant, so the pick does not matter.
    s = (await api.settle(patient, 100, voucher=voucher, use_personal_account=False)).settlement
    assert (s.authorizer_id, s.psn_cash_pay_fen) == ("", 100)
    assert await api.balance(older) == 10_000


async def test_issuing_a_pick_needs_a_live_grant(api: Api) -> None:
    patient, older, picked = await _family(api)
    stranger = await api.enroll(balance_fen=100)
    await refused(api.voucher(patient, authorizer_id=stranger), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    await api.revoke(older, patient)
    await refused(api.voucher(patient, authorizer_id=older), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    error = await refused(api.voucher(patient, authorizer_id=patient), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["authorizer_id"]
    error = await refused(api.voucher(patient, authorizer_id="not-an-id"), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["authorizer_id"]
    reply = await api.family.IssueVoucher(
        family_pb2.IssueVoucherRequest(person_id=patient, requester_id=patient, authorizer_id=picked),
        metadata=bearer(api.tokens.app),
    )
    assert reply.authorizer_id == picked
