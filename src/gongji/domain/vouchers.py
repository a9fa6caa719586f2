"""E-voucher tokens (医保电子凭证): signed, short-lived, single-use.

A token carries no personal data, only a random voucher id and its expiry, MAC-ed with HMAC-SHA256:

    GJ1.<key id>.<base64url(16-byte voucher id + 8-byte expiry, unix seconds)>.<base64url(mac)>

Whom the voucher names, who asked for it and whether it was used live in the database, so a
settlement consumes it in the same transaction that moves the money. Checking the MAC first lets a
forged or expired token be refused without touching the database.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass

from gongji import errors, limits

_PREFIX = "GJ1"
_PAYLOAD = struct.Struct(">16sQ")


@dataclass(frozen=True, slots=True)
class VoucherClaims:
    voucher_id: uuid.UUID
    expires_at_s: int


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

    def issue(self, voucher_id: uuid.UUID, expires_at_s: int) -> str:
        signed = f"{_PREFIX}.{self._current}.{_b64(_PAYLOAD.pack(voucher_id.bytes, expires_at_s))}"
        return f"{signed}.{_b64(self._mac(self._current, signed))}"

    def verify(self, token: str, now_s: int) -> VoucherClaims:
        """The claims of a genuine, unexpired token; VoucherInvalid or VoucherExpired otherwise."""
        claims = self.authentic(token)
        if claims.expires_at_s <= now_s:
            raise errors.VoucherExpired("the e-voucher has expired; refresh it in the app")
        return claims

    def authentic(self, token: str) -> VoucherClaims:
        """The claims of a genuine token, expired or not; VoucherInvalid otherwise.

        Settlement checks only this before the database: a POS retrying after the voucher's lifetime
        must still get its original answer, so expiry is judged after the idempotency check."""
        if len(token) > limits.VOUCHER_LEN_MAX or not token.isascii():
            raise errors.VoucherInvalid("not an e-voucher")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _PREFIX or parts[1] not in self._keys:
            raise errors.VoucherInvalid("not an e-voucher")
        signed = ".".join(parts[:3])
        try:
            mac = _unb64(parts[3])
            payload = _unb64(parts[2])
        except (binascii.Error, ValueError) as exc:
            raise errors.VoucherInvalid("not an e-voucher") from exc
        if not hmac.compare_digest(mac, self._mac(parts[1], signed)):
            raise errors.VoucherInvalid("the e-voucher's signature does not verify")
        if len(payload) != _PAYLOAD.size:
            raise errors.VoucherInvalid("not an e-voucher")
        raw_id, expires_at_s = _PAYLOAD.unpack(payload)
        return VoucherClaims(uuid.UUID(bytes=raw_id), expires_at_s)


@dataclass(frozen=True, slots=True)
class IssuedVoucher:
    """What settlement reads of a `voucher` row."""

    person_id: str  # whom the voucher names
    requester_id: str  # who asked for it: the person, or a holder bound to them
    issued_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None


VoucherRefusal = type[errors.VoucherRefused] | type[errors.VoucherPatientMismatch]


def voucher_refusal(
    voucher: IssuedVoucher | None,
    patient_id: str,
    now: dt.datetime,
    live_binding_since: dt.datetime | None,
) -> VoucherRefusal | None:
    """Why `voucher` cannot settle for `patient_id` at `now`, or None when it can.

    The twin of `gongji_voucher_refusal` in store/sql/settle.sql, held to it by the property test in
    tests/integration/test_twins.py; the SQL answers the class's `reason`. `voucher` is None for an
    unknown voucher. `live_binding_since` is when the live binding of holder `requester_id` to member
    `person_id` was made, None when there is none (at most one lives per pair); an ended binding never
    counts.

    The real-name rule comes before use and expiry: someone else's voucher is the fraud signal. A voucher
    a holder asked for is good only under a binding that lives now and already lived when it was issued,
    so binding again does not bring back a voucher issued before.
    """
    if voucher is None:
        return errors.VoucherInvalid
    if voucher.person_id != patient_id:
        return errors.VoucherPatientMismatch
    if voucher.used_at is not None:
        return errors.VoucherAlreadyUsed
    if voucher.expires_at <= now:
        return errors.VoucherExpired
    if voucher.requester_id != voucher.person_id and (
        live_binding_since is None or live_binding_since > voucher.issued_at
    ):
        return errors.VoucherInvalid
    return None
