"""ID numbers, masking, ages, voucher tokens and the error tree."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import logging
import struct
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gongji import errors, limits, logs
from gongji.config import Settings
from gongji.domain.people import age_on, mask_id, person_id_problem, resident_id_check_char
from gongji.domain.vouchers import PresentedVoucher, VoucherCodec, voucher_refusal
from gongji.runtime import voucher_codec

KEY = b"k" * 32


def test_resident_id_check_character() -> None:
    assert resident_id_check_char("11010519491231002") == "X"  # the GB 11643 example
    assert person_id_problem("11010519491231002X") is None
    # The refusal names the right check character: it is computed from the 17 digits sent, so it tells
    # the caller nothing they did not send, and an integrator sees at once what went wrong.
    assert person_id_problem("110105194912310021") == "the check character (GB 11643) of these 17 digits is X, not 1"
    assert person_id_problem("short") is not None
    assert person_id_problem("abc123456") is not None


def test_log_lines_mask_id_numbers_and_phones() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("test.masking")
    log.addHandler(handler)
    try:
        for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
            handler.setFormatter(formatter)
            log.warning("person %s called from 13812345678", "61010219920315402X")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "61010219920315402X" not in text and "13812345678" not in text
    assert text.count("6101**********402X") == 2 and text.count("138****5678") == 2
    # A UUID or a long token is not mistaken for an ID number.
    assert logs.mask("0123456789012345678901234") == "0123456789012345678901234"


def test_mask_keeps_four_and_four() -> None:
    assert mask_id("61010219920315402X") == "6101**********402X"
    assert mask_id("1234") == "****"


def test_birthday_today_counts() -> None:
    born = dt.date(2010, 11, 22)
    assert age_on(born, dt.date(2026, 11, 22)) == 16
    assert age_on(born, dt.date(2026, 11, 21)) == 15


def test_voucher_round_trip_carries_its_claims_and_no_personal_data() -> None:
    codec = VoucherCodec({"k1": KEY}, "k1")
    vid = uuid.uuid4()
    person = "110101199003070014"
    own = codec.authentic(codec.issue(vid, 1_000, person, None))
    assert (own.voucher_id, own.expires_at_s, own.binding_id, own.key_id) == (vid, 1_000, None, "k1")
    held = codec.authentic(codec.issue(vid, 1_000, person, 42))
    assert held.binding_id == 42
    assert codec.names(own, person) and codec.names(held, person)
    assert not codec.names(own, "110101199003070022")
    token = codec.issue(vid, 1_000, person, 42)
    assert person not in token and person.encode() not in base64.urlsafe_b64decode(token.split(".")[2] + "==")
    assert len(token) <= limits.VOUCHER_LEN_MAX


def test_the_person_tag_needs_the_key() -> None:
    """Another key makes another tag: whose voucher it is cannot be guessed without the server's key."""
    person = "110101199003070014"
    a = VoucherCodec({"k1": KEY}, "k1")
    b = VoucherCodec({"k1": b"x" * 32}, "k1")
    assert (
        a.authentic(a.issue(uuid.uuid4(), 1_000, person, None)).person_tag
        != b.authentic(b.issue(uuid.uuid4(), 1_000, person, None)).person_tag
    )


def test_voucher_from_another_key_or_tampered_is_invalid() -> None:
    token = VoucherCodec({"k1": KEY}, "k1").issue(uuid.uuid4(), 2_000, "P", None)
    with pytest.raises(errors.VoucherInvalid):
        VoucherCodec({"k1": b"x" * 32}, "k1").authentic(token)
    head, payload, mac = token.rsplit(".", 2)
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    with pytest.raises(errors.VoucherInvalid):
        VoucherCodec({"k1": KEY}, "k1").authentic(f"{head}.{flipped}.{mac}")


def test_a_voucher_of_the_first_format_is_refused_with_a_hint() -> None:
    with pytest.raises(errors.VoucherInvalid, match="earlier format"):
        VoucherCodec({"k1": KEY}, "k1").authentic("GJ1.k1.AAAA.AAAA")


def test_old_key_still_verifies_after_rotation() -> None:
    token = VoucherCodec({"k1": KEY}, "k1").issue(uuid.uuid4(), 2_000, "P", None)
    rotated = VoucherCodec({"k1": KEY, "k2": b"n" * 32}, "k2")
    claims = rotated.authentic(token)
    assert rotated.names(claims, "P")  # the tag is checked with the key that signed the token
    assert rotated.issue(uuid.uuid4(), 2_000, "P", None).startswith("GJ2.k2.")


@pytest.mark.parametrize(("expires_at_s", "binding_id"), [(253_402_300_800, 0), (1_000, 2**63), (2**64 - 1, 2**64 - 1)])
def test_claims_out_of_range_are_refused_even_under_a_genuine_signature(expires_at_s: int, binding_id: int) -> None:
    """An expiry no datetime holds or a binding id no bigint holds is not an e-voucher, whoever signed it
    (the parser does not rely on the key holder's care)."""
    payload = base64.urlsafe_b64encode(
        struct.pack(">16sQ16sQ", uuid.uuid4().bytes, expires_at_s, b"t" * 16, binding_id)
    ).rstrip(b"=")
    signed = f"GJ2.k1.{payload.decode()}"
    mac = base64.urlsafe_b64encode(hmac.new(KEY, signed.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(errors.VoucherInvalid, match="not an e-voucher"):
        VoucherCodec({"k1": KEY}, "k1").authentic(f"{signed}.{mac.decode()}")


@given(st.text(max_size=300))
def test_garbage_is_refused_not_crashed(token: str) -> None:
    with pytest.raises(errors.VoucherRefused):
        VoucherCodec({"k1": KEY}, "k1").authentic(token)


def test_voucher_refusal_checks_the_real_name_first_and_the_binding_last() -> None:
    now = dt.datetime(2024, 3, 1, 8, tzinfo=dt.UTC)
    later = now + dt.timedelta(minutes=1)
    assert voucher_refusal(PresentedVoucher(False, True, now, False), now) is errors.VoucherPatientMismatch
    assert voucher_refusal(PresentedVoucher(True, True, now, False), now) is errors.VoucherAlreadyUsed
    assert voucher_refusal(PresentedVoucher(True, False, now, False), now) is errors.VoucherExpired
    assert voucher_refusal(PresentedVoucher(True, False, later, None), now) is None  # the person's own
    assert voucher_refusal(PresentedVoucher(True, False, later, True), now) is None  # a holder's, still bound
    assert voucher_refusal(PresentedVoucher(True, False, later, False), now) is errors.VoucherInvalid  # unbound


def test_every_sql_refusal_reason_maps_to_an_error() -> None:
    for reason in (
        "PERSON_NOT_FOUND",
        "PERSON_NOT_ACTIVE",
        "VOUCHER_INVALID",
        "VOUCHER_PATIENT_MISMATCH",
        "VOUCHER_ALREADY_USED",
        "VOUCHER_EXPIRED",
        "GRANT_NOT_FOUND",
        "IDEMPOTENCY_KEY_REUSED",
    ):
        assert errors.BY_REASON[reason].reason == reason
    assert errors.BY_REASON["VOUCHER_PATIENT_MISMATCH"].code == "PERMISSION_DENIED"


def test_rotation_old_keys_verify_and_the_new_key_signs(tmp_path: Path) -> None:
    old_key, new_key = "o" * 32, "n" * 40
    before = Settings(voucher_key=old_key, voucher_key_id="k1", data_dir=tmp_path)
    after = Settings(voucher_key=new_key, voucher_key_id="k2", voucher_old_keys=f"k1:{old_key}", data_dir=tmp_path)
    old_token = voucher_codec(before).issue(uuid.UUID(int=7), 2_000_000_000, "P", None)
    rotated = voucher_codec(after)
    assert rotated.authentic(old_token).voucher_id == uuid.UUID(int=7)
    assert rotated.issue(uuid.UUID(int=8), 2_000_000_000, "P", None).startswith("GJ2.k2.")
    # Once the old key is dropped from the configuration, its vouchers stop working.
    without = voucher_codec(Settings(voucher_key=new_key, voucher_key_id="k2", data_dir=tmp_path))
    with pytest.raises(errors.VoucherInvalid):
        without.authentic(old_token)


@pytest.mark.parametrize("old_keys", ["k1", "k2:" + "x" * 32, "k1:short", "k-1:" + "x" * 32])
def test_malformed_old_voucher_keys_are_refused_at_start(tmp_path: Path, old_keys: str) -> None:
    settings = Settings(voucher_key="n" * 32, voucher_key_id="k2", voucher_old_keys=old_keys, data_dir=tmp_path)
    with pytest.raises(ValueError, match="GONGJI_VOUCHER_OLD_KEYS"):
        settings.voucher_keys()


def test_a_pick_travels_in_a_token_of_its_own_format() -> None:
    codec = VoucherCodec({"k1": KEY}, "k1")
    voucher_id = uuid.uuid4()
    picked = codec.issue(voucher_id, 2_000, "P", 7, grant_id=42)
    assert picked.startswith("GJ3.k1.")
    claims = codec.authentic(picked)
    assert (claims.voucher_id, claims.binding_id, claims.grant_id) == (voucher_id, 7, 42)
    assert codec.names(claims, "P")
    # Without a pick the token keeps the format a server of the release before reads.
    assert codec.authentic(codec.issue(voucher_id, 2_000, "P", None)).grant_id is None


def test_a_pick_of_no_grant_is_refused_even_under_a_genuine_signature() -> None:
    codec = VoucherCodec({"k1": KEY}, "k1")
    payload = base64.urlsafe_b64encode(struct.pack(">16sQ16sQQ", b"\0" * 16, 2_000, b"\0" * 16, 0, 0)).rstrip(b"=")
    signed = f"GJ3.k1.{payload.decode()}"
    mac = hmac.new(KEY, signed.encode(), hashlib.sha256).digest()
    with pytest.raises(errors.VoucherInvalid):
        codec.authentic(f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}")
