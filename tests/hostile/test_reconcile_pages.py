"""Hostile pages for the checks against the institution's books (CheckTotals, CheckDetail): pages too
large in rows or in bytes, keys and dates no honest client sends, and a stretch in which gongji has far
more rows than the page. Every answer is bounded, every refusal names the field, nothing is written."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from harness import fingerprint
from support import Api, bearer, field_violations, refused

from gongji import limits
from gongji.api.validate import china_today
from gongji.store import credentials
from gongji.store.credentials import Kind
from gongji.v1 import settlement_pb2 as pb

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
SETTLEMENT = pb.DETAIL_KIND_SETTLEMENT
ONE_FEN = pb.DetailAmounts(amount_fen=1, psn_cash_pay_fen=1)


def _today() -> str:
    return china_today().isoformat()


async def test_oversized_pages_are_refused(api: Api, pool: asyncpg.Pool) -> None:
    t = bearer(api.tokens.terminal_a)
    before = await fingerprint(pool)
    rows = [pb.DetailRow(kind=SETTLEMENT, request_id=f"r{i:06d}", amounts=ONE_FEN) for i in range(1_001)]
    error = await refused(
        api.settlement.CheckDetail(
            pb.CheckDetailRequest(start_date=_today(), end_date=_today(), rows=rows), metadata=t
        ),
        S.INVALID_ARGUMENT, "INVALID_ARGUMENT",
    )  # fmt: skip
    assert field_violations(error) == ["rows"]
    # Beyond the server's message limit: refused by the transport before anything is read.
    huge = [pb.DetailRow(kind=SETTLEMENT, request_id="x" * 2_000, amounts=ONE_FEN) for _ in range(600)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.settlement.CheckDetail(
            pb.CheckDetailRequest(start_date=_today(), end_date=_today(), rows=huge), metadata=t
        )
    assert caught.value.code() == S.RESOURCE_EXHAUSTED
    lines = [pb.TotalsLine(group=str(i)) for i in range(limits.RECONCILE_TOTALS_LINES_MAX + 1)]
    error = await refused(
        api.settlement.CheckTotals(
            pb.CheckTotalsRequest(start_date=_today(), end_date=_today(), lines=lines), metadata=t
        ),
        S.INVALID_ARGUMENT, "INVALID_ARGUMENT",
    )  # fmt: skip
    assert field_violations(error) == ["lines"]
    assert await fingerprint(pool) == before


@pytest.mark.parametrize(
    ("fields", "violations"),
    [
        ({"start_date": "２０２６-01-01"}, {"start_date"}),
        ({"start_date": "2026-1-1"}, {"start_date"}),
        ({"end_date": "9999-12-31"}, {"end_date"}),
        ({"start_date": "0001-01-01"}, {"start_date"}),
        ({"after_key": pb.DetailKey(kind=SETTLEMENT, request_id="ａ")}, {"after_key.request_id"}),
        ({"after_key": pb.DetailKey(kind=7, request_id="a")}, {"after_key.kind"}),
        ({"through_key": pb.DetailKey(request_id="a")}, {"through_key.kind"}),
        ({"through_key": pb.DetailKey(kind=SETTLEMENT, request_id="a" * 65)}, {"through_key.request_id"}),
        ({"rows": [pb.DetailRow(kind=SETTLEMENT, request_id="a\x00", amounts=ONE_FEN)]}, {"rows[0].request_id"}),
        (
            {"rows": [pb.DetailRow(kind=SETTLEMENT, request_id="a", amounts=pb.DetailAmounts(amount_fen=-1))]},
            {"rows[0].amounts.amount_fen"},
        ),
        (
            {"rows": [pb.DetailRow(kind=SETTLEMENT, request_id="a", amounts=ONE_FEN)] * 2},
            {"rows[1]"},
        ),
    ],
)
async def test_bad_keys_and_dates_name_their_field(api: Api, fields: dict[str, object], violations: set[str]) -> None:
    request = pb.CheckDetailRequest(**({"start_date": _today(), "end_date": _today()} | fields))
    error = await refused(
        api.settlement.CheckDetail(request, metadata=bearer(api.tokens.terminal_a)), S.INVALID_ARGUMENT,
        "INVALID_AMOUNT" if violations == {"rows[0].amounts.amount_fen"} else "INVALID_ARGUMENT",
    )  # fmt: skip
    assert set(field_violations(error)) == violations


async def test_a_page_against_many_more_rows_of_gongji_is_answered_in_bounded_steps(
    api: Api, pool: asyncpg.Pool
) -> None:
    """A page that claims a stretch holding 2,500 of gongji's rows, with 1,000 rows none of which gongji
    has: each answer compares at most 1,000 of gongji's rows and says how far it got."""
    institution = f"H{uuid.uuid4().int % 10**11:011d}"
    token = await credentials.create(pool, Kind.TERMINAL, "hostile", institution_id=institution, terminal_id="P1")
    patient = await api.enroll()
    await pool.execute(
        """insert into settlement (settlement_id, institution_id, terminal_id, request_id, patient_id, voucher_id,
                                   amount_fen, acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen, balc_fen)
           select gen_random_uuid(), $1, 'P1', 'g-' || lpad(i::text, 5, '0'), $2, gen_random_uuid(), 1, 0, 0, 1, 0
             from generate_series(1, 2500) as i""",
        institution,
        patient,
    )
    try:
        rows = [pb.DetailRow(kind=SETTLEMENT, request_id=f"z-{i:05d}", amounts=ONE_FEN) for i in range(1_000)]
        request = pb.CheckDetailRequest(start_date=_today(), end_date=_today(), rows=rows)
        answers = []
        for _ in range(10):  # bounded
            reply = await api.settlement.CheckDetail(request, metadata=bearer(token))
            answers.append(reply)
            assert reply.gongji_rows <= limits.RECONCILE_DETAIL_GONGJI_ROWS_MAX
            assert len(reply.differences) <= 2 * limits.RECONCILE_DETAIL_ROWS_MAX
            if reply.complete:
                break
            request.after_key.CopyFrom(reply.compared_through)
            del request.rows[:]
            request.rows.extend(r for r in rows if r.request_id > reply.compared_through.request_id)
        assert [a.complete for a in answers] == [False, False, True]
        assert [a.gongji_rows for a in answers] == [1_000, 1_000, 500]
        assert sum(len(a.differences) for a in answers) == 3_500
    finally:
        await pool.execute("delete from settlement where institution_id = $1", institution)
