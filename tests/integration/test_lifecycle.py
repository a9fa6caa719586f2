"""Refunds (2208), reversals (2601), GetSettlement and ListLedger through gRPC: money is never created,
lost or moved twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from support import (
    CHILD,
    RESIDENT,
    SUSPENDED,
    Api,
    account_row_held,
    bearer,
    cancel,
    field_violations,
    refused,
    reverse,
)

from gongji.v1 import account_pb2, settlement_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
OLD, YOUNG = dt.date(1960, 1, 1), dt.date(1990, 1, 1)


async def _family(api: Api, own_fen: int, mulaid_fen: int) -> tuple[str, str]:
    authorizer = await api.enroll(balance_fen=mulaid_fen, birth=OLD)
    patient = await api.enroll(balance_fen=own_fen, birth=YOUNG)
    await api.grant(authorizer, patient, CHILD)
    return authorizer, patient


async def test_partial_refunds_go_back_last_drawn_first(api: Api, pool: asyncpg.Pool) -> None:
    authorizer, patient = await _family(api, own_fen=1_000, mulaid_fen=1_500)
    s = (await api.settle(patient, 3_000)).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (1_000, 1_500, 500)

    first = (await cancel(api, s.settlement_id, 700)).refund  # cash first, then the authorizer
    assert (first.psn_cash_pay_fen, first.acct_mulaid_pay_fen, first.acct_pay_fen) == (500, 200, 0)
    second = (await cancel(api, s.settlement_id, 1_500)).refund  # the rest of mutual aid, then own
    assert (second.psn_cash_pay_fen, second.acct_mulaid_pay_fen, second.acct_pay_fen) == (0, 1_300, 200)
    rest = await cancel(api, s.settlement_id, 0)  # 0 = everything not yet refunded
    assert (rest.refund.amount_fen, rest.refund.acct_pay_fen, rest.refund.kind) == (800, 800, "CANCEL")
    assert rest.settlement.refunded_fen == 3_000
    assert [r.amount_fen for r in rest.settlement.refunds] == [700, 1_500, 800]
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_500, 1_000)
    await refused(cancel(api, s.settlement_id, 1), S.FAILED_PRECONDITION, "REFUND_EXCEEDS_SETTLEMENT")
    await refused(cancel(api, s.settlement_id, 0), S.FAILED_PRECONDITION, "REFUND_EXCEEDS_SETTLEMENT")
    notes = await pool.fetch(
        "select person_id, amount_fen, counterpart_id from ledger_entry where settlement_id = $1 and kind = 'REFUND'"
        " order by entry_id",
        uuid.UUID(s.settlement_id),
    )
    assert sorted((r["person_id"], r["amount_fen"]) for r in notes) == sorted(
        [(authorizer, 200), (authorizer, 1_300), (patient, 200), (patient, 800)]
    )
    assert {r["counterpart_id"] for r in notes if r["person_id"] == authorizer} == {patient}


async def test_cancel_is_idempotent_and_checks_its_input(api: Api) -> None:
    _, patient = await _family(api, own_fen=1_000, mulaid_fen=0)
    s = (await api.settle(patient, 600)).settlement
    first = await cancel(api, s.settlement_id, 100, request_id="refund-once-1")
    again = await cancel(api, s.settlement_id, 100, request_id="refund-once-1")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.refund == first.refund
    assert await api.balance(patient) == 500
    await refused(
        cancel(api, s.settlement_id, 200, request_id="refund-once-1"), S.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"
    )
    await refused(cancel(api, s.settlement_id, 501), S.FAILED_PRECONDITION, "REFUND_EXCEEDS_SETTLEMENT")
    error = await refused(cancel(api, s.settlement_id, -5), S.INVALID_ARGUMENT, "INVALID_AMOUNT")
    assert field_violations(error) == ["amount_fen"]
    error = await refused(cancel(api, "not-a-uuid", 5), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["settlement_id"]
    await refused(cancel(api, str(uuid.uuid4()), 5), S.NOT_FOUND, "SETTLEMENT_NOT_FOUND")
    await refused(
        cancel(api, s.settlement_id, 5, token=api.tokens.terminal_b), S.PERMISSION_DENIED, "INSTITUTION_MISMATCH"
    )
    assert await api.balance(patient) == 500


async def test_refunds_reach_ended_grants_and_inactive_people(api: Api, pool: asyncpg.Pool) -> None:
    authorizer = await api.enroll(balance_fen=1_000, birth=OLD)
    patient = await api.enroll(scheme=RESIDENT, birth=YOUNG)
    await api.grant(authorizer, patient, CHILD)
    s = (await api.settle(patient, 800)).settlement
    await api.revoke(authorizer, patient)
    await api.set_status(authorizer, SUSPENDED)
    refund = (await cancel(api, s.settlement_id, 0)).refund
    assert refund.acct_mulaid_pay_fen == 800
    assert await api.balance(authorizer) == 1_000  # nothing is lost
    note = await pool.fetchval(
        "select note from ledger_entry where refund_id = $1 and person_id = $2", uuid.UUID(refund.refund_id), authorizer
    )
    assert note == "mutual-aid grant revoked since the settlement; account holder suspended: refunded all the same"


async def test_reverse_a_committed_settlement(api: Api) -> None:
    authorizer, patient = await _family(api, own_fen=300, mulaid_fen=1_000)
    s = (await api.settle(patient, 1_000, request_id="rev-committed-1")).settlement
    await cancel(api, s.settlement_id, 200)  # part refunded before the reversal
    undone = await reverse(api, "rev-committed-1")
    assert undone.undone
    assert undone.settlement.refunded_fen == 1_000
    assert undone.settlement.HasField("reversed_at")
    assert [r.kind for r in undone.settlement.refunds] == ["CANCEL", "REVERSAL"]
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_000, 300)
    again = await reverse(api, "rev-committed-1")  # reversing twice answers the same
    assert again.undone
    assert again.settlement.settlement_id == s.settlement_id
    await refused(api.settle(patient, 1_000, request_id="rev-committed-1"), S.FAILED_PRECONDITION, "ALREADY_REVERSED")
    await refused(cancel(api, s.settlement_id, 1), S.FAILED_PRECONDITION, "ALREADY_REVERSED")
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_000, 300)


async def test_reverse_before_the_original_arrives(api: Api, pool: asyncpg.Pool) -> None:
    authorizer, patient = await _family(api, own_fen=300, mulaid_fen=1_000)
    voucher = await api.voucher(patient)
    nothing = await reverse(api, "rev-early-1")
    assert not nothing.undone
    assert not nothing.HasField("settlement")
    await refused(
        api.settle(patient, 500, voucher=voucher, request_id="rev-early-1"), S.FAILED_PRECONDITION, "ALREADY_REVERSED"
    )
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_000, 300)
    assert await pool.fetchval("select count(*) from settlement where request_id = 'rev-early-1'") == 0
    assert not (await reverse(api, "rev-early-1")).undone
    # The late original moved nothing: its voucher is still good for a new request.
    assert (await api.settle(patient, 500, voucher=voucher)).settlement.acct_pay_fen == 300


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


async def _settle_waiting(pool: asyncpg.Pool) -> bool:
    n: int = await pool.fetchval(
        "select count(*) from pg_stat_activity where datname = current_database() and state = 'active'"
        " and query like '%gongji_settle(%'"
        " and pid <> pg_backend_pid()"
    )
    return n > 0


async def test_reverse_racing_a_held_up_original(api: Api, pool: asyncpg.Pool) -> None:
    """The original waits behind a row lock while its reversal arrives: the reversal waits for it and
    undoes it whole. Exactly one outcome stands, and the balances agree with it."""
    authorizer, patient = await _family(api, own_fen=300, mulaid_fen=1_000)
    voucher = await api.voucher(patient)
    async with account_row_held(pool, authorizer):
        original = asyncio.ensure_future(api.settle(patient, 900, voucher=voucher, request_id="rev-race-1"))
        for _ in range(100):  # bounded: until the original waits for the lock
            if await _settle_waiting(pool):
                break
            await asyncio.sleep(0.02)
        assert await _settle_waiting(pool), "the original is held up behind the lock"
        reversal = asyncio.ensure_future(reverse(api, "rev-race-1"))
        await asyncio.sleep(0.2)
        assert not reversal.done(), "the reversal waits for the original"
    settled, reversed_ = await original, await reversal
    assert (settled.settlement.acct_pay_fen, settled.settlement.acct_mulaid_pay_fen) == (300, 600)
    assert reversed_.undone
    assert reversed_.settlement.settlement_id == settled.settlement.settlement_id
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_000, 300)


async def test_many_originals_racing_their_reversals(api: Api) -> None:
    """In every interleaving exactly one outcome stands: settled then undone, or refused."""
    authorizer, patient = await _family(api, own_fen=5_000, mulaid_fen=50_000)
    pairs = 60  # bounded
    vouchers = [await api.voucher(patient) for _ in range(pairs)]

    async def original(i: int) -> str:
        await asyncio.sleep((i % 7) * 0.003)
        try:
            await api.settle(patient, 700, voucher=vouchers[i], request_id=f"rr-{i}")
        except grpc.aio.AioRpcError as exc:
            return _reason(exc)
        return "OK"

    async def reversal(i: int) -> bool:
        await asyncio.sleep((i % 5) * 0.003)
        return (await reverse(api, f"rr-{i}")).undone

    results = await asyncio.gather(*(original(i) for i in range(pairs)), *(reversal(i) for i in range(pairs)))
    originals, undone = results[:pairs], results[pairs:]
    for settled, was_undone in zip(originals, undone, strict=True):
        assert (settled, was_undone) in {("OK", True), ("ALREADY_REVERSED", False)}
    assert (await api.balance(authorizer), await api.balance(patient)) == (50_000, 5_000)


async def test_concurrent_partial_refunds_never_exceed_the_settlement(api: Api) -> None:
    authorizer, patient = await _family(api, own_fen=200, mulaid_fen=200)
    s = (await api.settle(patient, 500)).settlement
    results = await asyncio.gather(*(cancel(api, s.settlement_id, 100) for _ in range(8)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, settlement_pb2.CancelResponse)]
    assert len(ok) == 5
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == S.FAILED_PRECONDITION for r in results if r not in ok
    )
    assert (await api.balance(authorizer), await api.balance(patient)) == (200, 200)


async def test_get_settlement_by_id_or_request_id(api: Api) -> None:
    _, patient = await _family(api, own_fen=1_000, mulaid_fen=0)
    s = (await api.settle(patient, 400, request_id="get-me-1")).settlement
    await cancel(api, s.settlement_id, 100)
    get = api.settlement.GetSettlement
    by_id = (
        await get(
            settlement_pb2.GetSettlementRequest(settlement_id=s.settlement_id), metadata=bearer(api.tokens.terminal_a)
        )
    ).settlement
    by_request = (
        await get(settlement_pb2.GetSettlementRequest(request_id="get-me-1"), metadata=bearer(api.tokens.terminal_a))
    ).settlement
    assert by_id == by_request
    assert (by_id.refunded_fen, len(by_id.refunds)) == (100, 1)
    await refused(
        get(settlement_pb2.GetSettlementRequest(settlement_id=s.settlement_id), metadata=bearer(api.tokens.terminal_b)),
        S.NOT_FOUND,
        "SETTLEMENT_NOT_FOUND",
    )
    await refused(
        get(settlement_pb2.GetSettlementRequest(request_id="get-me-1"), metadata=bearer(api.tokens.terminal_b)),
        S.NOT_FOUND,
        "SETTLEMENT_NOT_FOUND",
    )
    await refused(
        get(settlement_pb2.GetSettlementRequest(), metadata=bearer(api.tokens.terminal_a)),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_list_ledger_pages_newest_first(api: Api) -> None:
    authorizer, patient = await _family(api, own_fen=0, mulaid_fen=10_000)
    settled = [(await api.settle(patient, 100 + i)).settlement for i in range(5)]
    await cancel(api, settled[0].settlement_id, 0)
    pages, token = [], ""
    for _ in range(10):  # bounded
        reply = await api.account.ListLedger(
            account_pb2.ListLedgerRequest(person_id=authorizer, page_size=2, page_token=token),
            metadata=bearer(api.tokens.app),
        )
        pages.append(list(reply.entries))
        token = reply.next_page_token
        if not token:
            break
    entries = [e for page in pages for e in page]
    assert [e.kind for e in entries] == ["REFUND", *(["MUTUAL_AID"] * 5), "CREDIT"]
    assert [int(e.entry_id) for e in entries] == sorted((int(e.entry_id) for e in entries), reverse=True)
    assert entries[1].amount_fen == -104
    assert entries[1].settlement_id == settled[4].settlement_id
    assert entries[1].counterpart_id_masked == patient[:4] + "*" * 10 + patient[-4:]
    assert entries[0].balance_after_fen == 10_000 - sum(100 + i for i in range(1, 5))
    assert entries[-1].credit_id
    await refused(
        api.account.ListLedger(
            account_pb2.ListLedgerRequest(person_id=authorizer, page_token="garbage!"), metadata=bearer(api.tokens.app)
        ),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await refused(
        api.account.ListLedger(
            account_pb2.ListLedgerRequest(person_id=authorizer, page_size=1_000), metadata=bearer(api.tokens.app)
        ),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_refunds_and_reversals_are_counted_once(api: Api) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    _, patient = await _family(api, own_fen=1_000, mulaid_fen=0)
    s = (await api.settle(patient, 500, request_id="count-me-1")).settlement
    before = (
        sample("gongji_refunds_total"),
        sample("gongji_reversals_total"),
        sample("gongji_refunded_fen_total", source="own"),
    )
    await cancel(api, s.settlement_id, 200, request_id="count-refund-1")
    await cancel(api, s.settlement_id, 200, request_id="count-refund-1")  # a replay
    await reverse(api, "count-me-1")
    await reverse(api, "count-me-1")  # a repeat
    after = (
        sample("gongji_refunds_total"),
        sample("gongji_reversals_total"),
        sample("gongji_refunded_fen_total", source="own"),
    )
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 1, 500)


async def test_malformed_page_tokens_are_invalid_argument(api: Api) -> None:
    from gongji.api import pages

    person = await api.enroll(balance_fen=100)
    for cursor in ("²", "9999999999999999999", "0", "-1", "1e3"):
        await refused(
            api.account.ListLedger(
                account_pb2.ListLedgerRequest(person_id=person, page_token=pages.encode(cursor)),
                metadata=bearer(api.tokens.app),
            ),
            S.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
    day = "2026-11-01"
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-11-01T10:00:00", "junk"):
        await refused(
            api.settlement.Reconcile(
                settlement_pb2.ReconcileRequest(date=day, detail=True, page_token=pages.encode(at, str(uuid.uuid4()))),
                metadata=bearer(api.tokens.terminal_a),
            ),
            S.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
    await refused(
        api.settlement.Reconcile(
            settlement_pb2.ReconcileRequest(date="2024-W01-1"), metadata=bearer(api.tokens.terminal_a)
        ),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
