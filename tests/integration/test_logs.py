"""One JSON line per RPC, with what an SRE needs and no ID number in it."""

from __future__ import annotations

import io
import json
import uuid

import grpc
from support import INSTITUTION_A, Api, bearer, refused

from gongji.v1 import account_pb2, settlement_pb2

S = grpc.StatusCode


def _rpc_lines(log: io.StringIO, since: int) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.getvalue()[since:].splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "gongji.rpc"]


async def test_one_line_per_rpc_with_no_id_number(api: Api, captured_log: io.StringIO) -> None:
    since = len(captured_log.getvalue())
    authorizer = await api.enroll(balance_fen=1_000)
    patient = await api.enroll(balance_fen=100)
    await api.grant(authorizer, patient)
    request_id = f"log-{uuid.uuid4()}"
    await api.settle(patient, 300, request_id=request_id)
    await refused(
        api.settle(patient, 100, voucher=await api.voucher(authorizer)), S.PERMISSION_DENIED, "VOUCHER_PATIENT_MISMATCH"
    )
    # A malformed ID number in a request, and an ID number used as a request id: neither is logged.
    mistyped = patient[:-1] + ("0" if patient[-1] != "0" else "1")
    bad = settlement_pb2.SettleRequest(request_id=patient, voucher="x", patient_id=mistyped, amount_fen=1)
    await refused(
        api.settlement.Settle(bad, metadata=bearer(api.tokens.terminal_a)), S.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    await refused(
        api.account.GetAccount(account_pb2.GetAccountRequest(person_id=patient)),
        S.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    )

    lines = _rpc_lines(captured_log, since)
    text = captured_log.getvalue()[since:]
    for person in (authorizer, patient, mistyped):
        assert person not in text
    assert all(
        {"method", "code", "reason", "duration_ms", "institution", "request_id"} <= line.keys() for line in lines
    )
    settles = [line for line in lines if line["method"] == "/gongji.v1.SettlementService/Settle"]
    assert [(s["code"], s["reason"]) for s in settles] == [
        ("OK", ""),
        ("PERMISSION_DENIED", "VOUCHER_PATIENT_MISMATCH"),
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ]
    assert settles[0]["request_id"] == request_id
    assert settles[0]["institution"] == INSTITUTION_A
    assert settles[2]["request_id"] != patient, "an ID number used as a request id is masked"
    unauthenticated = [line for line in lines if line["code"] == "UNAUTHENTICATED"]
    assert len(unauthenticated) == 1
    assert unauthenticated[0]["institution"] is None
    # Enroll and Credit twice, Grant, IssueVoucher and Settle twice, the malformed Settle, GetAccount.
    assert len(lines) == 11, [line["method"] for line in lines]
