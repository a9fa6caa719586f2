"""Holds at the till, as pure functions: what a Settle capturing a hold, or a terminal releasing one,
is answered. The twins of `gongji_capture_refusal` and `gongji_release_refusal` in the store's
`sql/hold.sql`, under the same names; tests/integration/test_twins.py holds each pair to each other.

A hold is two-phase, as a 医保钱包 transfer is (docs/domain.md, "Holds at the till"): PENDING while its
money is out of the accounts and the wallet, then exactly one of CAPTURED (a settlement took it),
RELEASED (its terminal gave it back) or EXPIRED (nobody captured it in time; the expiry work gave it back).
"""

from __future__ import annotations

import datetime as dt
import enum

from gongji import errors


class HoldState(enum.StrEnum):
    PENDING = "PENDING"
    CAPTURED = "CAPTURED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


def capture_refusal(
    *,
    state: HoldState | None,
    same_institution: bool,
    expires_at: dt.datetime,
    now: dt.datetime,
    same_content: bool,
    year_turned: bool = False,
    other_grant_picked: bool = False,
) -> type[errors.GongjiError] | None:
    """Why a Settle may not capture a hold (`state` None: no such hold), or None when it may: another
    institution's hold is not found, one ended is resolved, one past its time has expired (the refusal
    then gives its money back), and so has one holding mutual aid counted in another year's caps than
    the settlement's (`year_turned`: across New Year). A Settle asking other content than the Quote that
    held, or whose voucher carries the patient's pick of another grant than the one held
    (`other_grant_picked`), does not match."""
    if state is None or not same_institution:
        return errors.HoldNotFound
    if state is not HoldState.PENDING:
        return errors.HoldResolved
    if now >= expires_at or year_turned:
        return errors.HoldExpired
    if not same_content or other_grant_picked:
        return errors.HoldMismatch
    return None


def release_refusal(*, state: HoldState | None, same_institution: bool) -> type[errors.GongjiError] | None:
    """Why a terminal may not release a hold, or None: another institution's (or none) is not found, a
    captured one is resolved. Releasing one released or expired answers it again."""
    if state is None or not same_institution:
        return errors.HoldNotFound
    if state is HoldState.CAPTURED:
        return errors.HoldResolved
    return None
