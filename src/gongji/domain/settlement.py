"""The checks of a settlement (2207) and of its quote (2206), as pure functions.

Each is the twin of a step of `gongji_settle` in the store's `sql/settle.sql`, under the same name
(`settle_replay` is `gongji_settle_replay`); the settlement runs the SQL step, inside PostgreSQL, so that
it stays one round trip, and a property test (tests/integration/test_twins.py) proves the two agree.
Answers are refusal reasons, the `reason` of a class in `gongji.errors`, or None.
"""

from __future__ import annotations

from gongji.domain.people import PersonStatus

# What settle_replay answers besides a refusal: the key settled this very request before.
REPLAY = "REPLAY"


def settle_replay(*, reversed_first: bool, stored_digest: bytes | None, digest: bytes) -> str | None:
    """Whether a Settle request was seen before, given what its institution and request id hold.

    `reversed_first`: a reversal by this request id exists (it came before any settlement, so the
    request may not settle any more); `stored_digest`: the digest recorded under the request id, None
    when the key is unused. Answers 'ALREADY_REVERSED', 'IDEMPOTENCY_KEY_REUSED', REPLAY, or None for
    a new request.
    """
    if reversed_first:
        return "ALREADY_REVERSED"
    if stored_digest is None:
        return None
    return REPLAY if stored_digest == digest else "IDEMPOTENCY_KEY_REUSED"


def settle_refusal(patient_status: PersonStatus | None, voucher_refusal: str | None) -> str | None:
    """Why a patient may not settle (or quote), in the order the checks run: not enrolled
    (`patient_status` None), then the voucher's refusal (gongji.domain.vouchers.voucher_refusal),
    then the patient's insurance not active."""
    if patient_status is None:
        return "PERSON_NOT_FOUND"
    if voucher_refusal is not None:
        return voucher_refusal
    return None if patient_status is PersonStatus.ACTIVE else "PERSON_NOT_ACTIVE"
