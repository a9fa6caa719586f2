"""The institution's own books, client side: its detail list read from the CSV it exports, parsed exactly,
sorted on the key the contract names, checked against gongji page by page (CheckDetail, 3202), and
totalled for CheckTotals (3201). Used by `gongji client check-totals|check-detail` (docs/cli.md).

The CSV: a header row, then one row per settlement, refund or reversal. Columns are found by their
header name, others are ignored (an export may carry dates, names, invoice numbers):
- `kind`: settlement, cancel, reversal (of a settlement) or refund_reversal (of a cancel);
- `request_id`: the Settle's, the Cancel's; for a reversal the original Settle's, for a refund_reversal
  the reversed Cancel's;
- `amount`, `acct_pay`, `acct_mulaid_pay`, `psn_cash_pay`: yuan with exactly two decimals
  (`12.30`, no sign, no thousands separator), read as whole fen without floating point;
- `wallet_pay` (optional): what the patient's 医保钱包 paid (or got back), in the same shape; books that
  know no wallet leave the column out, and every row reads as 0 from it;
- `insutype` (optional): 310 or 390, for totals by insurance type;
- `clearing_class` (optional): 11 (outpatient), 21 (inpatient) or 41 (pharmacy), or empty for a row of
  no kind of care, for totals by clearing class (清算类别).
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gongji.v1 import settlement_pb2 as pb

KINDS = {
    "settlement": pb.DETAIL_KIND_SETTLEMENT,
    "cancel": pb.DETAIL_KIND_CANCEL,
    "reversal": pb.DETAIL_KIND_REVERSAL,
    "refund_reversal": pb.DETAIL_KIND_REFUND_REVERSAL,
}
AMOUNT_COLUMNS = ("amount", "acct_pay", "acct_mulaid_pay", "psn_cash_pay")
WALLET_COLUMN = "wallet_pay"  # optional: absent, every row's wallet part is 0
_YUAN = re.compile(r"([0-9]{1,12})\.([0-9]{2})")
PAGE_ROWS = 1_000  # the contract's most


class BooksError(ValueError):
    """The CSV is not in the documented shape: names the line and the column."""


@dataclass(frozen=True, slots=True)
class BookRow:
    kind: pb.DetailKind.ValueType  # the first part of the sort key
    request_id: str
    fen: tuple[int, int, int, int, int]  # amount, acct_pay, acct_mulaid_pay, psn_cash_pay, wallet_pay
    insutype: str
    clearing_class: str = ""

    @property
    def key(self) -> tuple[int, bytes]:
        return self.kind, self.request_id.encode()


def yuan_to_fen(text: str) -> int:
    """'12.30' -> 1230, exactly; anything but yuan with two decimals is refused."""
    match = _YUAN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not yuan with two decimals, such as 12.30")
    return int(match[1]) * 100 + int(match[2])


def read(path: Path) -> list[BookRow]:
    """Every row of the CSV, sorted by (kind, request_id in byte order)."""
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("kind", "request_id", *AMOUNT_COLUMNS) if c not in header]
        if missing:
            raise BooksError(f"{path.name}: no column {', '.join(missing)} in the header")
        wallet = WALLET_COLUMN in header
        for line, record in enumerate(reader, start=2):
            rows.append(_row(path.name, line, record, wallet=wallet))
    rows.sort(key=lambda r: r.key)
    for a, b in itertools.pairwise(rows):
        if a.key == b.key:
            raise BooksError(f"{path.name}: {a.request_id} is listed twice as a {_kind_word(a.kind)}")
    return rows


def _row(name: str, line: int, record: dict[str, Any], *, wallet: bool) -> BookRow:
    """One row; with `wallet` (the header has the column) its wallet_pay is read like the other amounts."""
    kind = KINDS.get((record["kind"] or "").strip().lower())
    if kind is None:
        raise BooksError(f"{name} line {line}: kind must be one of {', '.join(KINDS)}")
    columns = (*AMOUNT_COLUMNS, WALLET_COLUMN) if wallet else AMOUNT_COLUMNS
    try:
        fen = [yuan_to_fen(record[c] or "") for c in columns]
    except ValueError as exc:
        raise BooksError(f"{name} line {line}: {exc}") from None
    wallet_fen = fen[4] if wallet else 0
    insutype = (record.get("insutype") or "").strip()
    clearing_class = (record.get("clearing_class") or "").strip()
    request_id = (record["request_id"] or "").strip()
    return BookRow(kind, request_id, (fen[0], fen[1], fen[2], fen[3], wallet_fen), insutype, clearing_class)


def _kind_word(kind: pb.DetailKind.ValueType) -> str:
    return next(w for w, k in KINDS.items() if k == kind)


def _detail_row(r: BookRow) -> pb.DetailRow:
    amount, own, mulaid, cash, wallet = r.fen
    amounts = pb.DetailAmounts(
        amount_fen=amount, acct_pay_fen=own, acct_mulaid_pay_fen=mulaid, psn_cash_pay_fen=cash, wallet_pay_fen=wallet
    )
    return pb.DetailRow(kind=r.kind, request_id=r.request_id, amounts=amounts)


CheckDetail = Callable[[pb.CheckDetailRequest], Awaitable[pb.CheckDetailResponse]]


async def check_detail(
    call: CheckDetail, rows: list[BookRow], base: pb.CheckDetailRequest, page_rows: int = PAGE_ROWS
) -> pb.CheckDetailResponse:
    """Every page of `rows` (sorted) checked through `call`; the differences of all the pages in one
    answer. `base` carries the institution and the days."""
    total = pb.CheckDetailResponse(complete=True)
    at = 0  # rows before `at` are compared
    after: pb.DetailKey | None = None
    while True:
        page = rows[at : at + page_rows]
        last_page = at + page_rows >= len(rows)
        request = pb.CheckDetailRequest()
        request.CopyFrom(base)
        request.rows.extend(_detail_row(r) for r in page)
        if after is not None:
            request.after_key.CopyFrom(after)
        if not last_page:
            request.through_key.CopyFrom(pb.DetailKey(kind=page[-1].kind, request_id=page[-1].request_id))
        reply = await call(request)
        total.differences.extend(reply.differences)
        total.institution_rows += reply.institution_rows
        total.gongji_rows += reply.gongji_rows
        if reply.complete and last_page:
            return total
        # Continue after what was compared: the rest of this page (or the next page) and gongji's rows.
        after = reply.compared_through
        through = (after.kind, after.request_id.encode())
        at += sum(1 for r in page if r.key <= through)


# The column each grouping reads (the words of `check-totals --grouping`); none: one line, group "".
GROUP_COLUMNS = {"all": None, "insutype": "insutype", "clearing_class": "clearing_class"}


def totals_lines(rows: Iterable[BookRow], *, grouping: str, refunds: str) -> list[pb.TotalsLine]:
    """The books' totals as CheckTotals lines: one line ('all'), or per value of the column `grouping`
    names ('insutype', 'clearing_class'); refunds 'apart', 'netted' (a refund is one more record and
    takes its amounts off, a reversal of a refund puts them back) or 'excluded'."""
    column = GROUP_COLUMNS[grouping]
    lines: dict[str, list[list[int]]] = {}
    for r in rows:
        sides = lines.setdefault(getattr(r, column) if column else "", [[0] * 6, [0] * 6, [0] * 6])
        if r.kind != pb.DETAIL_KIND_SETTLEMENT and refunds == "excluded":
            continue
        side = {pb.DETAIL_KIND_SETTLEMENT: 0, pb.DETAIL_KIND_REFUND_REVERSAL: 2}.get(r.kind, 1)
        sign = -1 if side == 1 else 1
        target = sides[side] if refunds == "apart" else sides[0]
        target[0] += 1
        for i, fen in enumerate(r.fen, start=1):
            target[i] += fen if refunds == "apart" else sign * fen
    out = []
    for group, (settled, refunded, reversed_) in sorted(lines.items()):
        line = pb.TotalsLine(group=group, settled=_figures(settled))
        if refunds == "apart":
            line.refunded.CopyFrom(_figures(refunded))
            line.refunds_reversed.CopyFrom(_figures(reversed_))
        out.append(line)
    return out


def _figures(f: list[int]) -> pb.TotalsFigures:
    return pb.TotalsFigures(
        count=f[0], amount_fen=f[1], acct_pay_fen=f[2], acct_mulaid_pay_fen=f[3], psn_cash_pay_fen=f[4],
        wallet_pay_fen=f[5],
    )  # fmt: skip
