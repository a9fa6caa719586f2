"""Admission: how many calls each caller may have in flight, so that no caller takes the service from
the others.

A single global counter (gRPC's `maximum_concurrent_rpcs`) lets one caller fill it and lock out every
terminal. gongji counts per caller instead: each credential has a fair share of the server's limit by
its kind (a terminal a quarter, the app backend half, an operator a tenth), and each institution's
terminals together half, so that a stolen terminal credential, or all the terminals of one
institution, hold only their share (limits.py says why these shares). Calls are admitted only once
authenticated: a call without valid credentials is refused at its headers and holds nothing
(gongji.api.interceptor).

The counts live in the process (one event loop, no locks needed); with several workers or replicas each
has its own, which only makes the shares per process. Refusals are RESOURCE_EXHAUSTED with the reason
SERVER_BUSY or CALLER_BUSY (gongji.errors.Overloaded).
"""

from __future__ import annotations

from typing import TypeVar

from gongji import errors, limits
from gongji.store.credentials import Kind, Principal

K = TypeVar("K", int, str)


def share(total: int, percent: int) -> int:
    """`percent` of `total`, at least one call."""
    return max(1, total * percent // 100)


class Admission:
    def __init__(self, calls_in_flight_max: int) -> None:
        self.calls_in_flight_max = calls_in_flight_max
        self._per_kind = {
            Kind.TERMINAL: share(calls_in_flight_max, limits.CALLS_IN_FLIGHT_TERMINAL_PERCENT),
            Kind.APP: share(calls_in_flight_max, limits.CALLS_IN_FLIGHT_APP_PERCENT),
            Kind.OPERATOR: share(calls_in_flight_max, limits.CALLS_IN_FLIGHT_OPERATOR_PERCENT),
            Kind.CONSUMER: share(calls_in_flight_max, limits.CALLS_IN_FLIGHT_CONSUMER_PERCENT),
        }
        self._per_institution = share(calls_in_flight_max, limits.CALLS_IN_FLIGHT_INSTITUTION_PERCENT)
        self.in_flight = 0
        # Only callers with calls in flight have an entry: the maps never outgrow the calls admitted.
        self._by_credential: dict[int, int] = {}
        self._by_institution: dict[str, int] = {}

    def admit(self, principal: Principal) -> _Admitted:
        """Hold one of `principal`'s calls in flight for the `with` block, or refuse it as it is entered.
        (A small class rather than @contextlib.contextmanager: it wraps every call, and a generator-based
        one costs about as much again as the counting.)"""
        return _Admitted(self, principal)

    def _take(self, principal: Principal) -> None:
        credential, institution = principal.credential_id, principal.institution_id
        if self.in_flight >= self.calls_in_flight_max:
            raise errors.ServerBusy("the server has all the calls in flight it takes; retry shortly")
        if self._by_credential.get(credential, 0) >= self._per_kind[principal.kind] or (
            institution is not None and self._by_institution.get(institution, 0) >= self._per_institution
        ):
            raise errors.CallerBusy("this caller has all the calls in flight it may have; retry shortly")
        self.in_flight += 1
        _add(self._by_credential, credential, 1)
        if institution is not None:
            _add(self._by_institution, institution, 1)

    def _give_back(self, principal: Principal) -> None:
        self.in_flight -= 1
        _add(self._by_credential, principal.credential_id, -1)
        if principal.institution_id is not None:
            _add(self._by_institution, principal.institution_id, -1)


class _Admitted:
    """One call held in flight while its `with` block runs (taken on entry, given back on exit)."""

    __slots__ = ("_admission", "_principal")

    def __init__(self, admission: Admission, principal: Principal) -> None:
        self._admission = admission
        self._principal = principal

    def __enter__(self) -> None:
        self._admission._take(self._principal)

    def __exit__(self, *_exc: object) -> None:
        self._admission._give_back(self._principal)


def _add(counts: dict[K, int], key: K, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        del counts[key]
