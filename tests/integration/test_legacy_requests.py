"""A POS that sends exactly what it sent before issue 17 gets exactly the answers it got: requests built
with only the fields of that contract, and every field of the answers that contract had compared whole
(the fields added since are checked apart, at their neutral values: a bill sent as its amount is read
as all within the policy scope, and its split is today's). Real server, real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from google.protobuf import json_format
from support import RESIDENT, Api, bearer

from gongji.v1 import settlement_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")

# The fields of a Settlement before issue 17; what is not here is newer.
LEGACY_SETTLEMENT = (
    "settlement_id",
    "request_id",
    "institution_id",
    "patient_id",
    "authorizer_id",
    "amount_fen",
    "acct_pay_fen",
    "acct_mulaid_pay_fen",
    "psn_cash_pay_fen",
    "balc_fen",
    "refunded_fen",
    "created_at",
    "terminal_id",
    "refunds",
    "reversed_at",
    "mutual_aid_limited_by",
)
LEGACY_REFUND = (
    "refund_id",
    "request_id",
    "settlement_id",
    "kind",
    "amount_fen",
    "acct_pay_fen",
    "acct_mulaid_pay_fen",
    "psn_cash_pay_fen",
    "created_at",
)


def _legacy(s: types_pb2.Settlement) -> dict[str, Any]:
    """The settlement's legacy fields, as a dict (defaults included); its refunds' too."""
    d = json_format.MessageToDict(s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    legacy = {k: d[k] for k in LEGACY_SETTLEMENT if k in d}
    legacy["refunds"] = [{k: r.get(k) for k in LEGACY_REFUND} for r in d.get("refunds", [])]
    return legacy


def _neutral(s: types_pb2.Settlement, patient_region: str) -> None:
    """What the fields added since answer for a legacy request at a local institution."""
    assert s.certificate_type == types_pb2.CERTIFICATE_TYPE_E_VOUCHER
    assert (s.insured_region, s.care_region, s.care_scope) == (patient_region, "610100", types_pb2.CARE_SCOPE_LOCAL)
    assert s.psn_acct_pay_fen == s.acct_pay_fen + s.acct_mulaid_pay_fen
    # The bill read as its amount, all of it within the policy scope, each source's share in that part.
    assert (s.bill_reading, s.med_type) == (types_pb2.BILL_READING_AMOUNT, types_pb2.MED_TYPE_UNSPECIFIED)
    assert s.bill == types_pb2.BillParts(in_scope_fen=s.amount_fen)
    assert (s.own_parts, s.mutual_aid_parts, s.cash_parts) == (
        types_pb2.BillParts(in_scope_fen=s.acct_pay_fen),
        types_pb2.BillParts(in_scope_fen=s.acct_mulaid_pay_fen),
        types_pb2.BillParts(in_scope_fen=s.psn_cash_pay_fen),
    )
    assert s.insutype in (types_pb2.INSUTYPE_EMPLOYEE_BASIC, types_pb2.INSUTYPE_RESIDENT_BASIC)


def _settle_request(voucher: str, patient: str, amount: int, **legacy: Any) -> settlement_pb2.SettleRequest:
    return settlement_pb2.SettleRequest(
        request_id=f"legacy-{uuid.uuid4()}", voucher=voucher, patient_id=patient, amount_fen=amount, **legacy
    )


async def test_todays_requests_get_todays_answers(api: Api) -> None:
    authorizer = await api.enroll(balance_fen=10_000, birth=dt.date(1980, 1, 1))
    spouse = await api.enroll(balance_fen=300, birth=dt.date(1982, 1, 1))
    child = await api.enroll(scheme=RESIDENT, birth=dt.date(2012, 1, 1))
    await api.grant(authorizer, spouse)
    await api.grant(authorizer, child, types_pb2.RELATIONSHIP_CHILD)
    terminal = bearer(api.tokens.terminal_a)
    calls = api.settlement

    quote = await calls.Quote(
        settlement_pb2.QuoteRequest(voucher=await api.voucher(spouse), patient_id=spouse, amount_fen=1_000),
        metadata=terminal,
    )
    assert (quote.acct_pay_fen, quote.acct_mulaid_pay_fen, quote.psn_cash_pay_fen) == (300, 700, 0)
    assert (quote.authorizer_id, quote.balc_fen, quote.amount_fen) == (authorizer, 0, 1_000)
    assert quote.mutual_aid_limited_by == types_pb2.MUTUAL_AID_LIMIT_UNSPECIFIED
    assert not quote.HasField("grant_cap_left_fen") and not quote.HasField("beneficiary_cap_left_fen")
    assert (quote.bill_reading, quote.bill) == (types_pb2.BILL_READING_AMOUNT, types_pb2.BillParts(in_scope_fen=1_000))
    assert (quote.own_parts.in_scope_fen, quote.mutual_aid_parts.in_scope_fen) == (300, 700)

    # Own account, then mutual aid; then a resident child on mutual aid alone; then cash only; then a
    # named authorizer; each answer whole.
    expected = [
        (spouse, 1_000, {}, (300, 700, 0, 0, authorizer)),
        (child, 2_000, {}, (0, 2_000, 0, 0, authorizer)),
        (spouse, 500, {"use_personal_account": False}, (0, 0, 500, 0, "")),
        (child, 100, {"authorizer_id": authorizer}, (0, 100, 0, 0, authorizer)),
    ]
    settled = []
    for patient, amount, legacy, (own, mulaid, cash, balc, paid_by) in expected:
        request = _settle_request(await api.voucher(patient), patient, amount, **legacy)
        reply = await calls.Settle(request, metadata=terminal)
        s = reply.settlement
        assert not reply.replayed
        assert _legacy(s) == {
            "settlement_id": s.settlement_id,
            "request_id": request.request_id,
            "institution_id": "H61010300101",
            "patient_id": patient,
            "authorizer_id": paid_by,
            "amount_fen": str(amount),
            "acct_pay_fen": str(own),
            "acct_mulaid_pay_fen": str(mulaid),
            "psn_cash_pay_fen": str(cash),
            "balc_fen": str(balc),
            "refunded_fen": "0",
            "created_at": json_format.MessageToDict(s)["createdAt"],
            "terminal_id": s.terminal_id,
            "refunds": [],
            "mutual_aid_limited_by": "MUTUAL_AID_LIMIT_UNSPECIFIED",
        }
        _neutral(s, "610100")
        # The retry with a rescanned code replays the same answer.
        request.voucher = await api.voucher(patient)
        again = await calls.Settle(request, metadata=terminal)
        assert again.replayed and _legacy(again.settlement) == _legacy(s)
        settled.append((request, s))
    assert await api.balance(authorizer) == 10_000 - 700 - 2_000 - 100

    # A partial refund comes back last-drawn first (mutual aid before own); the rest, then a reversal.
    first_request, first = settled[0]
    refund = await calls.Cancel(
        settlement_pb2.CancelRequest(request_id="legacy-cancel-1", settlement_id=first.settlement_id, amount_fen=800),
        metadata=terminal,
    )
    assert (refund.refund.acct_pay_fen, refund.refund.acct_mulaid_pay_fen, refund.refund.psn_cash_pay_fen) == (
        100,
        700,
        0,
    )
    assert (refund.refund.kind, refund.settlement.refunded_fen, refund.replayed) == ("CANCEL", 800, False)
    reversed_ = await calls.Reverse(
        settlement_pb2.ReverseRequest(original_request_id=first_request.request_id), metadata=terminal
    )
    assert reversed_.undone
    assert _legacy(reversed_.settlement)["refunded_fen"] == "1000"
    assert [r["kind"] for r in _legacy(reversed_.settlement)["refunds"]] == ["CANCEL", "REVERSAL"]
    assert (await api.balance(spouse), await api.balance(authorizer)) == (300, 10_000 - 2_000 - 100)
    got = await calls.GetSettlement(
        settlement_pb2.GetSettlementRequest(request_id=first_request.request_id), metadata=terminal
    )
    assert _legacy(got.settlement) == _legacy(reversed_.settlement)
