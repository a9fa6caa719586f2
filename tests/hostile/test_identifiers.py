"""Identifiers are ASCII where the contract says so, everywhere.

Every identifier field of every RPC is fed a value that would be valid in ASCII, written instead in
full-width characters (`Ｈ６１`) and in look-alikes from other scripts (Cyrillic `А`, Arabic-Indic
digits): each is refused with INVALID_ARGUMENT naming that field (an e-voucher with VOUCHER_INVALID),
and nothing is written. Python's `str.isalnum()`, `\\d` and `int()` accept such characters, so a check
built on them lets a look-alike through, or finds a real row under a forged spelling. An operator
asking to reconcile an institution that does not exist gets NOT_FOUND, not a day of zeros.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from harness import fingerprint, reason_of
from support import INSTITUTION_A, Api, bearer, field_violations, new_person_id

from gongji.v1 import account_pb2, family_pb2, settlement_pb2

S = grpc.StatusCode

# Look-alikes: Cyrillic capitals and small letters that render as Latin ones, and Arabic-Indic digits.
_LOOK_ALIKE = str.maketrans(
    "ABCEHKMOPTXaceopx0123456789",
    "АВСЕНКМОРТХасеорх٠١٢٣٤٥٦٧٨٩",
)


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def look_alike(text: str) -> str:
    return text.translate(_LOOK_ALIKE)


PERSON = new_person_id(dt.date(1980, 3, 4))
OTHER = new_person_id(dt.date(2010, 5, 6))
VOUCHER = "gv1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
# Digits only: int(), which uuid.UUID parses with, takes full-width and Arabic-Indic digits.
SETTLEMENT_ID = "12345678-1234-4123-8123-123456789012"

BIND = {
    "holderId": PERSON,
    "memberId": OTHER,
    "relationship": "RELATIONSHIP_CHILD",
    "memberName": "王小宝",
    "birthDate": "2010-05-06",
    "phone": "13800138000",
    "reason": "代孩子出示医保码",
    "documentType": "DOCUMENT_TYPE_PASSPORT",
    "documentNumber": "E12345678",
    "faceVerificationRef": "FV-2026-0001",
}
ENROLL = {
    "personId": PERSON,
    "name": "王大明",
    "birthDate": "1980-03-04",
    "regionCode": "610100",
    "scheme": "SCHEME_EMPLOYEE",
    "status": "PERSON_STATUS_ACTIVE",
}

POLICY = {"regionKey": "61", "scope": "GRANT_SCOPE_PROVINCE", "allowedRelationships": ["RELATIONSHIP_SPOUSE"]}
PAY = {"payerId": PERSON, "beneficiaryId": OTHER}
RATE = {"regionKey": "61", "year": 2027, "amountFen": 40000, "opensOn": "2026-09-01", "closesOn": "2026-12-31"}
RATE_FIELDS = ("region_key", "opens_on", "closes_on")
REPORT = {"fromDate": "2026-01-05", "toDate": "2026-01-06", "regionKey": "610100"}


# (service, method, credential, request fields as JSON, the identifier field to forge)
# A social-security card read at the counter (certificate_type 3): its number and its serial.
CARD = {"certificateType": 3, "cardNumber": PERSON, "cardSerial": "A1B2C3"}

CASES: list[tuple[str, str, str, dict[str, Any], str]] = (
    [
        (
            "settlement",
            "Quote",
            "terminal_a",
            {"voucher": VOUCHER, "patientId": PERSON, "amountFen": 100},
            "patient_id",
        ),
        (
            "settlement",
            "Quote",
            "terminal_a",
            {"voucher": VOUCHER, "patientId": PERSON, "amountFen": 100, "authorizerId": OTHER},
            "authorizer_id",
        ),
        ("settlement", "Quote", "terminal_a", {"voucher": VOUCHER, "patientId": PERSON, "amountFen": 100}, "voucher"),
        (
            "settlement",
            "Settle",
            "terminal_a",
            {"requestId": "id-0001", "voucher": VOUCHER, "patientId": PERSON, "amountFen": 100},
            "request_id",
        ),
        (
            "settlement",
            "Settle",
            "terminal_a",
            {"requestId": "id-0002", "voucher": VOUCHER, "patientId": PERSON, "amountFen": 100},
            "patient_id",
        ),
        (
            "settlement",
            "Settle",
            "terminal_a",
            {"requestId": "id-0003", "voucher": VOUCHER, "patientId": PERSON, "amountFen": 100, "authorizerId": OTHER},
            "authorizer_id",
        ),
        (
            "settlement",
            "Settle",
            "terminal_a",
            {"requestId": "id-0004", "voucher": VOUCHER, "patientId": PERSON, "amountFen": 100},
            "voucher",
        ),
        ("settlement", "Cancel", "terminal_a", {"requestId": "id-0005", "settlementId": SETTLEMENT_ID}, "request_id"),
        (
            "settlement",
            "Cancel",
            "terminal_a",
            {"requestId": "id-0006", "settlementId": SETTLEMENT_ID},
            "settlement_id",
        ),
        ("settlement", "Reverse", "terminal_a", {"originalRequestId": "id-0007"}, "original_request_id"),
        ("settlement", "GetSettlement", "terminal_a", {"settlementId": SETTLEMENT_ID}, "settlement_id"),
        ("settlement", "GetSettlement", "terminal_a", {"requestId": "id-0008"}, "request_id"),
        (
            "settlement",
            "Reconcile",
            "terminal_a",
            {"date": "2026-01-05", "institutionId": INSTITUTION_A},
            "institution_id",
        ),
        (
            "settlement",
            "Reconcile",
            "operator",
            {"date": "2026-01-05", "institutionId": INSTITUTION_A},
            "institution_id",
        ),
        ("settlement", "Reconcile", "operator", {"date": "2026-01-05", "institutionId": INSTITUTION_A}, "date"),
    ]
    + [
        ("family", "Bind", "app", BIND, field)
        for field in ("holder_id", "member_id", "document_number", "phone", "face_verification_ref", "birth_date")
    ]
    + [
        ("family", "Unbind", "app", {"holderId": PERSON, "memberId": OTHER}, "holder_id"),
        ("family", "Unbind", "app", {"holderId": PERSON, "memberId": OTHER}, "member_id"),
        (
            "family",
            "Grant",
            "app",
            {"authorizerId": PERSON, "beneficiaryId": OTHER, "relationship": 3},
            "authorizer_id",
        ),
        (
            "family",
            "Grant",
            "app",
            {"authorizerId": PERSON, "beneficiaryId": OTHER, "relationship": 3},
            "beneficiary_id",
        ),
        (
            "family",
            "Revoke",
            "app",
            {"authorizerId": PERSON, "beneficiaryId": OTHER, "requesterId": OTHER},
            "requester_id",
        ),
        ("family", "ListFamily", "app", {"personId": PERSON}, "person_id"),
        ("family", "IssueVoucher", "app", {"personId": PERSON, "requesterId": OTHER}, "person_id"),
        ("family", "IssueVoucher", "app", {"personId": PERSON, "requesterId": OTHER}, "requester_id"),
        ("family", "IssueVoucher", "app", {"personId": PERSON, "authorizerId": OTHER}, "authorizer_id"),
    ]
    + [
        (
            "settlement",
            "Settle",
            "terminal_a",
            {"requestId": "id-0012", "patientId": PERSON, "amountFen": 100, **CARD},
            field,
        )
        for field in ("card_number", "card_serial")
    ]
    + [("account", "Enroll", "operator", ENROLL, field) for field in ("person_id", "region_code", "birth_date")]
    + [
        ("account", "Credit", "operator", {"requestId": "id-0009", "personId": PERSON, "amountFen": 100}, "request_id"),
        ("account", "Credit", "operator", {"requestId": "id-0010", "personId": PERSON, "amountFen": 100}, "person_id"),
        ("account", "GetAccount", "operator", {"personId": PERSON}, "person_id"),
        ("account", "ListLedger", "operator", {"personId": PERSON}, "person_id"),
        (
            "account",
            "SetRegionPolicy",
            "operator",
            {"policy": POLICY},
            "policy.region_key",
        ),
    ]
    + [
        ("account", "PayPremium", "app", {"requestId": "id-0011", **PAY, "year": 2027}, field)
        for field in ("request_id", "payer_id", "beneficiary_id")
    ]
    + [("account", "SetPremiumRate", "operator", {"rate": RATE}, f"rate.{field}") for field in RATE_FIELDS]
    + [("account", "RefundPremium", "operator", {"paymentId": SETTLEMENT_ID, "reason": "x"}, "payment_id")]
    + [("account", "ReportPremiums", "operator", REPORT, field) for field in ("from_date", "to_date", "region_key")]
)

MODULES = {"settlement": settlement_pb2, "family": family_pb2, "account": account_pb2}
FORGERIES: dict[str, Callable[[str], str]] = {"full_width": full_width, "look_alike": look_alike}


def _forge(request: Message, path: str, forge: Callable[[str], str]) -> None:
    *parents, name = path.split(".")
    target = request
    for parent in parents:
        target = getattr(target, parent)
    value = getattr(target, name)
    forged = forge(value)
    assert forged != value, f"{path}: {value!r} has nothing to forge"
    setattr(target, name, forged)


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize(("service", "method", "credential", "fields", "path"), CASES)
async def test_identifiers_are_ascii(
    api: Api, pool: asyncpg.Pool, service: str, method: str, credential: str, fields: Any, path: str, forgery: str
) -> None:
    call = getattr(getattr(api, service), method)
    request = getattr(MODULES[service], f"{method}Request")()
    json_format.ParseDict(fields, request)
    _forge(request, path, FORGERIES[forgery])
    before = await fingerprint(pool)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request, metadata=bearer(getattr(api.tokens, credential)))
    reason = reason_of(refused.value)
    if path == "voucher":
        assert (refused.value.code(), reason) == (S.FAILED_PRECONDITION, "VOUCHER_INVALID")
    else:
        assert (refused.value.code(), reason) == (S.INVALID_ARGUMENT, "INVALID_ARGUMENT"), refused.value.details()
        assert path in field_violations(refused.value)
    assert await fingerprint(pool) == before


async def test_an_operator_reconciling_an_unknown_institution_is_told_so(api: Api) -> None:
    for unknown in ("H61999999999", "NOSUCHPLACE"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.settlement.Reconcile(
                settlement_pb2.ReconcileRequest(date="2026-01-05", institution_id=unknown),
                metadata=bearer(api.tokens.operator),
            )
        assert (refused.value.code(), reason_of(refused.value)) == (S.NOT_FOUND, "INSTITUTION_NOT_FOUND")
    known = await api.settlement.Reconcile(
        settlement_pb2.ReconcileRequest(date="2026-01-05", institution_id=INSTITUTION_A),
        metadata=bearer(api.tokens.operator),
    )
    assert known.institution_id == INSTITUTION_A
