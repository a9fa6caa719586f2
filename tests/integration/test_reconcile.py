"""Reconciliation (3201/3202): one institution's day, totals and detail, matching the ledger to the fen."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import grpc
import pytest
from support import CHILD, Api, bearer, cancel, field_violations, refused, reverse

from gongji.api.validate import china_today
from gongji.store import credentials
from gongji.store.credentials import Kind
from gongji.v1 import settlement_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode


async def _reconcile(api: Api, token: str, **fields: object) -> settlement_pb2.ReconcileResponse:
    reply: settlement_pb2.ReconcileResponse = await api.settlement.Reconcile(
        settlement_pb2.ReconcileRequest(**fields), metadata=bearer(token)
    )
    return reply


async def test_a_day_settled_refunded_reversed_and_reconciled(api: Api, pool: asyncpg.Pool) -> None:
    institution = f"H{uuid.uuid4().int % 10**11:011d}"
    terminal = await credentials.create(pool, Kind.TERMINAL, "recon", institution_id=institution, terminal_id="P1")
    authorizer = await api.enroll(balance_fen=20_000, birth=dt.date(1960, 1, 1))
    patients = [await api.enroll(balance_fen=700, birth=dt.date(1990, 1, 1)) for _ in range(3)]
    for p in patients:
        await api.grant(authorizer, p, CHILD)

    settled = [(await api.settle(p, 1_000 + 111 * i, token=terminal)).settlement for i, p in enumerate(patients * 2)]
    await cancel(api, settled[0].settlement_id, 300, token=terminal)  # partially refunded, twice
    await cancel(api, settled[0].settlement_id, 400, token=terminal)
    reversed_ = await reverse(api, settled[1].request_id, token=terminal)  # another reversed
    assert reversed_.undone

    today = china_today().isoformat()
    totals = await _reconcile(api, terminal, date=today)
    assert (totals.institution_id, totals.date) == (institution, today)
    assert totals.settlement_count == 6
    assert totals.amount_fen == sum(s.amount_fen for s in settled)
    assert totals.acct_pay_fen == sum(s.acct_pay_fen for s in settled)
    assert totals.acct_mulaid_pay_fen == sum(s.acct_mulaid_pay_fen for s in settled)
    assert totals.psn_cash_pay_fen == sum(s.psn_cash_pay_fen for s in settled)
    assert (totals.refund_count, totals.reversal_count) == (3, 1)
    assert totals.refunded_fen == 300 + 400 + settled[1].amount_fen
    assert totals.refund_acct_pay_fen + totals.refund_acct_mulaid_pay_fen + totals.refund_psn_cash_pay_fen == (
        totals.refunded_fen
    )
    assert len(totals.settlements) == 0, "no detail unless asked"

    # The totals agree with the ledger to the fen.
    ledger = await pool.fetchrow(
        """select -coalesce(sum(l.amount_fen) filter (where l.kind = 'SETTLEMENT'), 0) as own,
                  -coalesce(sum(l.amount_fen) filter (where l.kind = 'MUTUAL_AID'), 0) as mulaid,
                  coalesce(sum(l.amount_fen) filter (where l.kind in ('REFUND', 'REVERSAL')), 0) as refunded
             from ledger_entry l join settlement s on s.settlement_id = l.settlement_id
            where s.institution_id = $1""",
        institution,
    )
    assert (ledger["own"], ledger["mulaid"]) == (totals.acct_pay_fen, totals.acct_mulaid_pay_fen)
    assert ledger["refunded"] == totals.refund_acct_pay_fen + totals.refund_acct_mulaid_pay_fen

    # Detail (3202), two at a time, oldest first: the same settlements, each once, with refunds.
    seen, token = [], ""
    for _ in range(10):  # bounded
        page = await _reconcile(api, terminal, date=today, detail=True, page_size=2, page_token=token)
        seen += list(page.settlements)
        token = page.next_page_token
        if not token:
            break
    assert [s.settlement_id for s in seen] == [s.settlement_id for s in settled]
    assert [len(s.refunds) for s in seen] == [2, 1, 0, 0, 0, 0]
    assert seen[1].HasField("reversed_at")

    # An operator names the institution; another day is empty.
    by_operator = await _reconcile(api, api.tokens.operator, date=today, institution_id=institution)
    assert by_operator.amount_fen == totals.amount_fen
    yesterday = (china_today() - dt.timedelta(days=1)).isoformat()
    assert (await _reconcile(api, terminal, date=yesterday)).settlement_count == 0


async def test_reconcile_refusals(api: Api) -> None:
    today = china_today().isoformat()
    await refused(
        _reconcile(api, api.tokens.terminal_a, date=today, institution_id="H61010300202"),
        S.PERMISSION_DENIED,
        "INSTITUTION_MISMATCH",
    )
    error = await refused(_reconcile(api, api.tokens.operator, date=today), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["institution_id"]
    error = await refused(
        _reconcile(api, api.tokens.terminal_a, date="2026-13-01", page_size=5_000, page_token="x"),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert set(field_violations(error)) == {"date", "page_size", "page_token"}
    await refused(_reconcile(api, api.tokens.app, date=today), S.PERMISSION_DENIED, "NOT_ALLOWED")


async def test_a_reversed_refund_counts_on_the_day_it_was_reversed(api: Api, pool: asyncpg.Pool) -> None:
    """The refund stays in its own day's refund totals; the reversal is counted, with the money it took
    back by source, in the totals of the day it was made (here both today)."""
    institution = f"H{uuid.uuid4().int % 10**11:011d}"
    terminal = await credentials.create(pool, Kind.TERMINAL, "recon", institution_id=institution, terminal_id="P1")
    authorizer = await api.enroll(balance_fen=5_000, birth=dt.date(1960, 1, 1))
    patient = await api.enroll(balance_fen=200, birth=dt.date(1990, 1, 1))
    await api.grant(authorizer, patient, CHILD)
    s = (await api.settle(patient, 1_000, token=terminal)).settlement
    refund = (await cancel(api, s.settlement_id, 900, request_id="recon-rr-1", token=terminal)).refund
    await cancel(api, s.settlement_id, 50, token=terminal)
    kind = settlement_pb2.ORIGINAL_KIND_CANCEL
    assert (await reverse(api, "recon-rr-1", token=terminal, kind=kind)).undone
    assert not (await reverse(api, "recon-never-1", token=terminal, kind=kind)).undone  # nothing to count
    totals = await _reconcile(api, terminal, date=china_today().isoformat())
    assert (totals.refund_count, totals.refunded_fen, totals.reversal_count) == (2, 950, 0)
    assert (totals.refund_reversal_count, totals.refund_reversed_fen) == (1, 900)
    assert (
        totals.refund_reversed_acct_pay_fen,
        totals.refund_reversed_acct_mulaid_pay_fen,
        totals.refund_reversed_psn_cash_pay_fen,
    ) == (refund.acct_pay_fen, refund.acct_mulaid_pay_fen, refund.psn_cash_pay_fen)
    detail = await _reconcile(api, terminal, date=china_today().isoformat(), detail=True)
    (one,) = detail.settlements
    assert [r.HasField("reversed_at") for r in one.refunds] == [True, False]
    assert one.refunded_fen == 50
