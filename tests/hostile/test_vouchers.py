"""E-vouchers (医保电子凭证) a patient or a fraudster might present, in one place: each is refused by
Quote and by Settle with its own reason, and nothing is written. A genuine voucher still settles after.

Some of these are also covered where their feature lives (test_settle, test_kinship); this is the
list an auditor reads.
"""

from __future__ import annotations

import base64
import datetime as dt
import struct
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import grpc
import pytest
from harness import CODEC, fingerprint, reason_of
from support import CHILD, RESIDENT, SUSPENDED, Api, bearer

from gongji.domain.vouchers import VoucherCodec
from gongji.v1 import family_pb2, settlement_pb2

S = grpc.StatusCode
INVALID = (S.FAILED_PRECONDITION, "VOUCHER_INVALID")
EXPIRED = (S.FAILED_PRECONDITION, "VOUCHER_EXPIRED")
USED = (S.FAILED_PRECONDITION, "VOUCHER_ALREADY_USED")
NOT_THEIRS = (S.PERMISSION_DENIED, "VOUCHER_PATIENT_MISMATCH")
NOT_ACTIVE = (S.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
NO_GRANT = (S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
PAYLOAD = ">16sQ16sQ"  # voucher id, expiry, person tag, binding id (gongji.domain.vouchers)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def _forged_signature(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    head, payload, mac = (await api.voucher(patient)).rsplit(".", 2)
    return f"{head}.{payload}.{_b64(bytes(b ^ 1 for b in _unb64(mac)))}"


async def _extended_expiry(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """A screenshot whose expiry was pushed a day on, keeping the original signature."""
    head, payload, mac = (await api.voucher(patient)).rsplit(".", 2)
    voucher_id, expires_s, tag, binding = struct.unpack(PAYLOAD, _unb64(payload))
    return f"{head}.{_b64(struct.pack(PAYLOAD, voucher_id, expires_s + 86_400, tag, binding))}.{mac}"


async def _other_key(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """Signed under the right key id with a key the server does not hold, for a voucher it issued."""
    _, payload, _ = (await api.voucher(patient)).rsplit(".", 2)
    voucher_id, expires_s, _, _ = struct.unpack(PAYLOAD, _unb64(payload))
    return VoucherCodec({"k1": b"an-attacker-key-0123456789abcdef-0123"}, "k1").issue(
        uuid.UUID(bytes=voucher_id), expires_s, patient, None
    )


async def _unknown_key_id(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    return (await api.voucher(patient)).replace("GJ2.k1.", "GJ2.k9.", 1)


async def _first_format(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """A voucher of the format before tokens were self-contained (its row no longer decides)."""
    _, key_id, payload, mac = (await api.voucher(patient)).split(".")
    return f"GJ1.{key_id}.{_b64(_unb64(payload)[:24])}.{mac}"


async def _binding_never_made(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """A genuine signature (the key leaked, say) claiming a holder's binding that does not exist."""
    never = 1 + await pool.fetchval("select coalesce(max(binding_id), 0) from kinship_binding")
    return CODEC.issue(uuid.uuid4(), int(dt.datetime.now(dt.UTC).timestamp()) + 60, patient, never)


async def _expired(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    expired_at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    return CODEC.issue(uuid.uuid4(), int(expired_at.timestamp()), patient, None)


async def _used(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    voucher = await api.voucher(patient)
    await api.settle(patient, 100, voucher=voucher)
    return voucher


async def _used_at_another_institution(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    voucher = await api.voucher(patient)
    await api.settle(patient, 100, voucher=voucher, token=api.tokens.terminal_b)
    return voucher


async def _for_another_person(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """The authorizer's own voucher presented for the family member (欺诈骗保)."""
    authorizer = (await api.list_family(patient)).grants_held[0].authorizer_id
    return await api.voucher(authorizer)


async def _holder_unbound(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    holder = await api.enroll(birth=dt.date(1960, 1, 1))
    await api.bind(holder, patient)
    voucher = await api.voucher(patient, requester_id=holder)
    await api.unbind(holder, patient)
    return voucher


async def _holder_unbound_then_bound_again(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """Binding again does not bring back a voucher issued under the binding that was removed."""
    holder = await api.enroll(birth=dt.date(1960, 1, 1))
    await api.bind(holder, patient)
    voucher = await api.voucher(patient, requester_id=holder)
    await api.unbind(holder, patient)
    await api.bind(holder, patient)
    return voucher


async def _pick_relabelled(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """A voucher without a pick, relabelled as one that carries a pick (the signature covers the
    format)."""
    _, key_id, payload, mac = (await api.voucher(patient)).split(".")
    return f"GJ3.{key_id}.{_b64(_unb64(payload) + struct.pack('>Q', 1))}.{mac}"


async def _another_familys_grant(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    """A genuine signature (the key leaked) carrying a grant to someone else: it must not pay for the
    patient, nor let the settlement fall back to the patient's own grant."""
    other = await api.enroll(scheme=RESIDENT)
    payer = await api.enroll(balance_fen=50_000)
    await api.grant(payer, other)
    grant_id = await pool.fetchval("select grant_id from mutual_aid_grant where beneficiary_id = $1", other)
    return CODEC.issue(uuid.uuid4(), int(dt.datetime.now(dt.UTC).timestamp()) + 60, patient, None, grant_id)


async def _grant_never_made(api: Api, pool: asyncpg.Pool, patient: str) -> str:
    never = 1 + await pool.fetchval("select coalesce(max(grant_id), 0) from mutual_aid_grant")
    return CODEC.issue(uuid.uuid4(), int(dt.datetime.now(dt.UTC).timestamp()) + 60, patient, None, never)


Maker = Callable[[Api, asyncpg.Pool, str], Awaitable[str]]
CASES: list[tuple[str, Maker, tuple[S, str]]] = [
    ("forged signature", _forged_signature, INVALID),
    ("expiry extended under the old signature", _extended_expiry, INVALID),
    ("signed with another key", _other_key, INVALID),
    ("unknown key id", _unknown_key_id, INVALID),
    ("of the first format", _first_format, INVALID),
    ("genuine signature, a binding never made", _binding_never_made, INVALID),
    ("expired", _expired, EXPIRED),
    ("replayed after use", _used, USED),
    ("replayed at another institution after use", _used_at_another_institution, USED),
    ("issued for another person", _for_another_person, NOT_THEIRS),
    ("issued to a holder whose binding was removed", _holder_unbound, INVALID),
    ("issued to a holder, unbound and bound again since", _holder_unbound_then_bound_again, INVALID),
    ("relabelled as carrying a pick", _pick_relabelled, INVALID),
    ("genuine signature, another family's grant picked", _another_familys_grant, NO_GRANT),
    ("genuine signature, a grant never made picked", _grant_never_made, NO_GRANT),
]


async def _patient(api: Api) -> str:
    authorizer = await api.enroll(balance_fen=10_000, birth=dt.date(1960, 1, 1))
    patient = await api.enroll(balance_fen=1_000, birth=dt.date(2012, 1, 1), name="王小宝")
    await api.grant(authorizer, patient, CHILD)
    return patient


async def _refusal(call: Awaitable[object]) -> tuple[S, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), reason_of(caught.value)


@pytest.mark.parametrize(("case", "make", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_a_bad_voucher_is_refused_with_its_reason(
    api: Api, pool: asyncpg.Pool, case: str, make: Maker, expected: tuple[S, str]
) -> None:
    patient = await _patient(api)
    voucher = await make(api, pool, patient)
    before = await fingerprint(pool)
    quote = settlement_pb2.QuoteRequest(voucher=voucher, patient_id=patient, amount_fen=500)
    assert await _refusal(api.settlement.Quote(quote, metadata=bearer(api.tokens.terminal_a))) == expected
    for token in (api.tokens.terminal_a, api.tokens.terminal_b):
        assert await _refusal(api.settle(patient, 500, voucher=voucher, token=token)) == expected
    assert await fingerprint(pool) == before, "a refused voucher wrote something"
    # The patient is not locked out: their own fresh voucher settles.
    assert (await api.settle(patient, 500)).settlement.amount_fen == 500


async def test_a_voucher_of_someone_no_longer_insured_does_not_settle(api: Api, pool: asyncpg.Pool) -> None:
    patient = await _patient(api)
    voucher = await api.voucher(patient)
    await api.set_status(patient, SUSPENDED)
    before = await fingerprint(pool)
    assert await _refusal(api.settle(patient, 500, voucher=voucher)) == NOT_ACTIVE
    assert await fingerprint(pool) == before


async def test_who_may_ask_for_a_voucher(api: Api, pool: asyncpg.Pool) -> None:
    """Only the person, or a holder with a live binding, gets a voucher naming the person."""
    patient = await _patient(api)
    stranger = await api.enroll()
    holder = await api.enroll(birth=dt.date(1960, 1, 1))
    baby = await api.enroll(scheme=RESIDENT, birth=dt.date(2024, 1, 1))
    before = await fingerprint(pool)
    assert await _refusal(api.voucher(patient, requester_id=stranger)) == (S.PERMISSION_DENIED, "NOT_ALLOWED")
    assert await fingerprint(pool) == before
    await api.bind(holder, baby, face_verification_ref="")
    reply = await api.family.IssueVoucher(
        family_pb2.IssueVoucherRequest(person_id=baby, requester_id=holder), metadata=bearer(api.tokens.app)
    )
    assert (reply.person_id, reply.requester_id) == (baby, holder)
    await api.unbind(holder, baby)
    assert await _refusal(api.voucher(baby, requester_id=holder)) == (S.PERMISSION_DENIED, "NOT_ALLOWED")
    await api.set_status(patient, SUSPENDED)
    assert await _refusal(api.voucher(patient)) == NOT_ACTIVE
