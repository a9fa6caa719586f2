"""Reversal (2601) of a refund (2208) through gRPC: the refund's money goes back where the settlement
had put it, exactly once, never below zero; a late Cancel is refused; the caps count it again."""

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
from support import CHILD, Api, account_row_held, cancel, field_violations, refused, reverse

from gongji.v1 import settlement_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
CANCEL = settlement_pb2.ORIGINAL_KIND_CANCEL
OLD, YOUNG = dt.date(1960, 1, 1), dt.date(1990, 1, 1)


async def _family(api: Api, own_fen: int, mulaid_fen: int) -> tuple[str, str]:
    authorizer = await api.enroll(balance_fen=mulaid_fen, birth=OLD)
    patient = await api.enroll(balance_fen=own_fen, birth=YOUNG)
    await api.grant(authorizer, patient, CHILD)
    return authorizer, patient


async def _writes(pool: asyncpg.Pool) -> tuple[int, ...]:
    row = await pool.fetchrow(
        "select (select count(*) from ledger_entry) as l, (select count(*) from refund_reversal) as v,"
        " (select count(*) from refund where reversed_at is not null) as r,"
        " (select coalesce(sum(used_fen), 0) from grant_usage) as u"
    )
    assert row is not None
    return tuple(row)


async def test_reversing_a_refund_takes_its_money_back(api: Api, pool: asyncpg.Pool) -> None:
    authorizer, patient = await _family(api, own_fen=1_000, mulaid_fen=1_500)
    s = (await api.settle(patient, 3_000)).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (1_000, 1_500, 500)
    used = await pool.fetchval("select used_fen from grant_usage")
    refund = (await cancel(api, s.settlement_id, 2_500, request_id="rr-cancel-1")).refund
    assert (refund.psn_cash_pay_fen, refund.acct_mulaid_pay_fen, refund.acct_pay_fen) == (500, 1_500, 500)
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_500, 500)

    undone = await reverse(api, "rr-cancel-1", kind=CANCEL)
    assert undone.undone
    assert undone.refund.refund_id == refund.refund_id
    assert undone.refund.HasField("reversed_at")
    assert (undone.settlement.refunded_fen, undone.settlement.HasField("reversed_at")) == (0, False)
    assert (await api.balance(authorizer), await api.balance(patient)) == (0, 0)
    assert await pool.fetchval("select used_fen from grant_usage") == used  # the caps count it again
    entries = await pool.fetch(
        "select person_id, amount_fen, counterpart_id from ledger_entry where kind = 'REFUND_REVERSAL'"
        " and refund_id = $1 order by person_id",
        uuid.UUID(refund.refund_id),
    )
    assert sorted((e["person_id"], e["amount_fen"], e["counterpart_id"]) for e in entries) == sorted(
        [(authorizer, -1_500, patient), (patient, -500, None)]
    )

    again = await reverse(api, "rr-cancel-1", kind=CANCEL)  # reversing twice answers the same
    assert (again.undone, again.refund.refund_id) == (True, refund.refund_id)
    late = cancel(api, s.settlement_id, 2_500, request_id="rr-cancel-1")
    await refused(late, S.FAILED_PRECONDITION, "ALREADY_REVERSED")
    # What the reversed refund had taken is refundable again, and the settlement's reversal undoes all.
    assert (await cancel(api, s.settlement_id, 0)).refund.amount_fen == 3_000
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_500, 1_000)


async def test_a_settlement_and_a_cancel_may_share_a_request_id(api: Api) -> None:
    """Each kind has its own request ids: reversing the Cancel leaves the Settle of that id alone."""
    _, patient = await _family(api, own_fen=1_000, mulaid_fen=0)
    s = (await api.settle(patient, 600, request_id="shared-id-1")).settlement
    await cancel(api, s.settlement_id, 100, request_id="shared-id-1")
    undone = await reverse(api, "shared-id-1", kind=CANCEL)
    assert (undone.undone, undone.settlement.refunded_fen, undone.settlement.HasField("reversed_at")) == (
        True,
        0,
        False,
    )
    assert await api.balance(patient) == 400
    replay = await api.settle(patient, 600, request_id="shared-id-1")  # the Settle replays as before
    assert replay.replayed
    assert (await reverse(api, "shared-id-1")).settlement.refunded_fen == 600  # now the settlement
    assert await api.balance(patient) == 1_000


async def test_reversing_a_refund_before_the_cancel_arrives(api: Api, pool: asyncpg.Pool) -> None:
    _, patient = await _family(api, own_fen=1_000, mulaid_fen=0)
    s = (await api.settle(patient, 600)).settlement
    nothing = await reverse(api, "rr-early-1", kind=CANCEL)
    assert (nothing.undone, nothing.HasField("settlement"), nothing.HasField("refund")) == (False, False, False)
    await refused(cancel(api, s.settlement_id, 100, request_id="rr-early-1"), S.FAILED_PRECONDITION, "ALREADY_REVERSED")
    assert not (await reverse(api, "rr-early-1", kind=CANCEL)).undone
    assert await api.balance(patient) == 400
    # A Settle under that id is another transaction: not refused by the Cancel's reversal.
    assert not (await api.settle(patient, 100, request_id="rr-early-1")).replayed


async def test_a_refund_spent_meanwhile_is_not_taken_back(api: Api, pool: asyncpg.Pool) -> None:
    """The refund's money paid for something else: the reversal is refused and writes nothing, the
    refund stands; once the money is back, the same reversal goes through."""
    authorizer, patient = await _family(api, own_fen=0, mulaid_fen=1_000)
    s = (await api.settle(patient, 800)).settlement
    await cancel(api, s.settlement_id, 500, request_id="rr-spent-1")
    assert await api.balance(authorizer) == 700
    await api.settle(patient, 400)  # the refunded mutual aid pays another bill
    before = await _writes(pool)
    error = await refused(reverse(api, "rr-spent-1", kind=CANCEL), S.FAILED_PRECONDITION, "REFUND_ALREADY_SPENT")
    assert "refund stands" in (error.details() or "")
    await refused(reverse(api, "rr-spent-1", kind=CANCEL), S.FAILED_PRECONDITION, "REFUND_ALREADY_SPENT")
    assert await _writes(pool) == before
    assert await api.balance(authorizer) == 300
    replay = await cancel(api, s.settlement_id, 500, request_id="rr-spent-1")  # the Cancel still replays
    assert replay.replayed
    await api.credit(authorizer, 200)
    assert (await reverse(api, "rr-spent-1", kind=CANCEL)).undone
    assert await api.balance(authorizer) == 0


async def test_a_refund_of_a_reversed_settlement_stands(api: Api, pool: asyncpg.Pool) -> None:
    """The settlement's reversal gave back everything that was left: there is nothing for the refund's
    money to go back to, so its reversal is refused, writing nothing."""
    _, patient = await _family(api, own_fen=1_000, mulaid_fen=0)
    s = (await api.settle(patient, 600, request_id="rr-whole-1")).settlement
    await cancel(api, s.settlement_id, 200, request_id="rr-part-1")
    await reverse(api, "rr-whole-1")
    before = await _writes(pool)
    await refused(reverse(api, "rr-part-1", kind=CANCEL), S.FAILED_PRECONDITION, "ALREADY_REVERSED")
    assert await _writes(pool) == before
    assert await api.balance(patient) == 1_000
    # The settlement reversal's own refund is no Cancel: its id reverses no refund.
    assert not (await reverse(api, "rr-whole-1", kind=CANCEL)).undone


async def test_reversal_checks_the_kind(api: Api) -> None:
    error = await refused(
        api.settlement.Reverse(
            settlement_pb2.ReverseRequest(original_request_id="rr-kind-1", original_kind=7),  # type: ignore[arg-type]
            metadata=(("authorization", f"Bearer {api.tokens.terminal_a}"),),
        ),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert field_violations(error) == ["original_kind"]
    # Another institution's terminal reverses only its own Cancel of that name.
    _, patient = await _family(api, own_fen=1_000, mulaid_fen=0)
    s = (await api.settle(patient, 600)).settlement
    await cancel(api, s.settlement_id, 100, request_id="rr-other-1")
    assert not (await reverse(api, "rr-other-1", kind=CANCEL, token=api.tokens.terminal_b)).undone
    assert (await cancel(api, s.settlement_id, 100, request_id="rr-other-1")).replayed
    assert await api.balance(patient) == 500


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


async def _cancel_waiting(pool: asyncpg.Pool) -> bool:
    n: int = await pool.fetchval(
        "select count(*) from pg_stat_activity where datname = current_database() and state = 'active'"
        " and query like '%gongji_cancel(%' and pid <> pg_backend_pid()"
    )
    return n > 0


async def test_reverse_racing_a_held_up_cancel(api: Api, pool: asyncpg.Pool) -> None:
    """The Cancel waits behind a row lock while its reversal arrives: the reversal waits for it and
    takes the refund back whole."""
    authorizer, patient = await _family(api, own_fen=300, mulaid_fen=1_000)
    s = (await api.settle(patient, 900)).settlement
    async with account_row_held(pool, authorizer):
        late = asyncio.ensure_future(cancel(api, s.settlement_id, 0, request_id="rr-race-1"))
        for _ in range(100):  # bounded: until the Cancel waits for the lock
            if await _cancel_waiting(pool):
                break
            await asyncio.sleep(0.02)
        assert await _cancel_waiting(pool), "the Cancel is held up behind the lock"
        reversal = asyncio.ensure_future(reverse(api, "rr-race-1", kind=CANCEL))
        await asyncio.sleep(0.2)
        assert not reversal.done(), "the reversal waits for the Cancel"
    refunded, undone = await late, await reversal
    assert refunded.refund.amount_fen == 900
    assert (undone.undone, undone.refund.refund_id) == (True, refunded.refund.refund_id)
    assert (await api.balance(authorizer), await api.balance(patient)) == (400, 0)


async def test_many_cancels_racing_their_reversals(api: Api) -> None:
    """In every interleaving exactly one outcome stands: refunded then taken back, or refused."""
    authorizer, patient = await _family(api, own_fen=3_000, mulaid_fen=30_000)
    pairs = 40  # bounded
    settled = [(await api.settle(patient, 700)).settlement for _ in range(pairs)]
    balances = (await api.balance(authorizer), await api.balance(patient))

    async def late_cancel(i: int) -> str:
        await asyncio.sleep((i % 7) * 0.003)
        try:
            await cancel(api, settled[i].settlement_id, 100 * (1 + i % 7), request_id=f"rc-{i}")
        except grpc.aio.AioRpcError as exc:
            return _reason(exc)
        return "OK"

    async def reversal(i: int) -> bool:
        await asyncio.sleep((i % 5) * 0.003)
        return (await reverse(api, f"rc-{i}", kind=CANCEL)).undone

    results = await asyncio.wait_for(
        asyncio.gather(*(late_cancel(i) for i in range(pairs)), *(reversal(i) for i in range(pairs))), timeout=120
    )
    for refunded, was_undone in zip(results[:pairs], results[pairs:], strict=True):
        assert (refunded, was_undone) in {("OK", True), ("ALREADY_REVERSED", False)}
    assert (await api.balance(authorizer), await api.balance(patient)) == balances


async def test_refund_reversals_are_counted_once(api: Api) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    _, patient = await _family(api, own_fen=100, mulaid_fen=1_000)
    s = (await api.settle(patient, 800)).settlement
    await cancel(api, s.settlement_id, 600, request_id="rr-count-1")
    names = ("own", "mutual_aid", "cash")
    before = [sample("gongji_refund_reversals_total")] + [
        sample("gongji_refund_reversed_fen_total", source=n) for n in names
    ]
    await reverse(api, "rr-count-1", kind=CANCEL)
    await reverse(api, "rr-count-1", kind=CANCEL)  # a repeat
    after = [sample("gongji_refund_reversals_total")] + [
        sample("gongji_refund_reversed_fen_total", source=n) for n in names
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 600, 0]
