"""CheckTotals (3201) and CheckDetail (3202): the institution's books against gongji's, for
SettlementService. Each reads a bounded amount whatever the caller sends: at most 31 days, 8 lines,
1,000 rows of the institution and 1,000 of gongji's per call (gongji.limits)."""

from __future__ import annotations

import datetime as dt

import asyncpg

from gongji import errors, limits
from gongji.api import convert
from gongji.api.app import timestamp
from gongji.api.auth import current_principal
from gongji.api.validate import CHINA, Fields, china_today
from gongji.domain import reconcile as rules
from gongji.domain.bill import CLEARING_CLASSES, Insutype
from gongji.domain.reconcile import Amounts, DetailKind, Figures, Key, Line, RefundTreatment, Row
from gongji.store import lifecycle, reconcile
from gongji.store.credentials import Kind
from gongji.store.reconcile import Grouping
from gongji.v1 import settlement_pb2 as pb

_GROUPING_NAMES = convert.names(pb.TotalsGrouping.DESCRIPTOR)
_TREATMENT_NAMES = convert.names(pb.RefundTreatment.DESCRIPTOR)
_KIND_NAMES = convert.names(pb.DetailKind.DESCRIPTOR)
# The groups a line may name, per grouping: those gongji's side may have (store.reconcile).
_GROUPS = {
    Grouping.ALL: frozenset({""}),
    Grouping.INSUTYPE: frozenset(i.value for i in Insutype),
    Grouping.CLEARING_CLASS: CLEARING_CLASSES,
}
_FIRST_DAY = dt.date(1900, 1, 1)
_SOURCES = "acct_pay_fen + acct_mulaid_pay_fen + wallet_pay_fen + psn_cash_pay_fen"


def _days(fields: Fields, start_date: str, end_date: str) -> tuple[dt.date, dt.date]:
    today = china_today()
    first = fields.calendar_day("start_date", start_date, _FIRST_DAY, today)
    last = fields.calendar_day("end_date", end_date, _FIRST_DAY, today)
    if first and last and last < first:
        fields.bad("end_date", "must not be before start_date")
    elif first and last and (last - first).days >= limits.RECONCILE_CHECK_DAYS_MAX:
        fields.bad("end_date", f"the range is at most {limits.RECONCILE_CHECK_DAYS_MAX} days")
    return first or today, last or today


async def _known(pool: asyncpg.Pool, institution_id: str) -> None:
    """An operator reads "no activity" only for an institution that exists; a wrong id is an error."""
    if current_principal.get().kind is Kind.OPERATOR and not await lifecycle.institution_exists(pool, institution_id):
        raise errors.InstitutionNotFound("no institution with this id")


def _figures(fields: Fields, field: str, f: pb.TotalsFigures, *, netted: bool) -> Figures:
    floor = -limits.RECONCILE_TOTALS_FEN_MAX if netted else 0
    if not 0 <= f.count <= limits.RECONCILE_TOTALS_COUNT_MAX:
        fields.bad(f"{field}.count", f"must be 0 to {limits.RECONCILE_TOTALS_COUNT_MAX}")
    sums = (f.amount_fen, f.acct_pay_fen, f.acct_mulaid_pay_fen, f.psn_cash_pay_fen, f.wallet_pay_fen)
    figures = Figures(f.count, *sums)
    if not all(floor <= x <= limits.RECONCILE_TOTALS_FEN_MAX for x in sums):
        fields.bad(f"{field}.amount_fen", f"every sum must be {floor} to {limits.RECONCILE_TOTALS_FEN_MAX} fen")
    elif not figures.adds_up():
        fields.bad(f"{field}.amount_fen", f"must equal {_SOURCES}")
    return figures


def _lines(
    fields: Fields, request: pb.CheckTotalsRequest, grouping: Grouping, treat: RefundTreatment
) -> dict[str, Line]:
    if len(request.lines) > limits.RECONCILE_TOTALS_LINES_MAX:
        fields.bad("lines", f"at most {limits.RECONCILE_TOTALS_LINES_MAX} lines")
        return {}
    lines: dict[str, Line] = {}
    for i, line in enumerate(request.lines):
        if line.group not in _GROUPS[grouping]:
            allowed = " or ".join(f"'{g}'" for g in sorted(_GROUPS[grouping]))
            fields.bad(f"lines[{i}].group", f"must be {allowed} with grouping {grouping.value}")
        elif line.group in lines:
            fields.bad(f"lines[{i}].group", "each group once")
        if line.HasField("refunded") and treat is not RefundTreatment.APART:
            fields.bad(f"lines[{i}].refunded", "only with REFUND_TREATMENT_APART")
        if line.HasField("refunds_reversed") and treat is not RefundTreatment.APART:
            fields.bad(f"lines[{i}].refunds_reversed", "only with REFUND_TREATMENT_APART")
        netted = treat is RefundTreatment.NETTED
        settled = _figures(fields, f"lines[{i}].settled", line.settled, netted=netted)
        refunded = _figures(fields, f"lines[{i}].refunded", line.refunded, netted=False)
        back = _figures(fields, f"lines[{i}].refunds_reversed", line.refunds_reversed, netted=False)
        lines[line.group] = Line(settled, refunded, back) if treat is RefundTreatment.APART else Line(settled)
    return lines


def _choice(fields: Fields, field: str, value: int, names: dict[int, str], prefix: str, default: str) -> str:
    """An enum of the request by its name without the prefix; UNSPECIFIED is `default`."""
    name = names.get(value, "").removeprefix(prefix)
    if not name:
        fields.bad(field, "must be one of the listed values")
    return default if name in ("UNSPECIFIED", "") else name


async def check_totals(
    pool: asyncpg.Pool, fields: Fields, institution_id: str, request: pb.CheckTotalsRequest
) -> pb.CheckTotalsResponse:
    first, last = _days(fields, request.start_date, request.end_date)
    grouping = Grouping(_choice(fields, "grouping", request.grouping, _GROUPING_NAMES, "TOTALS_GROUPING_", "ALL"))
    treat = RefundTreatment(_choice(fields, "refunds", request.refunds, _TREATMENT_NAMES, "REFUND_TREATMENT_", "APART"))
    theirs = _lines(fields, request, grouping, treat)
    fields.done()
    await _known(pool, institution_id)
    start = dt.datetime(first.year, first.month, first.day, tzinfo=CHINA)
    end = dt.datetime(last.year, last.month, last.day, tzinfo=CHINA) + dt.timedelta(days=1)  # no DST in China
    gongji = await reconcile.totals(pool, institution_id, start, end, grouping)
    ours = {g: rules.as_treated(line, treat) for g, line in gongji.items()}
    checks = rules.compare_totals(theirs, ours)
    return pb.CheckTotalsResponse(
        institution_id=institution_id,
        start_date=first.isoformat(),
        end_date=last.isoformat(),
        grouping=pb.TotalsGrouping.Value(f"TOTALS_GROUPING_{grouping.value}"),
        refunds=pb.RefundTreatment.Value(f"REFUND_TREATMENT_{treat.value}"),
        agree=all(c.agree for c in checks),
        lines=[
            pb.TotalsLineCheck(
                group=c.group, agree=c.agree, institution=_line(c.group, c.institution, treat),
                gongji=_line(c.group, c.gongji, treat),
            )
            for c in checks
        ],
    )  # fmt: skip


def _line(group: str, line: Line, treat: RefundTreatment) -> pb.TotalsLine:
    out = pb.TotalsLine(group=group, settled=_totals_figures(line.settled))
    if treat is RefundTreatment.APART:
        out.refunded.CopyFrom(_totals_figures(line.refunded))
        out.refunds_reversed.CopyFrom(_totals_figures(line.refunds_reversed))
    return out


def _totals_figures(f: Figures) -> pb.TotalsFigures:
    return pb.TotalsFigures(
        count=f.count, amount_fen=f.amount_fen, acct_pay_fen=f.acct_pay_fen,
        acct_mulaid_pay_fen=f.acct_mulaid_pay_fen, psn_cash_pay_fen=f.psn_cash_pay_fen,
        wallet_pay_fen=f.wallet_pay_fen,
    )  # fmt: skip


# ---- 3202 ---------------------------------------------------------------------------------------------
def _key(fields: Fields, field: str, kind: int, request_id: str) -> Key | None:
    name = _KIND_NAMES.get(kind, "").removeprefix("DETAIL_KIND_")
    if name not in DetailKind.__members__:
        fields.bad(f"{field}.kind", "is required and must be one of the listed values")
    fields.request_id(f"{field}.request_id", request_id)
    return (DetailKind[name], request_id) if name in DetailKind.__members__ else None


def _amounts(fields: Fields, field: str, a: pb.DetailAmounts) -> Amounts:
    amounts = Amounts(a.amount_fen, a.acct_pay_fen, a.acct_mulaid_pay_fen, a.psn_cash_pay_fen, a.wallet_pay_fen)
    parts = (a.acct_pay_fen, a.acct_mulaid_pay_fen, a.wallet_pay_fen, a.psn_cash_pay_fen)
    if not 0 < a.amount_fen <= limits.AMOUNT_FEN_MAX:
        fields.amount(f"{field}.amount_fen", a.amount_fen, limits.AMOUNT_FEN_MAX)
    elif not all(p >= 0 for p in parts) or not amounts.adds_up():
        fields.bad(f"{field}.amount_fen", f"must equal {_SOURCES}, each >= 0", amount=True)
    return amounts


def _rows(fields: Fields, request: pb.CheckDetailRequest, after: Key | None, through: Key | None) -> list[Row]:
    if len(request.rows) > limits.RECONCILE_DETAIL_ROWS_MAX:
        fields.bad("rows", f"at most {limits.RECONCILE_DETAIL_ROWS_MAX} rows a page")
        return []
    rows: list[Row] = []
    previous = after
    for i, r in enumerate(request.rows):
        key = _key(fields, f"rows[{i}]", r.kind, r.request_id)
        amounts = _amounts(fields, f"rows[{i}].amounts", r.amounts)
        if key is None:
            continue
        if previous is not None and key <= previous:
            what = "after_key" if previous == after else "the previous row"
            fields.bad(f"rows[{i}]", f"must come after {what} in (kind, request_id) order")
        elif through is not None and key > through:
            fields.bad(f"rows[{i}]", "must not come after through_key")
        previous = key
        rows.append(Row(key, amounts))
    return rows


def _stretch(fields: Fields, request: pb.CheckDetailRequest) -> tuple[Key | None, Key | None]:
    after = _key(fields, "after_key", request.after_key.kind, request.after_key.request_id) if (
        request.HasField("after_key")) else None  # fmt: skip
    through = _key(fields, "through_key", request.through_key.kind, request.through_key.request_id) if (
        request.HasField("through_key")) else None  # fmt: skip
    if after is not None and through is not None and not after < through:
        fields.bad("through_key", "must come after after_key")
    return after, through


async def check_detail(
    pool: asyncpg.Pool, fields: Fields, institution_id: str, request: pb.CheckDetailRequest
) -> pb.CheckDetailResponse:
    days = _days(fields, request.start_date, request.end_date)
    after, through = _stretch(fields, request)
    theirs = _rows(fields, request, after, through)
    fields.done()
    await _known(pool, institution_id)
    most = limits.RECONCILE_DETAIL_GONGJI_ROWS_MAX
    ours = await reconcile.stretch(pool, institution_id, days, after, through, most + 1)
    compared_through, complete = through, len(ours) <= most
    if not complete:
        # More of gongji's rows in the stretch than one answer compares: stop at the last one compared.
        ours = ours[:most]
        compared_through = ours[-1].row.key
        theirs = [r for r in theirs if r.key <= compared_through]
    where = {r.row.key: r for r in ours}
    reply = pb.CheckDetailResponse(complete=complete, institution_rows=len(theirs), gongji_rows=len(ours))
    if compared_through is not None:
        reply.compared_through.CopyFrom(_detail_key(compared_through))
    for d in rules.compare_detail(theirs, (r.row for r in ours)):
        out = reply.differences.add(
            key=_detail_key(d.key),
            difference=pb.DetailDifferenceKind.Value(f"DETAIL_DIFFERENCE_KIND_{d.difference.value}"),
        )
        if d.institution is not None:
            out.institution.CopyFrom(_detail_amounts(d.institution.amounts))
        if d.gongji is not None:
            record = where[d.key]
            out.gongji.CopyFrom(_detail_amounts(d.gongji.amounts))
            out.settlement_id = str(record.settlement_id)
            created_at = timestamp(record.created_at)
            assert created_at is not None
            out.created_at.CopyFrom(created_at)
    return reply


def _detail_key(key: Key) -> pb.DetailKey:
    return pb.DetailKey(kind=pb.DetailKind.Value(f"DETAIL_KIND_{key[0].name}"), request_id=key[1])


def _detail_amounts(a: Amounts) -> pb.DetailAmounts:
    return pb.DetailAmounts(
        amount_fen=a.amount_fen, acct_pay_fen=a.acct_pay_fen, acct_mulaid_pay_fen=a.acct_mulaid_pay_fen,
        psn_cash_pay_fen=a.psn_cash_pay_fen, wallet_pay_fen=a.wallet_pay_fen,
    )  # fmt: skip
