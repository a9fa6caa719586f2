"""The checks of a settlement (2207) and of its quote (2206), as pure functions.

Each is the twin of a step of `gongji_settle` in the store's `sql/settle.sql`, under the same name
(`settle_replay` is `gongji_settle_replay`): the settlement runs the SQL step, inside PostgreSQL, so that
it stays one round trip, and a property test (tests/integration/test_twins.py) holds the two to each
other. A refusal is answered as its class in `gongji.errors`; the SQL answers the class's `reason`.
"""

from __future__ import annotations

import enum

from gongji import errors
from gongji.domain.people import PersonStatus


class Seen(enum.Enum):
    """A request id the institution used before for the same request: answer its settlement again."""

    REPLAY = "REPLAY"


def settle_replay(
    *, reversed_first: bool, stored_digest: bytes | None, digest: bytes
) -> type[errors.AlreadyReversed] | type[errors.IdempotencyKeyReused] | Seen | None:
    """Whether a Settle request was seen before, given what its institution's request id holds.

    `reversed_first`: a reversal by this request id exists, so the request may not settle any more;
    `stored_digest`: the digest of the request that settled under this id, None when none did. None
    answers a new request.
    """
    if reversed_first:
        return errors.AlreadyReversed
    if stored_digest is None:
        return None
    return Seen.REPLAY if stored_digest == digest else errors.IdempotencyKeyReused


def settle_refusal(
    patient_status: PersonStatus | None, voucher_refusal: type[errors.GongjiError] | None
) -> type[errors.GongjiError] | None:
    """Why a patient may not settle (or quote), in the order the checks run: not enrolled
    (`patient_status` None), then the voucher's refusal (gongji.domain.vouchers.voucher_refusal),
    then the patient's insurance not active."""
    if patient_status is None:
        return errors.PersonNotFound
    if voucher_refusal is not None:
        return voucher_refusal
    return None if patient_status is PersonStatus.ACTIVE else errors.PersonNotActive
