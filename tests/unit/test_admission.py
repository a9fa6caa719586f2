"""Admission's fair shares, without a server: who may have how many calls in flight."""

from __future__ import annotations

import contextlib

import pytest

from gongji import errors, limits
from gongji.api.admission import Admission, share
from gongji.store.credentials import Kind, Principal

TOTAL = 100


def _terminal(credential_id: int, institution: str = "H1") -> Principal:
    return Principal(credential_id, Kind.TERMINAL, institution, f"POS-{credential_id}")


APP = Principal(900, Kind.APP, None, None)
OPERATOR = Principal(901, Kind.OPERATOR, None, None)


def _hold(admission: Admission, stack: contextlib.ExitStack, principal: Principal, n: int) -> None:
    for _ in range(n):
        stack.enter_context(admission.admit(principal))


def test_a_credential_holds_its_share_and_no_more() -> None:
    admission = Admission(TOTAL)
    terminal_share = share(TOTAL, limits.CALLS_IN_FLIGHT_TERMINAL_PERCENT)
    with contextlib.ExitStack() as stack:
        _hold(admission, stack, _terminal(1), terminal_share)
        with pytest.raises(errors.CallerBusy), admission.admit(_terminal(1)):
            pass
        # Another terminal of the same institution, and other kinds, are still admitted.
        with admission.admit(_terminal(2)), admission.admit(APP), admission.admit(OPERATOR):
            assert admission.in_flight == terminal_share + 3
    assert admission.in_flight == 0


def test_an_institution_holds_its_share_across_its_terminals() -> None:
    admission = Admission(TOTAL)
    institution_share = share(TOTAL, limits.CALLS_IN_FLIGHT_INSTITUTION_PERCENT)
    terminal_share = share(TOTAL, limits.CALLS_IN_FLIGHT_TERMINAL_PERCENT)
    with contextlib.ExitStack() as stack:
        for credential in range(institution_share // terminal_share):
            _hold(admission, stack, _terminal(credential), terminal_share)
        assert admission.in_flight == institution_share
        with pytest.raises(errors.CallerBusy), admission.admit(_terminal(99)):
            pass
        with admission.admit(_terminal(99, institution="H2")):
            pass


def test_the_server_refuses_beyond_its_total() -> None:
    admission = Admission(TOTAL)
    with contextlib.ExitStack() as stack:
        for institution in range(TOTAL):
            _hold(admission, stack, _terminal(institution, f"H{institution}"), 1)
        with pytest.raises(errors.ServerBusy), admission.admit(APP):
            pass


def test_a_call_that_fails_gives_its_place_back() -> None:
    admission = Admission(TOTAL)
    with pytest.raises(RuntimeError), admission.admit(_terminal(1)):
        raise RuntimeError("the call failed")
    assert admission.in_flight == 0
    # Nothing is kept for a caller with no call in flight, so the counts never outgrow the calls.
    assert admission._by_credential == {} and admission._by_institution == {}


def test_every_share_is_at_least_one_call() -> None:
    admission = Admission(1)
    with admission.admit(OPERATOR), pytest.raises(errors.ServerBusy), admission.admit(APP):
        pass
