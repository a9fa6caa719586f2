"""Checks against the institution's books (CheckTotals 3201, CheckDetail 3202), over a real server: the
totals by line and refund treatment, the detail's differences found exactly, the patient's 医保钱包 as a
source of its own, 100,000 rows of a day in pages with the server's memory reported, and what a caller
may not do."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from harness import rss_kib
from support import CHILD, EMPLOYEE, RESIDENT, Api, bearer, cancel, field_violations, refused, reverse
from wallet_support import Wallets, funded

from gongji import books
from gongji.api.validate import china_today
from gongji.store import credentials
from gongji.store.credentials import Kind
from gongji.v1 import settlement_pb2 as pb
from gongji.v1 import types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
SETTLEMENT, CANCEL, REVERSAL = pb.DETAIL_KIND_SETTLEMENT, pb.DETAIL_KIND_CANCEL, pb.DETAIL_KIND_REVERSAL
REFUND_REVERSAL = pb.DETAIL_KIND_REFUND_REVERSAL


async def _institution(pool: asyncpg.Pool) -> tuple[str, str]:
    institution = f"H{uuid.uuid4().int % 10**11:011d}"
    token = await credentials.create(pool, Kind.TERMINAL, "check", institution_id=institution, terminal_id="P1")
    return institution, token


def _row(kind: int, request_id: str, amount: int, own: int, mulaid: int, cash: int, wallet: int = 0) -> books.BookRow:
    return books.BookRow(kind, request_id, (amount, own, mulaid, cash, wallet), "")


def _book(s: pb.Settlement | pb.Refund, kind: int, request_id: str, insutype: str = "") -> books.BookRow:
    fen = (s.amount_fen, s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.wallet_pay_fen)
    return books.BookRow(kind, request_id, fen, insutype)


async def _day_of_business(api: Api, pool: asyncpg.Pool) -> tuple[str, str, list[books.BookRow]]:
    """Settlements of an employee and a resident, two refunds, a reversal; the books as they should be."""
    institution, token = await _institution(pool)
    authorizer = await api.enroll(balance_fen=20_000, birth=dt.date(1960, 1, 1))
    employee = await api.enroll(balance_fen=700, birth=dt.date(1990, 1, 1))
    resident = await api.enroll(scheme=RESIDENT, birth=dt.date(2015, 1, 1))
    await api.grant(authorizer, employee, CHILD)
    await api.grant(authorizer, resident, CHILD)
    rows = []
    for i, (p, insutype) in enumerate([(employee, "310"), (resident, "390")] * 2):
        s = (await api.settle(p, 1_000 + 10 * i, request_id=f"s-{i}", token=token)).settlement
        rows.append(_book(s, SETTLEMENT, s.request_id, insutype))
    first = await _settlement(api, "s-0", token)
    refund = (await cancel(api, first.settlement_id, 300, request_id="c-0", token=token)).refund
    rows.append(_book(refund, CANCEL, "c-0", "310"))
    # A reversal returns all that was not refunded: here the whole settlement s-1.
    assert (await reverse(api, "s-1", token=token)).undone
    rows.append(books.BookRow(REVERSAL, "s-1", rows[1].fen, "390"))
    # A refund of s-2, reversed (2601 of a 2208): the refund stays, its reversal takes the money back.
    third = await _settlement(api, "s-2", token)
    refund = (await cancel(api, third.settlement_id, 200, request_id="c-1", token=token)).refund
    assert (await reverse(api, "c-1", token=token, kind=pb.ORIGINAL_KIND_CANCEL)).undone
    rows += [_book(refund, CANCEL, "c-1", "310"), _book(refund, REFUND_REVERSAL, "c-1", "310")]
    return institution, token, rows


async def _settlement(api: Api, request_id: str, token: str) -> pb.Settlement:
    reply = await api.settlement.GetSettlement(pb.GetSettlementRequest(request_id=request_id), metadata=bearer(token))
    return reply.settlement


def _today() -> str:
    return china_today().isoformat()


async def test_totals_agree_by_line_and_refund_treatment(api: Api, pool: asyncpg.Pool) -> None:
    institution, token, rows = await _day_of_business(api, pool)
    for grouping, word_of in ((pb.TOTALS_GROUPING_ALL, "all"), (pb.TOTALS_GROUPING_INSUTYPE, "insutype")):
        for refunds, word in ((pb.REFUND_TREATMENT_APART, "apart"), (pb.REFUND_TREATMENT_NETTED, "netted"),
                              (pb.REFUND_TREATMENT_EXCLUDED, "excluded")):  # fmt: skip
            lines = books.totals_lines(rows, grouping=word_of, refunds=word)
            request = pb.CheckTotalsRequest(
                start_date=_today(), end_date=_today(), grouping=grouping, refunds=refunds, lines=lines
            )
            reply = await api.settlement.CheckTotals(request, metadata=bearer(token))
            assert reply.agree, (grouping, word)
            assert [line.group for line in reply.lines] == (["310", "390"] if word_of == "insutype" else [""])
    # The defaults (one line, refunds apart), and a line that disagrees: both sides' figures come back.
    lines = books.totals_lines(rows, grouping="all", refunds="apart")
    lines[0].refunded.count += 1
    reply = await api.settlement.CheckTotals(
        pb.CheckTotalsRequest(start_date=_today(), end_date=_today(), lines=lines), metadata=bearer(token)
    )
    assert (reply.grouping, reply.refunds) == (pb.TOTALS_GROUPING_ALL, pb.REFUND_TREATMENT_APART)
    assert not reply.agree and not reply.lines[0].agree
    assert reply.lines[0].gongji.refunded.count == 3 and reply.lines[0].institution.refunded.count == 4
    assert reply.lines[0].gongji.refunds_reversed.count == 1
    assert reply.lines[0].gongji.settled.count == 4
    # Clearing class: settlements that did not say their med_type are group "". An operator names the
    # institution.
    reply = await api.settlement.CheckTotals(
        pb.CheckTotalsRequest(
            institution_id=institution, start_date=_today(), end_date=_today(),
            grouping=pb.TOTALS_GROUPING_CLEARING_CLASS,
        ),
        metadata=bearer(api.tokens.operator),
    )  # fmt: skip
    assert [(line.group, line.agree) for line in reply.lines] == [("", False)]
    assert reply.lines[0].gongji.settled.amount_fen == sum(r.fen[0] for r in rows if r.kind == SETTLEMENT)


async def _settle_as(
    api: Api, patient: str, request_id: str, token: str, med_type: int = 0, insutype: int = 0, wholly_fen: int = 0
) -> pb.Settlement:
    """A settlement of 1,000 fen (and `wholly_fen` wholly self-paid) of the kind of care and insurance
    the terminal says; its bill as parts when it says a med_type."""
    request = pb.SettleRequest(
        request_id=request_id, voucher=await api.voucher(patient), patient_id=patient,
        amount_fen=1_000 + wholly_fen, med_type=med_type, insutype=insutype,
    )  # fmt: skip
    if med_type:
        request.bill.CopyFrom(types_pb2.BillParts(in_scope_fen=1_000, wholly_self_paid_fen=wholly_fen))
    return (await api.settlement.Settle(request, metadata=bearer(token))).settlement


async def test_totals_group_by_the_insutype_and_clearing_class_the_settlement_recorded(
    api: Api, pool: asyncpg.Pool
) -> None:
    institution, token = await _institution(pool)
    employee = await api.enroll(balance_fen=10_000)
    resident = await api.enroll(scheme=RESIDENT)
    before = await api.enroll(balance_fen=10_000)  # settles as if before gongji recorded insutype
    made = [
        (
            await _settle_as(
                api, employee, "o-1", token, types_pb2.MED_TYPE_OUTPATIENT, types_pb2.INSUTYPE_EMPLOYEE_BASIC
            ),
            "11",
        ),
        (await _settle_as(api, employee, "e-1", token, types_pb2.MED_TYPE_EMERGENCY, wholly_fen=250), "11"),
        (await _settle_as(api, employee, "i-1", token, types_pb2.MED_TYPE_INPATIENT), "21"),
        (
            await _settle_as(
                api, resident, "p-1", token, types_pb2.MED_TYPE_PHARMACY, types_pb2.INSUTYPE_RESIDENT_BASIC
            ),
            "41",
        ),
        (await _settle_as(api, resident, "c-1", token, types_pb2.MED_TYPE_CHRONIC_OUTPATIENT), "11"),
        (await _settle_as(api, resident, "n-1", token), ""),  # no med_type: no clearing class
        (await _settle_as(api, before, "b-1", token, types_pb2.MED_TYPE_PHARMACY), "41"),
    ]
    assert [s.insutype for s, _ in made] == [types_pb2.INSUTYPE_EMPLOYEE_BASIC] * 3 + [
        types_pb2.INSUTYPE_RESIDENT_BASIC
    ] * 3 + [types_pb2.INSUTYPE_EMPLOYEE_BASIC]
    refund = (await cancel(api, made[3][0].settlement_id, 400, request_id="r-1", token=token)).refund
    # The employee becomes resident-insured after settling: the settlements keep the insutype they
    # recorded. A settlement with none recorded (made before migration 0015) counts under its patient's
    # scheme now: `before` becomes resident-insured too, and b-1 counts as 390.
    await pool.execute("update settlement set insutype = null where institution_id = $1 and request_id = 'b-1'",
                       institution)  # fmt: skip
    await api.enroll(person_id=employee, scheme=RESIDENT, balance_fen=0)
    await api.enroll(person_id=before, scheme=RESIDENT, balance_fen=0)
    insutype = {"o-1": "310", "e-1": "310", "i-1": "310", "p-1": "390", "c-1": "390", "n-1": "390", "b-1": "390"}
    rows = [
        books.BookRow(SETTLEMENT, s.request_id, _book(s, SETTLEMENT, s.request_id).fen, insutype[s.request_id], c)
        for s, c in made
    ]
    rows.append(books.BookRow(CANCEL, "r-1", _book(refund, CANCEL, "r-1").fen, "390", "41"))
    expected = {"insutype": ["310", "390"], "clearing_class": ["", "11", "21", "41"]}
    for grouping, word in ((pb.TOTALS_GROUPING_INSUTYPE, "insutype"), (pb.TOTALS_GROUPING_CLEARING_CLASS,
                                                                        "clearing_class")):  # fmt: skip
        for refunds, treatment in ((pb.REFUND_TREATMENT_APART, "apart"), (pb.REFUND_TREATMENT_NETTED, "netted")):
            lines = books.totals_lines(rows, grouping=word, refunds=treatment)
            request = pb.CheckTotalsRequest(
                start_date=_today(), end_date=_today(), grouping=grouping, refunds=refunds, lines=lines
            )
            reply = await api.settlement.CheckTotals(request, metadata=bearer(token))
            assert reply.agree, (word, treatment, reply)
            assert [line.group for line in reply.lines] == expected[word]
    by_class = {
        line.group: line.gongji
        for line in (
            await api.settlement.CheckTotals(
                pb.CheckTotalsRequest(
                    start_date=_today(), end_date=_today(), grouping=pb.TOTALS_GROUPING_CLEARING_CLASS
                ),
                metadata=bearer(token),
            )
        ).lines
    }
    assert {g: (line.settled.count, line.settled.amount_fen) for g, line in by_class.items()} == {
        "": (1, 1_000), "11": (3, 3_250), "21": (1, 1_000), "41": (2, 2_000)
    }  # fmt: skip
    assert (by_class["41"].refunded.count, by_class["41"].refunded.amount_fen) == (1, 400)
    # A line may name only a group gongji's side may have.
    bad = pb.TotalsLine(group="13", settled=pb.TotalsFigures())
    request = pb.CheckTotalsRequest(
        start_date=_today(), end_date=_today(), grouping=pb.TOTALS_GROUPING_CLEARING_CLASS, lines=[bad]
    )
    error = await refused(
        api.settlement.CheckTotals(request, metadata=bearer(token)), S.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert field_violations(error) == ["lines[0].group"]


async def test_detail_answers_only_the_rows_that_differ(api: Api, pool: asyncpg.Pool) -> None:
    _, token, rows = await _day_of_business(api, pool)
    call = _caller(api, token)
    base = pb.CheckDetailRequest(start_date=_today(), end_date=_today())
    agreed = await books.check_detail(call, sorted(rows, key=lambda r: r.key), base, page_rows=2)
    assert list(agreed.differences) == [] and agreed.institution_rows == agreed.gongji_rows == len(rows)

    changed = [r for r in rows if r.request_id != "s-2"]  # missing in the institution's books
    changed.append(_row(SETTLEMENT, "s-9", 500, 0, 0, 500))  # missing in gongji
    changed = [
        _row(CANCEL, "c-0", 301, 0, 0, 301) if r.key == (CANCEL, b"c-0") else r for r in changed
    ]  # amounts differ
    found = await books.check_detail(call, sorted(changed, key=lambda r: r.key), base, page_rows=2)
    got = [(d.key.kind, d.key.request_id, d.difference) for d in found.differences]
    assert got == [
        (SETTLEMENT, "s-2", pb.DETAIL_DIFFERENCE_KIND_MISSING_IN_INSTITUTION),
        (SETTLEMENT, "s-9", pb.DETAIL_DIFFERENCE_KIND_MISSING_IN_GONGJI),
        (CANCEL, "c-0", pb.DETAIL_DIFFERENCE_KIND_AMOUNTS_DIFFER),
    ]
    missing, extra, differ = found.differences
    assert missing.HasField("gongji") and not missing.HasField("institution") and missing.settlement_id
    assert extra.HasField("institution") and not extra.HasField("gongji") and not extra.settlement_id
    assert (differ.institution.amount_fen, differ.gongji.amount_fen) == (301, 300)
    # Another day has none of these rows: every row of the books is missing in gongji.
    yesterday = (china_today() - dt.timedelta(days=1)).isoformat()
    other_day = pb.CheckDetailRequest(start_date=yesterday, end_date=yesterday)
    none = await books.check_detail(call, sorted(rows, key=lambda r: r.key), other_day)
    assert {d.difference for d in none.differences} == {pb.DETAIL_DIFFERENCE_KIND_MISSING_IN_GONGJI}


def _caller(api: Api, token: str) -> books.CheckDetail:
    async def call(request: pb.CheckDetailRequest) -> pb.CheckDetailResponse:
        reply: pb.CheckDetailResponse = await api.settlement.CheckDetail(request, metadata=bearer(token), timeout=60)
        return reply

    return call


# ---- the 医保钱包 ------------------------------------------------------------------------------------------
async def _day_with_the_wallet(w: Wallets, pool: asyncpg.Pool) -> tuple[str, list[books.BookRow]]:
    """Settlements the wallet paid part of, a refund giving some back, a reversal, a refund reversed, and
    one settlement without the wallet; the books as they should be (wallet_pay per row)."""
    _, token = await _institution(pool)
    api, rows = w.api, []
    resident, _ = await funded(w, 1_500)
    employee, _ = await funded(w, 1_000, scheme=EMPLOYEE, own_fen=1_000)
    authorizer = await api.enroll(balance_fen=1_000, birth=dt.date(1960, 1, 1))
    await api.grant(authorizer, employee)
    reversed_, _ = await funded(w, 2_000)
    refunded, _ = await funded(w, 1_200)
    plain = await api.enroll(balance_fen=5_000)
    made = [(resident, 2_000), (employee, 3_500), (reversed_, 1_500), (refunded, 1_200), (plain, 800)]
    for i, (patient, amount) in enumerate(made):
        request_id = f"w-{i}"
        s = (await api.settle(patient, amount, request_id=request_id, token=token)).settlement
        rows.append(_book(s, SETTLEMENT, request_id))
    assert [r.fen[4] for r in rows] == [1_500, 1_000, 1_500, 1_200, 0]
    settled = {r.request_id: await _settlement(api, r.request_id, token) for r in rows}
    # Cash first, then mutual aid, then the wallet: 500, 1,000, 300.
    refund = (await cancel(api, settled["w-1"].settlement_id, 1_800, request_id="wc-0", token=token)).refund
    rows.append(_book(refund, CANCEL, "wc-0"))
    undone = await reverse(api, "w-2", token=token)
    rows.append(_book(undone.settlement.refunds[0], REVERSAL, "w-2"))
    refund = (await cancel(api, settled["w-3"].settlement_id, 1_200, request_id="wc-1", token=token)).refund
    assert (await reverse(api, "wc-1", token=token, kind=pb.ORIGINAL_KIND_CANCEL)).undone
    rows += [_book(refund, CANCEL, "wc-1"), _book(refund, REFUND_REVERSAL, "wc-1")]
    assert [(r.request_id, r.fen[4]) for r in rows[5:]] == [
        ("wc-0", 300), ("w-2", 1_500), ("wc-1", 1_200), ("wc-1", 1_200)
    ]  # fmt: skip
    return token, rows


def _wallet_in_cash(r: books.BookRow) -> books.BookRow:
    """The row as books that know no wallet keep it: the wallet's money counted as cash."""
    amount, own, mulaid, cash, wallet = r.fen
    return dataclasses.replace(r, fen=(amount, own, mulaid, cash + wallet, 0))


async def test_the_wallet_agrees_when_the_books_say_the_same(w: Wallets, pool: asyncpg.Pool) -> None:
    token, rows = await _day_with_the_wallet(w, pool)
    for refunds, word in ((pb.REFUND_TREATMENT_APART, "apart"), (pb.REFUND_TREATMENT_NETTED, "netted"),
                          (pb.REFUND_TREATMENT_EXCLUDED, "excluded")):  # fmt: skip
        lines = books.totals_lines(rows, grouping="all", refunds=word)
        request = pb.CheckTotalsRequest(start_date=_today(), end_date=_today(), refunds=refunds, lines=lines)
        reply = await w.api.settlement.CheckTotals(request, metadata=bearer(token))
        assert reply.agree, (word, reply)
    apart = await w.api.settlement.CheckTotals(
        pb.CheckTotalsRequest(start_date=_today(), end_date=_today()), metadata=bearer(token)
    )
    ours = apart.lines[0].gongji
    # Settled: 1,500 + 1,000 + 1,500 + 1,200; refunded: 300 (wc-0) + 1,500 (the reversal) + 1,200 (wc-1);
    # taken back by the reversal of wc-1: 1,200.
    assert (ours.settled.wallet_pay_fen, ours.refunded.wallet_pay_fen, ours.refunds_reversed.wallet_pay_fen) == (
        5_200, 3_000, 1_200
    )  # fmt: skip
    for f in (ours.settled, ours.refunded, ours.refunds_reversed):
        assert f.acct_pay_fen + f.acct_mulaid_pay_fen + f.wallet_pay_fen + f.psn_cash_pay_fen == f.amount_fen
    base = pb.CheckDetailRequest(start_date=_today(), end_date=_today())
    agreed = await books.check_detail(_caller(w.api, token), sorted(rows, key=lambda r: r.key), base, page_rows=3)
    assert list(agreed.differences) == [] and agreed.institution_rows == agreed.gongji_rows == len(rows) == 9


async def test_the_wallet_in_cash_in_the_books_is_a_difference(w: Wallets, pool: asyncpg.Pool) -> None:
    token, rows = await _day_with_the_wallet(w, pool)
    theirs = [_wallet_in_cash(r) for r in rows]
    lines = books.totals_lines(theirs, grouping="all", refunds="apart")
    reply = await w.api.settlement.CheckTotals(
        pb.CheckTotalsRequest(start_date=_today(), end_date=_today(), lines=lines), metadata=bearer(token)
    )
    assert not reply.agree and not reply.lines[0].agree
    line = reply.lines[0]
    for side, wallet in (("settled", 5_200), ("refunded", 3_000), ("refunds_reversed", 1_200)):
        inst, ours = getattr(line.institution, side), getattr(line.gongji, side)
        assert (inst.count, inst.amount_fen) == (ours.count, ours.amount_fen), side
        assert (inst.wallet_pay_fen, ours.wallet_pay_fen) == (0, wallet), side
        assert inst.psn_cash_pay_fen - ours.psn_cash_pay_fen == wallet, side
    netted = books.totals_lines(theirs, grouping="all", refunds="netted")
    reply = await w.api.settlement.CheckTotals(
        pb.CheckTotalsRequest(start_date=_today(), end_date=_today(), refunds=pb.REFUND_TREATMENT_NETTED, lines=netted),
        metadata=bearer(token),
    )
    settled = (reply.lines[0].institution.settled, reply.lines[0].gongji.settled)
    assert not reply.agree and [f.wallet_pay_fen for f in settled] == [0, 5_200 - 3_000 + 1_200]

    base = pb.CheckDetailRequest(start_date=_today(), end_date=_today())
    found = await books.check_detail(_caller(w.api, token), sorted(theirs, key=lambda r: r.key), base, page_rows=4)
    # Every row the wallet had a part in differs, with both sides' figures; w-4 (no wallet) agrees.
    wallet_rows = {r.key: r.fen for r in rows if r.fen[4]}
    assert [(d.key.kind, d.key.request_id.encode()) for d in found.differences] == sorted(wallet_rows)
    for d in found.differences:
        assert d.difference == pb.DETAIL_DIFFERENCE_KIND_AMOUNTS_DIFFER and d.settlement_id
        amount, own, mulaid, cash, wallet = wallet_rows[(d.key.kind, d.key.request_id.encode())]
        gongji, institution = d.gongji, d.institution
        assert (gongji.amount_fen, gongji.acct_pay_fen, gongji.acct_mulaid_pay_fen) == (amount, own, mulaid)
        assert (gongji.psn_cash_pay_fen, gongji.wallet_pay_fen) == (cash, wallet)
        assert (institution.psn_cash_pay_fen, institution.wallet_pay_fen) == (cash + wallet, 0)


def _csv(path: Path, rows: list[books.BookRow], *, wallet: bool) -> Path:
    kinds = {k: word for word, k in books.KINDS.items()}
    yuan = [f"{fen // 100}.{fen % 100:02d}" for r in rows for fen in r.fen]
    header = "kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay" + (",wallet_pay" if wallet else "")
    width = 5 if wallet else 4
    body = [",".join([kinds[r.kind], r.request_id, *yuan[5 * i : 5 * i + width]]) for i, r in enumerate(rows)]
    path.write_text("\n".join([header, *body]) + "\n", encoding="utf-8")
    return path


async def test_the_books_csv_with_and_without_the_wallet_column(w: Wallets, pool: asyncpg.Pool, tmp_path: Path) -> None:
    token, rows = await _day_with_the_wallet(w, pool)
    call, base = _caller(w.api, token), pb.CheckDetailRequest(start_date=_today(), end_date=_today())
    with_wallet = books.read(_csv(tmp_path / "with.csv", rows, wallet=True))
    assert with_wallet == sorted(rows, key=lambda r: r.key)
    assert list((await books.check_detail(call, with_wallet, base)).differences) == []
    lines = books.totals_lines(with_wallet, grouping="all", refunds="apart")
    reply = await w.api.settlement.CheckTotals(
        pb.CheckTotalsRequest(start_date=_today(), end_date=_today(), lines=lines), metadata=bearer(token)
    )
    assert reply.agree
    # Books without the column, the wallet's money in cash: every row reads wallet 0; those the wallet had a
    # part in differ, the rest agree.
    without = books.read(_csv(tmp_path / "without.csv", [_wallet_in_cash(r) for r in rows], wallet=False))
    assert {r.fen[4] for r in without} == {0}
    found = await books.check_detail(call, without, base)
    assert {d.key.request_id for d in found.differences} == {r.request_id for r in rows if r.fen[4]}
    lines = books.totals_lines(without, grouping="all", refunds="apart")
    reply = await w.api.settlement.CheckTotals(
        pb.CheckTotalsRequest(start_date=_today(), end_date=_today(), lines=lines), metadata=bearer(token)
    )
    assert not reply.agree and reply.lines[0].institution.settled.wallet_pay_fen == 0


# ---- 100,000 rows of one day -----------------------------------------------------------------------------
DAY_ROWS = 100_000
_SEED_SETTLEMENTS = """
insert into settlement (settlement_id, institution_id, terminal_id, request_id, patient_id, voucher_id, amount_fen,
                        acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen, balc_fen, created_at)
select gen_random_uuid(), $1, 'P1', $2 || lpad(i::text, 7, '0'), $3, gen_random_uuid(), 1000 + i % 977,
       (1000 + i % 977) / 2, 0, (1000 + i % 977) - (1000 + i % 977) / 2, 0,
       $4::timestamptz + (i % 36000) * interval '1 second'
  from generate_series(1, $5) as i"""
# Every hundredth settlement partly refunded the same day, keyed c-<its number>.
_SEED_REFUNDS = """
insert into refund (refund_id, settlement_id, institution_id, request_id, kind, amount_fen, acct_pay_fen,
                    acct_mulaid_pay_fen, psn_cash_pay_fen, created_at)
select gen_random_uuid(), s.settlement_id, s.institution_id, 'c-' || substr(s.request_id, 3), 'CANCEL', 100, 0, 0, 100,
       s.created_at + interval '1 minute'
  from settlement s
 where s.institution_id = $1 and s.request_id like 's-%' and substr(s.request_id, 3)::int % 100 = 0"""


async def _seed_day(pool: asyncpg.Pool, institution: str, patient: str, day: dt.date) -> None:
    morning = dt.datetime(day.year, day.month, day.day, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_SEED_SETTLEMENTS, institution, "s-", patient, morning, DAY_ROWS)
        await conn.execute(_SEED_REFUNDS, institution)
        # The day before and the day after, with interleaved ids: history the check must step over.
        for offset, prefix in ((-1, "s-0"), (1, "s-1")):
            other = morning + dt.timedelta(days=offset)
            await conn.execute(_SEED_SETTLEMENTS, institution, prefix, patient, other, DAY_ROWS // 5)
    async with pool.acquire() as conn:
        await conn.execute("analyze settlement")
        await conn.execute("analyze refund")


def _seeded_books() -> list[books.BookRow]:
    rows = []
    for i in range(1, DAY_ROWS + 1):
        amount = 1000 + i % 977
        rows.append(_row(SETTLEMENT, f"s-{i:07d}", amount, amount // 2, 0, amount - amount // 2))
        if i % 100 == 0:
            rows.append(_row(CANCEL, f"c-{i:07d}", 100, 0, 0, 100))
    return rows


async def test_a_day_of_100000_rows_with_seeded_differences_found_exactly(
    api: Api, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    institution, token = await _institution(pool)
    patient = await api.enroll()
    day = china_today() - dt.timedelta(days=1)
    await _seed_day(pool, institution, patient, day)
    try:
        await _check_the_seeded_day(api, token, day, capsys)
    finally:  # seeded without their ledger: gone before the books are audited
        await pool.execute("delete from refund where institution_id = $1", institution)
        await pool.execute("delete from settlement where institution_id = $1", institution)


async def _check_the_seeded_day(api: Api, token: str, day: dt.date, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _seeded_books()
    # The seeded differences: rows the books lack, rows gongji lacks, amounts that differ, of each kind.
    lacking = {f"s-{i:07d}" for i in (1, 500, 50_000, 99_999, 100_000)} | {"c-0042000"}
    extra = [_row(SETTLEMENT, "s-0000000x", 1, 0, 0, 1), _row(SETTLEMENT, "s-2000000", 5, 0, 0, 5),
             _row(REVERSAL, "s-0000777", 100, 0, 0, 100), _row(CANCEL, "c-0000001", 1, 1, 0, 0)]  # fmt: skip
    differ = {"s-0000002": 1, "s-0070000": -1, "c-0000100": 7}
    books_rows = [r for r in rows if r.request_id not in lacking] + extra
    books_rows = [
        _row(r.kind, r.request_id, r.fen[0] + differ[r.request_id], r.fen[1], r.fen[2], r.fen[3] + differ[r.request_id])
        if r.request_id in differ else r
        for r in books_rows
    ]  # fmt: skip
    books_rows.sort(key=lambda r: r.key)
    base = pb.CheckDetailRequest(start_date=day.isoformat(), end_date=day.isoformat())
    rss_before_kib, started = rss_kib(), time.perf_counter()
    found = await books.check_detail(_caller(api, token), books_rows, base)
    elapsed_s, rss_after_kib = time.perf_counter() - started, rss_kib()

    got = {(d.key.request_id, d.difference) for d in found.differences}
    assert got == (
        {(rid, pb.DETAIL_DIFFERENCE_KIND_MISSING_IN_INSTITUTION) for rid in lacking}
        | {(r.request_id, pb.DETAIL_DIFFERENCE_KIND_MISSING_IN_GONGJI) for r in extra}
        | {(rid, pb.DETAIL_DIFFERENCE_KIND_AMOUNTS_DIFFER) for rid in differ}
    )
    assert len(found.differences) == len(lacking) + len(extra) + len(differ)
    assert found.gongji_rows == len(rows) and found.institution_rows == len(books_rows)
    with capsys.disabled():
        print(
            f"\nCheckDetail of {len(books_rows)} rows ({len(rows)} in gongji's day): {elapsed_s:.1f} s, "
            f"{len(found.differences)} differences; test process (client and in-process server) RSS "
            f"{rss_before_kib // 1024} -> {rss_after_kib // 1024} MiB"
        )


# ---- refusals -------------------------------------------------------------------------------------------
async def test_bad_requests_are_refused_naming_the_field(api: Api) -> None:
    t = bearer(api.tokens.terminal_a)
    today = _today()
    error = await refused(
        api.settlement.CheckTotals(
            pb.CheckTotalsRequest(start_date="2026-02-30", end_date=today, grouping=9), metadata=t
        ),
        S.INVALID_ARGUMENT, "INVALID_ARGUMENT",
    )  # fmt: skip
    assert set(field_violations(error)) == {"start_date", "grouping"}
    long_ago = (china_today() - dt.timedelta(days=31)).isoformat()
    tomorrow = (china_today() + dt.timedelta(days=1)).isoformat()
    for start, end, field in (
        (long_ago, today, "end_date"),
        (today, tomorrow, "end_date"),
        (today, long_ago, "end_date"),
    ):
        error = await refused(
            api.settlement.CheckDetail(pb.CheckDetailRequest(start_date=start, end_date=end), metadata=t),
            S.INVALID_ARGUMENT, "INVALID_ARGUMENT",
        )  # fmt: skip
        assert field_violations(error) == [field]
    lines = [pb.TotalsLine(group="310"), pb.TotalsLine(group="")]
    error = await refused(
        api.settlement.CheckTotals(pb.CheckTotalsRequest(start_date=today, end_date=today, lines=lines), metadata=t),
        S.INVALID_ARGUMENT, "INVALID_ARGUMENT",
    )  # fmt: skip
    assert field_violations(error) == ["lines[0].group"]
    amounts = pb.DetailAmounts(amount_fen=10, acct_pay_fen=5, psn_cash_pay_fen=4)
    rows = [
        pb.DetailRow(kind=SETTLEMENT, request_id="b", amounts=amounts),
        pb.DetailRow(kind=SETTLEMENT, request_id="a"),
    ]
    request = pb.CheckDetailRequest(start_date=today, end_date=today, rows=rows)
    error = await refused(api.settlement.CheckDetail(request, metadata=t), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["rows[0].amounts.amount_fen", "rows[1].amounts.amount_fen", "rows[1]"]
    one_fen = pb.DetailAmounts(amount_fen=1, psn_cash_pay_fen=1)
    page = [pb.DetailRow(kind=SETTLEMENT, request_id=f"r{i:05d}", amounts=one_fen) for i in range(1_001)]
    error = await refused(
        api.settlement.CheckDetail(pb.CheckDetailRequest(start_date=today, end_date=today, rows=page), metadata=t),
        S.INVALID_ARGUMENT, "INVALID_ARGUMENT",
    )  # fmt: skip
    assert field_violations(error) == ["rows"]
    keys = pb.CheckDetailRequest(
        start_date=today, end_date=today, after_key=pb.DetailKey(kind=CANCEL, request_id="x"),
        through_key=pb.DetailKey(kind=SETTLEMENT, request_id="日"),
    )  # fmt: skip
    error = await refused(api.settlement.CheckDetail(keys, metadata=t), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {"through_key.request_id", "through_key"}


async def test_the_wallet_part_must_add_up(api: Api) -> None:
    """wallet_pay_fen is one of the parts: the parts still sum to amount_fen, each >= 0 (a netted sum may be
    negative); unset, it is 0 and the other three add up as before."""
    t, today = bearer(api.tokens.terminal_a), _today()
    rows = [
        pb.DetailRow(kind=SETTLEMENT, request_id="a", amounts=pb.DetailAmounts(amount_fen=10, acct_pay_fen=4,
                                                                                wallet_pay_fen=6)),
        pb.DetailRow(kind=SETTLEMENT, request_id="b", amounts=pb.DetailAmounts(amount_fen=10, psn_cash_pay_fen=10,
                                                                                wallet_pay_fen=1)),
        pb.DetailRow(kind=SETTLEMENT, request_id="c", amounts=pb.DetailAmounts(amount_fen=10, psn_cash_pay_fen=11,
                                                                                wallet_pay_fen=-1)),
    ]  # fmt: skip
    request = pb.CheckDetailRequest(start_date=today, end_date=today, rows=rows)
    error = await refused(api.settlement.CheckDetail(request, metadata=t), S.INVALID_ARGUMENT, "INVALID_AMOUNT")
    assert field_violations(error) == ["rows[1].amounts.amount_fen", "rows[2].amounts.amount_fen"]
    assert "wallet_pay_fen" in error.details()
    line = pb.TotalsLine(
        settled=pb.TotalsFigures(count=1, amount_fen=10, psn_cash_pay_fen=4, wallet_pay_fen=6),
        refunded=pb.TotalsFigures(count=1, amount_fen=1, psn_cash_pay_fen=2, wallet_pay_fen=-1),
        refunds_reversed=pb.TotalsFigures(count=1, amount_fen=1, psn_cash_pay_fen=1, wallet_pay_fen=1),
    )
    request = pb.CheckTotalsRequest(start_date=today, end_date=today, lines=[line])
    error = await refused(api.settlement.CheckTotals(request, metadata=t), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["lines[0].refunded.amount_fen", "lines[0].refunds_reversed.amount_fen"]
    netted = pb.TotalsLine(settled=pb.TotalsFigures(count=2, amount_fen=-5, psn_cash_pay_fen=5, wallet_pay_fen=-10))
    reply = await api.settlement.CheckTotals(
        pb.CheckTotalsRequest(start_date=today, end_date=today, refunds=pb.REFUND_TREATMENT_NETTED, lines=[netted]),
        metadata=t,
    )
    assert reply.lines[0].institution.settled.wallet_pay_fen == -10


async def test_who_checks_which_institution(api: Api, pool: asyncpg.Pool) -> None:
    institution, _, rows = await _day_of_business(api, pool)
    today = _today()
    # Another institution's terminal naming it is refused; without naming it, it sees its own books only:
    # the rows of this institution read as missing in gongji, and nothing of this institution comes back.
    await refused(
        api.settlement.CheckTotals(
            pb.CheckTotalsRequest(institution_id=institution, start_date=today, end_date=today),
            metadata=bearer(api.tokens.terminal_b),
        ),
        S.PERMISSION_DENIED, "INSTITUTION_MISMATCH",
    )  # fmt: skip
    _, other_token = await _institution(pool)
    found = await books.check_detail(
        _caller(api, other_token),
        sorted(rows, key=lambda r: r.key),
        pb.CheckDetailRequest(start_date=today, end_date=today),
    )
    assert [d.difference for d in found.differences] == [pb.DETAIL_DIFFERENCE_KIND_MISSING_IN_GONGJI] * len(rows)
    assert found.gongji_rows == 0 and not any(d.settlement_id for d in found.differences)
    await refused(
        api.settlement.CheckDetail(
            pb.CheckDetailRequest(institution_id="H000000000000", start_date=today, end_date=today),
            metadata=bearer(api.tokens.operator),
        ),
        S.NOT_FOUND, "INSTITUTION_NOT_FOUND",
    )  # fmt: skip
    error = await refused(
        api.settlement.CheckDetail(
            pb.CheckDetailRequest(start_date=today, end_date=today), metadata=bearer(api.tokens.operator)
        ),
        S.INVALID_ARGUMENT, "INVALID_ARGUMENT",
    )  # fmt: skip
    assert field_violations(error) == ["institution_id"]
    await refused(
        api.settlement.CheckTotals(
            pb.CheckTotalsRequest(start_date=today, end_date=today), metadata=bearer(api.tokens.app)
        ),
        S.PERMISSION_DENIED, "NOT_ALLOWED",
    )  # fmt: skip
