"""Cards read at the counter (mdtrt_cert_type 02, the ID card; 03, the social-security card) instead of
the e-voucher: accepted where the patient's region accepts them, only for their own holder, and never
used up. Real server, real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from harness import fingerprint
from prometheus_client import REGISTRY
from support import RESIDENT, Api, bearer, field_violations, refused

from gongji.v1 import settlement_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
ID_CARD = types_pb2.CERTIFICATE_TYPE_ID_CARD
SSC = types_pb2.CERTIFICATE_TYPE_SOCIAL_SECURITY_CARD
E_VOUCHER = types_pb2.CERTIFICATE_TYPE_E_VOUCHER


def _settle(patient: str, amount_fen: int, cert: int, number: str, serial: str = "", **more: Any) -> Any:
    return settlement_pb2.SettleRequest(
        request_id=f"card-{uuid.uuid4()}",
        patient_id=patient,
        amount_fen=amount_fen,
        certificate_type=cert,
        card_number=number,
        card_serial=serial,
        **more,
    )


async def test_each_card_settles_for_its_holder_and_is_not_used_up(api: Api, pool: asyncpg.Pool) -> None:
    authorizer = await api.enroll(balance_fen=10_000)
    patient = await api.enroll(balance_fen=300)
    await api.grant(authorizer, patient)
    terminal = bearer(api.tokens.terminal_a)
    for cert, serial in ((ID_CARD, ""), (SSC, "A1B2C3D4E5"), (SSC, "A1B2C3D4E5")):
        reply = await api.settlement.Settle(_settle(patient, 200, cert, patient, serial), metadata=terminal)
        assert reply.settlement.certificate_type == cert
    own, mutual_aid = await api.balance(patient), await api.balance(authorizer)
    assert (own, mutual_aid) == (0, 10_000 - 300)  # the waterfall as with an e-voucher
    rows = await pool.fetch("select cert_type, voucher_id from settlement where patient_id = $1", patient)
    assert sorted(r["cert_type"] for r in rows) == ["ID_CARD", "SOCIAL_SECURITY_CARD", "SOCIAL_SECURITY_CARD"]
    assert all(r["voucher_id"] is None for r in rows)  # a card names no voucher
    quote = settlement_pb2.QuoteRequest(
        patient_id=patient, amount_fen=100, certificate_type=ID_CARD, card_number=patient
    )
    assert (await api.settlement.Quote(quote, metadata=terminal)).psn_cash_pay_fen == 0
    # An e-voucher settlement says so too.
    assert (await api.settle(patient, 100)).settlement.certificate_type == E_VOUCHER


async def test_someone_elses_card_is_the_real_name_violation(api: Api, pool: asyncpg.Pool) -> None:
    authorizer = await api.enroll(balance_fen=10_000)
    patient = await api.enroll(scheme=RESIDENT)
    await api.grant(authorizer, patient)
    institution = (await api.settle(patient, 1)).settlement.institution_id
    counted = REGISTRY.get_sample_value("gongji_real_name_mismatches_total", {"institution": institution}) or 0.0
    before = await fingerprint(pool)
    for cert, serial in ((ID_CARD, ""), (SSC, "X9")):
        request = _settle(patient, 500, cert, authorizer, serial)  # the authorizer's own card (欺诈骗保)
        await refused(
            api.settlement.Settle(request, metadata=bearer(api.tokens.terminal_a)),
            S.PERMISSION_DENIED,
            "VOUCHER_PATIENT_MISMATCH",
        )
    assert await fingerprint(pool) == before
    after = REGISTRY.get_sample_value("gongji_real_name_mismatches_total", {"institution": institution})
    assert after == counted + 2
    # Each refusal is recorded once, as the fraud signal the event stream tells (no e-voucher: a card).
    recorded = "select count(*) from voucher_mismatch where patient_id = $1 and voucher_id is null"
    assert await pool.fetchval(recorded, patient) == 2


async def test_a_region_may_refuse_cards(api: Api, pool: asyncpg.Pool) -> None:
    """Guiyang (520100), a 统筹区 no other test sets a policy for; removed after."""
    patient = await api.enroll(region="520100", balance_fen=1_000)
    elsewhere = await api.enroll(region="460100", balance_fen=1_000)
    policy = await api.set_policy(
        "520100", types_pb2.GRANT_SCOPE_PROVINCE, [types_pb2.RELATIONSHIP_SPOUSE], accepted_certificate_types=[SSC]
    )
    assert list(policy.policy.accepted_certificate_types) == [E_VOUCHER, SSC]
    terminal = bearer(api.tokens.terminal_a)
    before = await fingerprint(pool)
    await refused(
        api.settlement.Settle(_settle(patient, 100, ID_CARD, patient), metadata=terminal),
        S.FAILED_PRECONDITION,
        "CERTIFICATE_TYPE_NOT_ALLOWED",
    )
    assert await fingerprint(pool) == before
    assert (await api.settlement.Settle(_settle(patient, 100, SSC, patient, "S1"), metadata=terminal)).settlement
    assert (await api.settle(patient, 100)).settlement.amount_fen == 100  # the e-voucher always
    # The patient's insured region decides: another province's patient is not affected.
    assert (await api.settlement.Settle(_settle(elsewhere, 100, ID_CARD, elsewhere), metadata=terminal)).settlement
    # Listing only the e-voucher refuses both cards; listing nothing accepts all.
    await api.set_policy(
        "520100",
        types_pb2.GRANT_SCOPE_PROVINCE,
        [types_pb2.RELATIONSHIP_SPOUSE],
        accepted_certificate_types=[E_VOUCHER],
    )
    await refused(
        api.settlement.Settle(_settle(patient, 100, SSC, patient, "S1"), metadata=terminal),
        S.FAILED_PRECONDITION,
        "CERTIFICATE_TYPE_NOT_ALLOWED",
    )
    reply = await api.set_policy("520100", types_pb2.GRANT_SCOPE_PROVINCE, [types_pb2.RELATIONSHIP_SPOUSE])
    assert list(reply.policy.accepted_certificate_types) == [E_VOUCHER, ID_CARD, SSC]
    assert (await api.settlement.Settle(_settle(patient, 100, ID_CARD, patient), metadata=terminal)).settlement
    await pool.execute("delete from region_policy where region_key = '520100'")


@pytest.mark.parametrize(
    ("fields", "violations"),
    [
        ({"certificate_type": ID_CARD}, ["card_number"]),
        ({"certificate_type": ID_CARD, "card_number": "SELF", "card_serial": "X1"}, ["card_serial"]),
        ({"certificate_type": SSC, "card_number": "SELF"}, ["card_serial"]),
        ({"certificate_type": SSC, "card_number": "SELF", "card_serial": "卡-1"}, ["card_serial"]),
        ({"certificate_type": SSC, "card_number": "SELF", "card_serial": "A" * 33}, ["card_serial"]),
        ({"certificate_type": ID_CARD, "card_number": "SELF", "voucher": "GJ2.k1.a.b"}, ["voucher"]),
        ({"voucher": "", "card_number": "SELF"}, ["voucher", "card_number"]),
        ({"certificate_type": 99, "card_number": "SELF"}, ["certificate_type", "voucher", "card_number"]),
    ],
)
async def test_card_fields_that_do_not_fit_are_refused(
    api: Api, pool: asyncpg.Pool, fields: dict[str, Any], violations: list[str]
) -> None:
    patient = await api.enroll()
    fields = {k: patient if v == "SELF" else v for k, v in fields.items()}
    before = await fingerprint(pool)
    request = settlement_pb2.SettleRequest(
        request_id=f"bad-{uuid.uuid4()}", patient_id=patient, amount_fen=100, **fields
    )
    error = await refused(
        api.settlement.Settle(request, metadata=bearer(api.tokens.terminal_a)), S.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert field_violations(error) == violations
    assert await fingerprint(pool) == before
