"""Reconciliation against the institution's books (3201, 3202): the comparisons, without I/O.

Totals: lines keyed by group, each side's figures (settled, refunded), agreeing when every figure is
equal. Detail: two lists sorted by the same key, (kind, request_id), merged in one pass; only the rows
that differ come out. Request ids are ASCII, so Python's string order is the byte order (collate "C")
that the database and the institution sort by.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class DetailKind(enum.IntEnum):
    """The kinds of rows, numbered as in the contract: the number orders the key space."""

    SETTLEMENT = 1
    CANCEL = 2
    REVERSAL = 3
    REFUND_REVERSAL = 4


Key = tuple[DetailKind, str]


class Difference(enum.Enum):
    MISSING_IN_GONGJI = "MISSING_IN_GONGJI"
    MISSING_IN_INSTITUTION = "MISSING_IN_INSTITUTION"
    AMOUNTS_DIFFER = "AMOUNTS_DIFFER"


@dataclass(frozen=True, slots=True)
class Amounts:
    amount_fen: int
    acct_pay_fen: int
    acct_mulaid_pay_fen: int
    psn_cash_pay_fen: int
    wallet_pay_fen: int  # the patient's 医保钱包 (0 in books that know no wallet)

    def adds_up(self) -> bool:
        parts = self.acct_pay_fen + self.acct_mulaid_pay_fen + self.wallet_pay_fen + self.psn_cash_pay_fen
        return parts == self.amount_fen


@dataclass(frozen=True, slots=True)
class Row:
    key: Key
    amounts: Amounts


@dataclass(frozen=True, slots=True)
class Differing:
    key: Key
    difference: Difference
    institution: Row | None
    gongji: Row | None


def compare_detail(institution: Iterable[Row], gongji: Iterable[Row]) -> Iterator[Differing]:
    """The rows that differ between two lists sorted by key, strictly increasing, in key order."""
    theirs, ours = iter(institution), iter(gongji)
    a, b = next(theirs, None), next(ours, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.key < b.key):
            assert a is not None
            yield Differing(a.key, Difference.MISSING_IN_GONGJI, a, None)
            a = next(theirs, None)
        elif a is None or b.key < a.key:
            yield Differing(b.key, Difference.MISSING_IN_INSTITUTION, None, b)
            b = next(ours, None)
        else:
            if a.amounts != b.amounts:
                yield Differing(a.key, Difference.AMOUNTS_DIFFER, a, b)
            a, b = next(theirs, None), next(ours, None)


@dataclass(frozen=True, slots=True)
class Figures:
    count: int = 0
    amount_fen: int = 0
    acct_pay_fen: int = 0
    acct_mulaid_pay_fen: int = 0
    psn_cash_pay_fen: int = 0
    wallet_pay_fen: int = 0

    def adds_up(self) -> bool:
        parts = self.acct_pay_fen + self.acct_mulaid_pay_fen + self.wallet_pay_fen + self.psn_cash_pay_fen
        return parts == self.amount_fen


ZERO = Figures()


class RefundTreatment(enum.Enum):
    APART = "APART"
    NETTED = "NETTED"
    EXCLUDED = "EXCLUDED"


@dataclass(frozen=True, slots=True)
class Line:
    settled: Figures = ZERO
    refunded: Figures = ZERO
    refunds_reversed: Figures = ZERO


def as_treated(line: Line, treatment: RefundTreatment) -> Line:
    """gongji's figures of one group as the institution's treatment of refunds reads them: netted, a
    refund is one more record that takes its amounts off the sums, and a reversal of a refund one more
    record that puts them back."""
    if treatment is RefundTreatment.APART:
        return line
    if treatment is RefundTreatment.NETTED:
        return Line(_netted(line))
    return Line(line.settled)


def _netted(line: Line) -> Figures:
    s, r, b = line.settled, line.refunded, line.refunds_reversed
    return Figures(
        s.count + r.count + b.count,
        s.amount_fen - r.amount_fen + b.amount_fen,
        s.acct_pay_fen - r.acct_pay_fen + b.acct_pay_fen,
        s.acct_mulaid_pay_fen - r.acct_mulaid_pay_fen + b.acct_mulaid_pay_fen,
        s.psn_cash_pay_fen - r.psn_cash_pay_fen + b.psn_cash_pay_fen,
        s.wallet_pay_fen - r.wallet_pay_fen + b.wallet_pay_fen,
    )


@dataclass(frozen=True, slots=True)
class LineCheck:
    group: str
    agree: bool
    institution: Line
    gongji: Line


def compare_totals(institution: dict[str, Line], gongji: dict[str, Line]) -> list[LineCheck]:
    """One check per group either side has, in group order."""
    checks = []
    for group in sorted(institution.keys() | gongji.keys()):
        theirs, ours = institution.get(group, Line()), gongji.get(group, Line())
        checks.append(LineCheck(group, theirs == ours, theirs, ours))
    return checks
