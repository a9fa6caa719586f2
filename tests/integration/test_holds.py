"""Holds at the till (issue 18): a Quote holds its split for a short time, the Settle naming the hold
captures exactly that split, a hold nobody captured is released by the expiry work (or by its terminal),
and while held the money is out of reach of any other settlement. Against a real server whose clock the
test holds (tests/wallet_support.py) and a real PostgreSQL; after each test the books explain every
balance (the `books` fixture), holds included.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import grpc
import pytest
from support import bearer, refused
from wallet_support import Wallets, funded

from gongji.api.wallet_expiry import WalletExpiry
from gongji.clock import ManualClock
from gongji.store import audit
from gongji.v1 import account_pb2, settlement_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
PENDING, CAPTURED, RELEASED, EXPIRED = (
    settlement_pb2.HOLD_STATE_PENDING,
    settlement_pb2.HOLD_STATE_CAPTURED,
    settlement_pb2.HOLD_STATE_RELEASED,
    settlement_pb2.HOLD_STATE_EXPIRED,
)


async def hold(
    w: Wallets, patient: str, amount_fen: int, *, seconds: int = 120, request_id: str | None = None, **fields: Any
) -> settlement_pb2.QuoteResponse:
    request = settlement_pb2.QuoteRequest(
        voucher=await w.api.voucher(patient),
        patient_id=patient,
        amount_fen=amount_fen,
        hold_seconds=seconds,
        request_id=request_id or f"h-{uuid.uuid4()}",
        **fields,
    )
    reply: settlement_pb2.QuoteResponse = await w.api.settlement.Quote(
        request, metadata=bearer(w.api.tokens.terminal_a)
    )
    return reply


async def capture(
    w: Wallets, patient: str, amount_fen: int, hold_id: str, *, token: str | None = None, **fields: Any
) -> types_pb2.Settlement:
    request = settlement_pb2.SettleRequest(
        request_id=f"cap-{uuid.uuid4()}",
        voucher=await w.api.voucher(patient),
        patient_id=patient,
        amount_fen=amount_fen,
        hold_id=hold_id,
        **fields,
    )
    reply = await w.api.settlement.Settle(request, metadata=bearer(token or w.api.tokens.terminal_a))
    return reply.settlement


async def release(w: Wallets, hold_id: str, *, token: str | None = None) -> settlement_pb2.ReleaseHoldResponse:
    reply: settlement_pb2.ReleaseHoldResponse = await w.api.settlement.ReleaseHold(
        settlement_pb2.ReleaseHoldRequest(hold_id=hold_id), metadata=bearer(token or w.api.tokens.terminal_a)
    )
    return reply


async def account(w: Wallets, person_id: str) -> account_pb2.Account:
    reply = await w.api.account.GetAccount(
        account_pb2.GetAccountRequest(person_id=person_id), metadata=bearer(w.api.tokens.operator)
    )
    return reply.account


async def hold_state(w: Wallets, hold_id: str) -> str:
    return str(await w.pool.fetchval("select state from settlement_hold where hold_id = $1", uuid.UUID(hold_id)))


def sources(s: Any) -> tuple[int, int, int, int]:
    return s.acct_pay_fen, s.wallet_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen


async def books_clean(w: Wallets) -> None:
    async with w.pool.acquire() as conn:
        assert await audit.differences(conn) == []


def expiry_at(clock_at: dt.datetime, w: Wallets) -> WalletExpiry:
    """The expiry work of another replica whose clock reads `clock_at`."""
    return WalletExpiry(w.server_pool, ManualClock(clock_at), 3600)


async def test_a_hold_sets_the_split_aside_and_the_settle_captures_exactly_it(w: Wallets) -> None:
    """Held, the money is out of the own account, the wallet and the authorizer's account (GetAccount and
    GetWallet show it held), no other settlement can spend it, and the Settle naming the hold settles
    exactly the split held, whatever the balances did meanwhile."""
    patient, _ = await funded(w, 2_000, scheme=types_pb2.SCHEME_EMPLOYEE, own_fen=1_000)
    authorizer = await w.api.enroll(balance_fen=5_000)
    await w.api.grant(authorizer, patient)
    q = await hold(w, patient, 4_000)
    assert sources(q) == (1_000, 2_000, 1_000, 0)
    assert q.hold.state == PENDING and sources(q.hold) == sources(q)
    assert q.hold.expires_at.ToDatetime(dt.UTC) == (w.clock.now() + dt.timedelta(seconds=120)).replace(microsecond=0)
    assert (q.balc_fen, q.wallet_balc_fen) == (0, 0)
    mine, theirs = await account(w, patient), await account(w, authorizer)
    assert (mine.balance_fen, mine.held_fen, theirs.balance_fen, theirs.held_fen) == (0, 1_000, 4_000, 1_000)
    assert ((await w.wallet(patient)).balance_fen, (await w.wallet(patient)).held_fen) == (0, 2_000)

    other = (await w.api.settle(patient, 500)).settlement
    assert sources(other) == (0, 0, 500, 0), "the held money is out of reach: mutual aid pays what is left"
    await w.api.credit(patient, 300)
    s = await capture(w, patient, 4_000, q.hold.hold_id)
    assert sources(s) == (1_000, 2_000, 1_000, 0), "exactly the split held"
    assert (s.balc_fen, s.wallet_balc_fen) == (300, 0)
    assert await hold_state(w, q.hold.hold_id) == "CAPTURED"
    mine, theirs = await account(w, patient), await account(w, authorizer)
    assert (mine.balance_fen, mine.held_fen, theirs.balance_fen, theirs.held_fen) == (300, 0, 3_500, 0)
    await books_clean(w)


async def test_a_retried_holding_quote_answers_the_same_hold(w: Wallets) -> None:
    """Idempotent on the Quote's request id: the same content holds once; other content is refused."""
    patient, _ = await funded(w, 1_000)
    first = await hold(w, patient, 600, request_id="hold-retry-1")
    again = await hold(w, patient, 600, request_id="hold-retry-1")
    assert again.hold.hold_id == first.hold.hold_id and sources(again) == sources(first)
    assert (await w.wallet(patient)).held_fen == 600, "held once"
    await refused(hold(w, patient, 700, request_id="hold-retry-1"), S.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")


async def test_a_hold_expires_at_its_time_and_its_money_comes_back_once(w: Wallets) -> None:
    """A capture one second before the time is over succeeds; at the time it is refused, HOLD_EXPIRED,
    and the refusal gives the money back at once (the patient's next quote sees it); the expiry work
    gives back, once, what nobody asked for."""
    patient, _ = await funded(w, 4_000)
    early = await hold(w, patient, 1_000, seconds=60)
    w.clock.advance(dt.timedelta(seconds=59))
    assert sources(await capture(w, patient, 1_000, early.hold.hold_id)) == (0, 1_000, 0, 0)

    late = await hold(w, patient, 1_000, seconds=60)
    w.clock.advance(dt.timedelta(seconds=60))
    await refused(capture(w, patient, 1_000, late.hold.hold_id), S.FAILED_PRECONDITION, "HOLD_EXPIRED")
    assert await hold_state(w, late.hold.hold_id) == "EXPIRED"
    assert ((await w.wallet(patient)).balance_fen, (await w.wallet(patient)).held_fen) == (3_000, 0)
    await refused(capture(w, patient, 1_000, late.hold.hold_id), S.FAILED_PRECONDITION, "HOLD_RESOLVED")

    forgotten = await hold(w, patient, 500, seconds=60)
    w.clock.advance(dt.timedelta(seconds=60))
    assert await expiry_at(w.clock.now(), w).expire_holds() >= 1
    assert await hold_state(w, forgotten.hold.hold_id) == "EXPIRED"
    assert ((await w.wallet(patient)).balance_fen, (await w.wallet(patient)).held_fen) == (3_000, 0)
    assert await expiry_at(w.clock.now(), w).expire_holds() == 0, "once"
    await books_clean(w)


async def test_a_hold_survives_its_patient_changing_scheme(w: Wallets) -> None:
    """An employee's hold of the own account, captured after an operator re-enrolled the patient as
    resident-insured: the account the hold took from is locked and settled as held, never INTERNAL."""
    patient = await w.api.enroll(balance_fen=1_000)
    q = await hold(w, patient, 800)
    assert sources(q) == (800, 0, 0, 0)
    await w.api.set_status(patient, types_pb2.PERSON_STATUS_ACTIVE, scheme=types_pb2.SCHEME_RESIDENT)
    s = await capture(w, patient, 800, q.hold.hold_id)
    assert sources(s) == (800, 0, 0, 0)
    await books_clean(w)


async def test_the_terminal_releases_a_hold_once(w: Wallets) -> None:
    patient, _ = await funded(w, 1_000)
    q = await hold(w, patient, 800)
    released = await release(w, q.hold.hold_id)
    assert (released.hold.state, released.replayed) == (RELEASED, False)
    assert (await w.wallet(patient)).balance_fen == 1_000
    again = await release(w, q.hold.hold_id)
    assert (again.hold.state, again.replayed) == (RELEASED, True)
    await refused(capture(w, patient, 800, q.hold.hold_id), S.FAILED_PRECONDITION, "HOLD_RESOLVED")
    taken = await hold(w, patient, 300)
    await capture(w, patient, 300, taken.hold.hold_id)
    await refused(release(w, taken.hold.hold_id), S.FAILED_PRECONDITION, "HOLD_RESOLVED")
    await books_clean(w)


async def test_a_capture_must_ask_what_was_held_at_its_own_institution(w: Wallets) -> None:
    patient, _ = await funded(w, 1_000)
    q = await hold(w, patient, 500)
    await refused(capture(w, patient, 501, q.hold.hold_id), S.FAILED_PRECONDITION, "HOLD_MISMATCH")
    await refused(
        capture(w, patient, 500, q.hold.hold_id, use_personal_account=False), S.FAILED_PRECONDITION, "HOLD_MISMATCH"
    )
    await refused(
        capture(w, patient, 500, q.hold.hold_id, token=w.api.tokens.terminal_b), S.NOT_FOUND, "HOLD_NOT_FOUND"
    )
    await refused(release(w, q.hold.hold_id, token=w.api.tokens.terminal_b), S.NOT_FOUND, "HOLD_NOT_FOUND")
    await refused(capture(w, patient, 500, str(uuid.uuid4())), S.NOT_FOUND, "HOLD_NOT_FOUND")
    assert (await w.wallet(patient)).held_fen == 500, "refusals moved nothing"
    assert sources(await capture(w, patient, 500, q.hold.hold_id)) == (0, 500, 0, 0)


async def test_a_revoked_grant_is_not_captured(w: Wallets) -> None:
    """Revocation takes effect at once for money: a hold of mutual aid whose grant was revoked since is
    refused at capture, and its money goes back when the hold expires (the caps stop counting it)."""
    patient = await w.api.enroll(balance_fen=0)
    authorizer = await w.api.enroll(balance_fen=2_000)
    await w.api.grant(authorizer, patient)
    q = await hold(w, patient, 1_500, seconds=30)
    assert sources(q) == (0, 0, 1_500, 0)
    await w.api.revoke(authorizer, patient)
    await refused(capture(w, patient, 1_500, q.hold.hold_id), S.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    w.clock.advance(dt.timedelta(seconds=30))
    await expiry_at(w.clock.now(), w).expire_holds()
    assert await w.api.balance(authorizer) == 2_000
    await books_clean(w)


async def test_a_capture_racing_the_expiry_work_ends_the_hold_once(w: Wallets) -> None:
    """Many times over: a capture at its last second against another replica's expiry work already past
    the time. Exactly one wins, whole: a settlement of the split held, or the money back."""
    patient, _ = await funded(w, 40_000)
    outcomes: dict[str, int] = {}
    for _ in range(20):
        q = await hold(w, patient, 1_000, seconds=5)
        w.clock.advance(dt.timedelta(seconds=4))
        work = expiry_at(w.clock.now() + dt.timedelta(seconds=2), w)
        got = await asyncio.gather(
            capture(w, patient, 1_000, q.hold.hold_id), work.expire_holds(), return_exceptions=True
        )
        state = await hold_state(w, q.hold.hold_id)
        outcomes[state] = outcomes.get(state, 0) + 1
        if state == "CAPTURED":
            assert isinstance(got[0], types_pb2.Settlement) and got[0].wallet_pay_fen == 1_000
        else:
            assert state == "EXPIRED" and isinstance(got[0], grpc.aio.AioRpcError), got
        w.clock.advance(dt.timedelta(seconds=10))
    assert sum(outcomes.values()) == 20, outcomes
    wallet = await w.wallet(patient)
    captured = outcomes.get("CAPTURED", 0)
    assert (wallet.balance_fen, wallet.held_fen) == (40_000 - 1_000 * captured, 0)
    await books_clean(w)


async def test_two_replicas_expire_the_same_holds_once(w: Wallets) -> None:
    patient, _ = await funded(w, 10_000)
    for _ in range(10):
        await hold(w, patient, 1_000, seconds=10)
    assert (await w.wallet(patient)).held_fen == 10_000
    later = w.clock.now() + dt.timedelta(seconds=11)
    ended = await asyncio.gather(expiry_at(later, w).expire_holds(), expiry_at(later, w).expire_holds())
    assert sum(ended) >= 10
    wallet = await w.wallet(patient)
    assert (wallet.balance_fen, wallet.held_fen) == (10_000, 0)
    await books_clean(w)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"hold_seconds": 301}, "hold_seconds"),
        ({"hold_seconds": 60, "request_id": ""}, "request_id"),
        ({"hold_seconds": 60, "request_id": "a b"}, "request_id"),
    ],
)
async def test_a_bad_hold_is_refused_and_writes_nothing(w: Wallets, fields: dict[str, Any], field: str) -> None:
    patient, _ = await funded(w, 500)
    request = settlement_pb2.QuoteRequest(voucher=await w.api.voucher(patient), patient_id=patient, amount_fen=100)
    for name, value in fields.items():
        setattr(request, name, value)
    error = await refused(
        w.api.settlement.Quote(request, metadata=bearer(w.api.tokens.terminal_a)),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert field in (error.details() or "")
    assert (await w.wallet(patient)).held_fen == 0
    settle = settlement_pb2.SettleRequest(
        request_id="bad-hold-id", voucher=await w.api.voucher(patient), patient_id=patient, amount_fen=100, hold_id="x"
    )
    await refused(
        w.api.settlement.Settle(settle, metadata=bearer(w.api.tokens.terminal_a)),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
