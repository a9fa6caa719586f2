"""E-voucher tokens (医保电子凭证): signed, short-lived, single-use, and written nowhere when issued.

A token is self-contained: everything settlement needs to judge it travels in it, MAC-ed with
HMAC-SHA256, so issuing one writes nothing and a settlement commits once:

    GJ2.<key id>.<base64url(payload)>.<base64url(mac)>
    payload: 16-byte voucher id, 8-byte expiry (unix seconds), 16-byte person tag, 8-byte binding id
    GJ3: the same, and an 8-byte grant id after the binding id

A GJ3 token carries the mutual-aid grant the patient picked in the app before the code was shown (the
platform's settlement request has no authorizer field: the choice travels with the voucher). A token
without a choice is still issued as GJ2, which a server of the release before reads too.

It carries no personal data. Whom it names travels as a tag, HMAC(key, person id) cut to 16 bytes:
settlement recomputes the tag of the patient it is asked to settle and compares (the real-name rule),
and nobody without the key can tell whose voucher it is or test a guess. A holder's voucher carries
the id of the kinship binding it was issued under (0: the person's own), so settlement can check that
the binding still lives: unbinding ends it, and binding again makes a new binding with a new id, so a
voucher issued before does not come back.

Single use is kept by the settlement itself: `settlement.voucher_id` is unique, and a settlement takes
a transaction lock on its voucher id before it looks for an earlier settlement naming it
(store/sql/settle.sql). Nothing needs pruning: the settlement row is kept anyway. Checking the MAC
first lets a forged token be refused without touching the database.

Tokens of the first format (GJ1, whose voucher was a database row) are refused after the upgrade that
brought this one: they lived at most `limits.VOUCHER_TTL_S_MAX` seconds, and the app shows a fresh one.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass

from gongji import errors, limits

_PREFIX = "GJ2"
_PAYLOAD = struct.Struct(">16sQ16sQ")
_PREFIX_CHOSEN = "GJ3"  # with the grant the patient picked
_PAYLOAD_CHOSEN = struct.Struct(">16sQ16sQQ")
_TAG_LEN = 16
# Claims a token may carry: an expiry that a datetime holds (the year 9999), a binding id that a bigint
# holds. A token signed with the server's key carries nothing else, but the parser does not rely on it.
_EXPIRES_AT_S_MAX = 253_402_300_799
_BINDING_ID_MAX = 2**63 - 1  # and a grant id
# Domain separation: a person tag is never a valid MAC of a token, nor the other way round.
_TAG_CONTEXT = b"gongji e-voucher person\x00"


class CertType(enum.StrEnum):
    """What a patient presents at the counter to be identified (the platform's mdtrt_cert_type)."""

    E_VOUCHER = "E_VOUCHER"  # 01, a token of this module
    ID_CARD = "ID_CARD"  # 02, the resident ID card, read at the counter
    SOCIAL_SECURITY_CARD = "SOCIAL_SECURITY_CARD"  # 03, with its identification code (卡识别码)


CARDS = frozenset({CertType.ID_CARD, CertType.SOCIAL_SECURITY_CARD})


@dataclass(frozen=True, slots=True)
class VoucherClaims:
    voucher_id: uuid.UUID
    expires_at_s: int
    person_tag: bytes  # HMAC of the person the voucher names, with the key that signed it
    binding_id: int | None  # the kinship binding a holder asked under; None: the person's own voucher
    key_id: str
    grant_id: int | None = None  # the grant the patient picked in the app; None: no choice made


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class VoucherCodec:
    """Signs with the current key; verifies with any key it holds (so old keys work until rotation ends)."""

    def __init__(self, keys: dict[str, bytes], current_key_id: str) -> None:
        assert current_key_id in keys, "the current key must be one of the keys"
        assert all(len(k) >= 32 for k in keys.values()), "voucher keys must be at least 32 bytes"
        assert all(kid.isalnum() for kid in keys), "key ids are alphanumeric"
        self._keys = dict(keys)
        self._current = current_key_id

    def _mac(self, key_id: str, signed: str) -> bytes:
        return hmac.new(self._keys[key_id], signed.encode("ascii"), hashlib.sha256).digest()

    def _tag(self, key_id: str, person_id: str) -> bytes:
        digest = hmac.new(self._keys[key_id], _TAG_CONTEXT + person_id.encode(), hashlib.sha256).digest()
        return digest[:_TAG_LEN]

    def issue(
        self,
        voucher_id: uuid.UUID,
        expires_at_s: int,
        person_id: str,
        binding_id: int | None,
        grant_id: int | None = None,
    ) -> str:
        """A token naming `person_id`, asked for by the person (`binding_id` None) or by a holder under
        kinship binding `binding_id`, carrying the grant the patient picked (`grant_id`) if any."""
        assert binding_id is None or 0 < binding_id <= _BINDING_ID_MAX
        assert grant_id is None or 0 < grant_id <= _BINDING_ID_MAX
        assert 0 <= expires_at_s <= _EXPIRES_AT_S_MAX
        claims = (voucher_id.bytes, expires_at_s, self._tag(self._current, person_id), binding_id or 0)
        if grant_id is None:
            prefix, payload = _PREFIX, _PAYLOAD.pack(*claims)
        else:
            prefix, payload = _PREFIX_CHOSEN, _PAYLOAD_CHOSEN.pack(*claims, grant_id)
        signed = f"{prefix}.{self._current}.{_b64(payload)}"
        return f"{signed}.{_b64(self._mac(self._current, signed))}"

    def names(self, claims: VoucherClaims, person_id: str) -> bool:
        """Whether the genuine token of `claims` names `person_id` (the real-name rule)."""
        return hmac.compare_digest(claims.person_tag, self._tag(claims.key_id, person_id))

    def authentic(self, token: str) -> VoucherClaims:
        """The claims of a genuine token, expired or not; VoucherInvalid otherwise.

        Settlement checks only this before the database: a POS retrying after the voucher's lifetime
        must still get its original answer, so expiry is judged after the idempotency check, in the
        settlement's transaction, by the database's clock."""
        if len(token) > limits.VOUCHER_LEN_MAX or not token.isascii():
            raise errors.VoucherInvalid("not an e-voucher")
        parts = token.split(".")
        if len(parts) == 4 and parts[0] == "GJ1":
            raise errors.VoucherInvalid("an e-voucher of an earlier format; ask the patient to show a fresh one")
        if len(parts) != 4 or parts[0] not in (_PREFIX, _PREFIX_CHOSEN) or parts[1] not in self._keys:
            raise errors.VoucherInvalid("not an e-voucher")
        signed = ".".join(parts[:3])
        try:
            mac = _unb64(parts[3])
            payload = _unb64(parts[2])
        except (binascii.Error, ValueError) as exc:
            raise errors.VoucherInvalid("not an e-voucher") from exc
        if not hmac.compare_digest(mac, self._mac(parts[1], signed)):
            raise errors.VoucherInvalid("the e-voucher's signature does not verify")
        layout = _PAYLOAD if parts[0] == _PREFIX else _PAYLOAD_CHOSEN
        if len(payload) != layout.size:
            raise errors.VoucherInvalid("not an e-voucher")
        raw_id, expires_at_s, tag, binding_id, *chosen = layout.unpack(payload)
        grant_id = chosen[0] if chosen else 0
        if expires_at_s > _EXPIRES_AT_S_MAX or max(binding_id, grant_id) > _BINDING_ID_MAX:
            raise errors.VoucherInvalid("not an e-voucher")
        if chosen and grant_id == 0:
            raise errors.VoucherInvalid("not an e-voucher")  # a GJ3 token always names a grant
        return VoucherClaims(uuid.UUID(bytes=raw_id), expires_at_s, tag, binding_id or None, parts[1], grant_id or None)


@dataclass(frozen=True, slots=True)
class PresentedVoucher:
    """What settlement knows of a genuine e-voucher presented for a patient: its own claims judged
    against the patient, and what the books say of it."""

    names_patient: bool  # the voucher names the patient being settled
    used: bool  # a settlement already names the voucher's id
    expires_at: dt.datetime
    # None: the person's own voucher. Otherwise whether the kinship binding it was issued under still
    # lives, for this patient as member (an ended binding never counts; binding again makes a new one).
    binding_live: bool | None


VoucherRefusal = type[errors.VoucherRefused] | type[errors.VoucherPatientMismatch]


def voucher_refusal(voucher: PresentedVoucher, now: dt.datetime) -> VoucherRefusal | None:
    """Why `voucher` cannot settle at `now`, or None when it can.

    The twin of `gongji_voucher_refusal` in store/sql/settle.sql, held to it by the property test in
    tests/integration/test_twins.py; the SQL answers the class's `reason`. A forged or unreadable token
    never gets here: `VoucherCodec.authentic` refuses it first.

    The real-name rule comes before use and expiry: someone else's voucher is the fraud signal. A voucher
    a holder asked for is good only while the binding it was issued under lives.
    """
    if not voucher.names_patient:
        return errors.VoucherPatientMismatch
    if voucher.used:
        return errors.VoucherAlreadyUsed
    if voucher.expires_at <= now:
        return errors.VoucherExpired
    if voucher.binding_live is False:
        return errors.VoucherInvalid
    return None
