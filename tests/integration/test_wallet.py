"""The 医保钱包 (issue 18): wallets, two-phase transfers, their limits at each edge, and the expiry work,
against a real server whose clock the test holds (gongji.clock.ManualClock) and a real PostgreSQL.

The server and its clock are tests/wallet_support.py's (the fixtures `w` and `wallet_server`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from conftest import VOUCHER_KEY
from harness import reason_of
from prometheus_client import REGISTRY
from support import RESIDENT, bearer, refused
from wallet_support import CHINA, Wallets, at

from gongji.api import server
from gongji.api.app import App
from gongji.api.wallet_expiry import WalletExpiry
from gongji.clock import ManualClock
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.store import audit, wallets
from gongji.v1 import account_pb2, types_pb2, wallet_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
CHILD, PARENT, SPOUSE = types_pb2.RELATIONSHIP_CHILD, types_pb2.RELATIONSHIP_PARENT, types_pb2.RELATIONSHIP_SPOUSE
PENDING, POSTED, VOIDED, EXPIRED = (
    wallet_pb2.TRANSFER_STATE_PENDING,
    wallet_pb2.TRANSFER_STATE_POSTED,
    wallet_pb2.TRANSFER_STATE_VOIDED,
    wallet_pb2.TRANSFER_STATE_EXPIRED,
)


async def test_a_transfer_is_sent_accepted_and_in_the_books(w: Wallets) -> None:
    parent, child = await w.family(sender_fen=100_000)
    sent = (await w.send(parent, child, 30_000)).transfer
    assert (sent.state, sent.amount_fen, sent.relationship) == (PENDING, 30_000, CHILD)
    day = w.clock.now().astimezone(CHINA).date()
    assert sent.due_at.ToDatetime(dt.UTC) == at(day + dt.timedelta(days=1), 6)
    # Out of the sender's account at once: it cannot be spent twice; GetAccount and ListLedger say where.
    assert await w.api.balance(parent) == 70_000
    account = await w.api.account.GetAccount(
        account_pb2.GetAccountRequest(person_id=parent), metadata=bearer(w.api.tokens.app)
    )
    assert account.account.transfer_pending_out_fen == 30_000
    ledger = await w.api.account.ListLedger(
        account_pb2.ListLedgerRequest(person_id=parent, page_size=1), metadata=bearer(w.api.tokens.app)
    )
    newest = ledger.entries[0]
    assert (newest.kind, newest.amount_fen, newest.transfer_id) == ("TRANSFER_OUT", -30_000, sent.transfer_id)
    assert newest.note.startswith("to the wallet of ") and child not in newest.note
    assert (await w.wallet(child)).pending_in_fen == 30_000
    w.clock.advance(dt.timedelta(hours=3))
    accepted = await w.accept(sent)
    assert (accepted.transfer.state, accepted.replayed) == (POSTED, False)
    wallet = await w.wallet(child)
    assert (wallet.balance_fen, wallet.pending_in_fen) == (30_000, 0)
    # Accepting again answers it again; declining it now is refused; the money stays.
    again = await w.accept(sent)
    assert (again.transfer.state, again.replayed) == (POSTED, True)
    await refused(w.decline(sent), S.FAILED_PRECONDITION, "TRANSFER_RESOLVED")
    assert (await w.wallet(child)).balance_fen == 30_000 and await w.api.balance(parent) == 70_000


async def test_a_declined_transfer_goes_back_and_a_send_is_idempotent(w: Wallets) -> None:
    parent, child = await w.family(sender_fen=10_000)
    first = await w.send(parent, child, 4_000, request_id="wallet-once-" + parent)
    again = await w.send(parent, child, 4_000, request_id="wallet-once-" + parent)
    assert (again.replayed, again.transfer.transfer_id) == (True, first.transfer.transfer_id)
    await refused(
        w.send(parent, child, 4_001, request_id="wallet-once-" + parent), S.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"
    )
    declined = await w.decline(first.transfer)
    assert declined.transfer.state == VOIDED
    assert await w.api.balance(parent) == 10_000
    assert (await w.decline(first.transfer)).replayed
    await refused(w.accept(first.transfer), S.FAILED_PRECONDITION, "TRANSFER_RESOLVED")
    # Someone else cannot resolve it.
    stranger = await w.api.enroll()
    await refused(
        w.stub.AcceptTransfer(
            wallet_pb2.AcceptTransferRequest(transfer_id=first.transfer.transfer_id, recipient_id=stranger),
            metadata=bearer(w.api.tokens.app),
        ),
        S.NOT_FOUND,
        "TRANSFER_NOT_FOUND",
    )


async def test_the_daily_count_the_amount_and_one_pending_at_a_time(w: Wallets) -> None:
    parent, child = await w.family()
    day = w.clock.now().astimezone(CHINA).date()
    # 2,000.01 元 is over; 2,000.00 is the most.
    await refused(w.send(parent, child, 200_001), S.FAILED_PRECONDITION, "TRANSFER_OVER_LIMIT")
    first = (await w.send(parent, child, 200_000)).transfer
    # A second while the first is pending.
    await refused(w.send(parent, child, 100), S.FAILED_PRECONDITION, "TRANSFER_PENDING")
    await w.decline(first)
    second = (await w.send(parent, child, 100)).transfer
    await w.accept(second)
    third = (await w.send(parent, child, 100)).transfer
    await w.accept(third)
    # The fourth of the day, whatever became of the first three.
    await refused(w.send(parent, child, 100), S.FAILED_PRECONDITION, "TRANSFER_DAILY_LIMIT")
    w.clock.set(at(day + dt.timedelta(days=1), 6))
    assert (await w.send(parent, child, 100)).transfer.state == PENDING
    assert await w.api.balance(parent) == 500_000 - 300


async def test_no_sends_from_22_00_to_06_00_china_time(w: Wallets) -> None:
    parent, child = await w.family()
    day = w.clock.now().astimezone(CHINA).date()
    w.clock.set(at(day, 21, 59, 59))
    t = (await w.send(parent, child, 100)).transfer
    await w.accept(t)
    w.clock.set(at(day, 22))
    await refused(w.send(parent, child, 100), S.FAILED_PRECONDITION, "TRANSFER_QUIET_HOURS")
    w.clock.set(at(day + dt.timedelta(days=1), 5, 59, 59))
    await refused(w.send(parent, child, 100), S.FAILED_PRECONDITION, "TRANSFER_QUIET_HOURS")
    w.clock.set(at(day + dt.timedelta(days=1), 6))
    assert (await w.send(parent, child, 100)).transfer.state == PENDING


async def test_an_unaccepted_transfer_goes_back_at_06_00_the_next_day(w: Wallets) -> None:
    parent, child = await w.family(sender_fen=1_000)
    day = w.clock.now().astimezone(CHINA).date()
    t = (await w.send(parent, child, 600)).transfer
    w.clock.set(at(day + dt.timedelta(days=1), 5, 59, 59))
    await w.expire()
    assert (await w.wallet(child)).pending_in_fen == 600  # not yet
    w.clock.set(at(day + dt.timedelta(days=1), 6))
    assert await w.expire() >= 1
    assert await w.api.balance(parent) == 1_000
    await refused(w.accept(t), S.FAILED_PRECONDITION, "TRANSFER_RESOLVED")
    # Declining a returned transfer answers it as it is.
    declined = await w.decline(t)
    assert (declined.transfer.state, declined.replayed) == (EXPIRED, True)


async def test_an_accept_past_the_due_time_returns_the_money_whether_the_work_ran_or_not(w: Wallets) -> None:
    parent, child = await w.family(sender_fen=1_000)
    day = w.clock.now().astimezone(CHINA).date()
    late = (await w.send(parent, child, 700)).transfer
    w.clock.set(at(day + dt.timedelta(days=1), 6))
    await refused(w.accept(late), S.FAILED_PRECONDITION, "TRANSFER_RESOLVED")
    assert await w.api.balance(parent) == 1_000
    assert (await w.wallet(child)).balance_fen == 0


async def test_the_recipient_must_have_a_wallet_and_be_a_close_relative(w: Wallets) -> None:
    parent = await w.api.enroll(birth=dt.date(1960, 1, 1), balance_fen=10_000)
    no_wallet = await w.api.enroll(birth=dt.date(1990, 1, 1))
    await refused(w.send(parent, no_wallet, 100), S.FAILED_PRECONDITION, "WALLET_NOT_OPEN")
    _, child = await w.family()
    # A "parent" younger than the sender: the birth dates contradict it.
    await refused(w.send(parent, child, 100, relationship=PARENT), S.FAILED_PRECONDITION, "RELATIONSHIP_IMPLAUSIBLE")
    await refused(
        w.send(parent, child, 100, relationship=types_pb2.RELATIONSHIP_PARENT_IN_LAW),
        S.FAILED_PRECONDITION,
        "RELATIONSHIP_NOT_ALLOWED",
    )
    # A resident has no personal account to send from.
    resident = await w.api.enroll(birth=dt.date(1960, 1, 1), scheme=RESIDENT)
    await refused(w.send(resident, child, 100), S.FAILED_PRECONDITION, "NOT_EMPLOYEE_INSURED")
    # Across provinces, by default.
    far_parent, far_child = await w.family(region="610100", recipient_region="450100")
    assert (await w.send(far_parent, far_child, 100)).transfer.state == PENDING
    assert await w.api.balance(parent) == 10_000


async def test_accept_racing_the_expiry_ends_each_transfer_once(w: Wallets) -> None:
    """Many times over: an accept and the expiry work (two replicas of it) on a transfer at its due
    time. Exactly one outcome each; the books say which."""
    families = [await w.family(sender_fen=1_500) for _ in range(12)]
    day = w.clock.now().astimezone(CHINA).date()
    sent = [(await w.send(p, c, 1_000)).transfer for p, c in families]
    w.clock.set(
        at(
            day + dt.timedelta(days=1),
            5,
            59,
            59,
        )
        + dt.timedelta(microseconds=999_999)
    )

    async def accept(t: wallet_pb2.Transfer) -> str:
        try:
            return wallet_pb2.TransferState.Name((await w.accept(t)).transfer.state)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    outcomes = await asyncio.gather(*(accept(t) for t in sent), w.expire(), w.expire())
    accepted = [o for o in outcomes[: len(sent)] if o == "TRANSFER_STATE_POSTED"]
    assert len(accepted) == len(sent)  # before 06:00 the accept wins: nothing was due
    w.clock.set(at(day + dt.timedelta(days=2), 10))
    second = [(await w.send(p, c, 500)).transfer for p, c in families]
    w.clock.set(at(day + dt.timedelta(days=3), 6))
    outcomes = await asyncio.gather(*(accept(t) for t in second), w.expire(), w.expire())
    assert all(o == "FAILED_PRECONDITION" for o in outcomes[: len(second)])
    assert sum(outcomes[len(second) :]) <= len(second)
    for parent, child in families:
        assert await w.api.balance(parent) == 500  # 1,000 sent and kept, 500 sent and returned
        assert (await w.wallet(child)).balance_fen == 1_000
    assert await audit.differences(w.pool) == []


async def test_two_replicas_return_each_due_transfer_once(w: Wallets) -> None:
    families = [await w.family(sender_fen=300) for _ in range(30)]
    day = w.clock.now().astimezone(CHINA).date()
    for parent, child in families:
        await w.send(parent, child, 300)
    w.clock.set(at(day + dt.timedelta(days=1), 7))
    returned = await asyncio.gather(*(w.expire() for _ in range(4)))
    assert sum(returned) >= len(families)  # these, and any other test's left due by this hour
    for parent, _ in families:
        assert await w.api.balance(parent) == 300
    entries = await w.pool.fetchval(
        "select count(*) from ledger_entry where kind = 'TRANSFER_RETURN' and person_id = any($1::text[])",
        [p for p, _ in families],
    )
    assert entries == len(families)


async def test_a_server_started_after_the_due_time_catches_up(
    w: Wallets, db_url: str, server_pool: asyncpg.Pool
) -> None:
    """gongji was down over 06:00: the expiry work runs at start and returns what came due meanwhile."""
    parent, child = await w.family(sender_fen=800)
    day = w.clock.now().astimezone(CHINA).date()
    t = (await w.send(parent, child, 800)).transfer
    later = ManualClock(at(day + dt.timedelta(days=1), 9))
    settings = Settings(
        database_url=db_url, voucher_key=VOUCHER_KEY.decode(), grpc_listen="127.0.0.1:0", wallet_expiry_interval_s=3600
    )
    restarted = await server.start(
        App(settings, server_pool, VoucherCodec({"k1": VOUCHER_KEY}, "k1"), later), "127.0.0.1:0"
    )
    try:
        for _ in range(100):
            if await w.api.balance(parent) == 800:
                break
            await asyncio.sleep(0.05)
        assert await w.api.balance(parent) == 800
    finally:
        await restarted.stop(1.0)
    row = await wallets.get_wallet(w.pool, child)
    assert row is not None and row.pending_in_fen == 0
    assert t.state == PENDING


async def test_accept_decline_expiry_and_a_retried_send_race_to_one_outcome(w: Wallets) -> None:
    """For each transfer, at once: an accept, a decline, the same send again and two expiry runs. Each
    transfer ends accepted or declined, never both; the retried send answers the one transfer."""
    families = [await w.family(sender_fen=2_000) for _ in range(16)]
    sent = []
    for parent, child in families:
        reply = await w.send(parent, child, 2_000, request_id=f"race-{parent}")
        sent.append(reply.transfer)
    w.clock.advance(dt.timedelta(hours=1))

    async def call(coroutine: Any) -> Any:
        try:
            return await coroutine
        except grpc.aio.AioRpcError as exc:
            return reason_of(exc)

    calls = [
        c
        for (parent, child), t in zip(families, sent, strict=True)
        for c in (w.accept(t), w.decline(t), w.send(parent, child, 2_000, request_id=f"race-{parent}"))
    ]
    answers = await asyncio.gather(*(call(c) for c in calls), w.expire(), w.expire())
    for i, ((parent, child), t) in enumerate(zip(families, sent, strict=True)):
        accepted, declined, again = answers[3 * i : 3 * i + 3]
        assert again.replayed and again.transfer.transfer_id == t.transfer_id
        won = [a for a in (accepted, declined) if not isinstance(a, str) and not a.replayed]
        assert len(won) == 1, (accepted, declined)
        lost = declined if won[0] is accepted else accepted
        assert lost == "TRANSFER_RESOLVED"
        in_wallet = (await w.wallet(child)).balance_fen
        back = await w.api.balance(parent)
        assert (in_wallet, back) == ((2_000, 0) if won[0] is accepted else (0, 2_000))


# ---- The sender's region policy says the limits (RegionPolicy.wallet) -------------------------------
# Gansu (62) and Qinghai (63): no other test sets a policy for them or sends from them.
LANZHOU, JIAYUGUAN, XINING = "620100", "620200", "630100"


@pytest.fixture
async def lanzhou(w: Wallets) -> AsyncIterator[Callable[..., Awaitable[account_pb2.RegionPolicy]]]:
    """Set Lanzhou's policy with these wallet limits (its grant rules the default's); removed after."""

    async def set_wallet(**wallet: Any) -> account_pb2.RegionPolicy:
        reply = await w.api.set_policy(
            LANZHOU, types_pb2.GRANT_SCOPE_PROVINCE, [SPOUSE, PARENT, CHILD], wallet=account_pb2.WalletPolicy(**wallet)
        )
        return reply.policy

    try:
        yield set_wallet
    finally:
        await w.pool.execute("delete from region_policy where region_key = $1", LANZHOU)


async def test_a_regions_wallet_policy_changes_what_a_send_allows(w: Wallets, lanzhou: Any) -> None:
    """One send a day of at most 1 元, at any hour, within the province: Lanzhou's senders only."""
    policy = await lanzhou(
        sends_per_day=1, send_max_fen=100, quiet_from="00:00", quiet_until="00:00", scope=types_pb2.GRANT_SCOPE_PROVINCE
    )
    assert (policy.wallet.sends_per_day, policy.wallet.send_max_fen) == (1, 100)
    assert (policy.wallet.quiet_from, policy.wallet.quiet_until, policy.wallet.expires_at) == (
        "00:00",
        "00:00",
        "06:00",
    )
    day = w.clock.now().astimezone(CHINA).date()
    w.clock.set(at(day, 23, 30))  # quiet hours by default; none in Lanzhou
    parent, child = await w.family(region=LANZHOU, recipient_region=JIAYUGUAN)
    await refused(w.send(parent, child, 101), S.FAILED_PRECONDITION, "TRANSFER_OVER_LIMIT")
    first = (await w.send(parent, child, 100)).transfer
    assert first.due_at.ToDatetime(dt.UTC) == at(day + dt.timedelta(days=1), 6)
    await w.accept(first)
    await refused(w.send(parent, child, 1), S.FAILED_PRECONDITION, "TRANSFER_DAILY_LIMIT")
    # Another province's recipient: out of the province scope.
    far_parent, far_child = await w.family(region=LANZHOU, recipient_region=XINING)
    await refused(w.send(far_parent, far_child, 1), S.FAILED_PRECONDITION, "REGION_OUT_OF_SCOPE")
    # A sender elsewhere keeps the published limits: 22:00 to 06:00 is quiet.
    xian_parent, xian_child = await w.family(region="610100")
    await refused(w.send(xian_parent, xian_child, 100), S.FAILED_PRECONDITION, "TRANSFER_QUIET_HOURS")
    # The next China day, Lanzhou's one send is there again.
    w.clock.set(at(day + dt.timedelta(days=1), 0, 0))
    assert (await w.send(parent, child, 100)).transfer.state == PENDING


async def test_a_regions_relatives_and_expiry_time(w: Wallets, lanzhou: Any) -> None:
    """Lanzhou: spouses only, and unaccepted transfers go back at noon; no sends at all in the night."""
    await lanzhou(relationships=[SPOUSE], expires_at="12:00", quiet_from="20:00", quiet_until="08:00")
    parent, child = await w.family(region=LANZHOU)
    await refused(w.send(parent, child, 100), S.FAILED_PRECONDITION, "RELATIONSHIP_NOT_ALLOWED")
    husband = await w.api.enroll(region=LANZHOU, birth=dt.date(1960, 1, 1), balance_fen=1_000)
    wife = await w.api.enroll(region=LANZHOU, birth=dt.date(1962, 1, 1), scheme=RESIDENT)
    await w.stub.OpenWallet(wallet_pb2.OpenWalletRequest(person_id=wife), metadata=w._md())
    day = w.clock.now().astimezone(CHINA).date()
    w.clock.set(at(day, 7, 59, 59))
    await refused(w.send(husband, wife, 100, relationship=SPOUSE), S.FAILED_PRECONDITION, "TRANSFER_QUIET_HOURS")
    w.clock.set(at(day, 8))
    t = (await w.send(husband, wife, 100, relationship=SPOUSE)).transfer
    assert t.due_at.ToDatetime(dt.UTC) == at(day + dt.timedelta(days=1), 12)
    w.clock.set(at(day + dt.timedelta(days=1), 11, 59, 59))
    await w.expire()
    assert await w.api.balance(husband) == 900
    w.clock.set(at(day + dt.timedelta(days=1), 12))
    await w.expire()
    assert await w.api.balance(husband) == 1_000
    # No sends a day: every send refused, and the default once the policy is gone.
    await lanzhou(sends_per_day=0)
    await refused(w.send(husband, wife, 100, relationship=SPOUSE), S.FAILED_PRECONDITION, "TRANSFER_DAILY_LIMIT")
    await w.pool.execute("delete from region_policy where region_key = $1", LANZHOU)
    assert (await w.send(husband, wife, 100, relationship=SPOUSE)).transfer.state == PENDING


# ---- Metrics: what the alerts on the expiry work read (deploy/prometheus/gongji-rules.yml) ----------
def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _events() -> dict[str, tuple[float, float]]:
    names = ("SENT", "ACCEPTED", "DECLINED", "EXPIRED", "TRANSFER_PENDING")
    return {
        e: (
            _value("gongji_wallet_transfers_total", event=e),
            _value("gongji_wallet_transferred_fen_total", event=e),
        )
        for e in names
    }


async def test_the_counters_and_gauges_move_on_send_accept_decline_and_expiry(w: Wallets) -> None:
    day = w.clock.now().astimezone(CHINA).date()
    await w.expire()  # what earlier tests left due by now goes back first: the deltas below are this test's
    before = _events()
    parent, child = await w.family(sender_fen=1_000)
    await w.accept((await w.send(parent, child, 300)).transfer)
    await w.decline((await w.send(parent, child, 200)).transfer)
    last = (await w.send(parent, child, 100)).transfer
    await refused(w.send(parent, child, 1), S.FAILED_PRECONDITION, "TRANSFER_PENDING")
    await w.expire()
    pending = await w.pool.fetchrow(
        "select count(*) as n, coalesce(sum(amount_fen), 0) as fen from wallet_transfer where state = 'PENDING'"
    )
    assert pending is not None and pending["n"] >= 1
    assert (_value("gongji_wallet_pending_transfers"), _value("gongji_wallet_pending_fen")) == (
        pending["n"], pending["fen"]
    )  # fmt: skip
    assert _value("gongji_wallet_expiry_overdue_seconds") == 0.0
    # Ten minutes past the due time, with the transfer's row held by someone else: the work skips it,
    # and the gauge says how late it is.
    w.clock.set(at(day + dt.timedelta(days=1), 6, 10))
    async with w.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "select 1 from wallet_transfer where transfer_id = $1 for update", uuid.UUID(last.transfer_id)
        )
        assert await w.expire() == 0
        assert _value("gongji_wallet_expiry_overdue_seconds") == 600.0
    assert await w.expire() == 1
    assert _value("gongji_wallet_expiry_overdue_seconds") == 0.0
    after = _events()
    delta = {e: (after[e][0] - before[e][0], after[e][1] - before[e][1]) for e in after}
    assert delta == {
        "SENT": (3, 600),
        "ACCEPTED": (1, 300),
        "DECLINED": (1, 200),
        "EXPIRED": (1, 100),
        "TRANSFER_PENDING": (1, 0),  # a refused send, counted by its reason
    }
    # The work's own loop counts its runs.
    ok = _value("gongji_wallet_expiry_runs_total", outcome="ok")
    loop = WalletExpiry(w.server_pool, w.clock, 0.01)
    loop.start()
    try:
        for _ in range(200):
            if _value("gongji_wallet_expiry_runs_total", outcome="ok") > ok:
                break
            await asyncio.sleep(0.05)
    finally:
        await loop.close()
    assert _value("gongji_wallet_expiry_runs_total", outcome="ok") > ok


async def test_two_opens_racing_both_answer_the_wallet(w: Wallets) -> None:
    """The second of two OpenWallet calls at once waits on the first's insert, which then does nothing:
    it answers the wallet the first opened, not a refusal."""
    person = await w.api.enroll(scheme=RESIDENT)
    async with w.pool.acquire() as first, first.transaction():
        await first.execute(
            "insert into wallet (person_id, opened_at, updated_at) values ($1, $2, $2)", person, w.clock.now()
        )
        second = asyncio.create_task(wallets.open_wallet(w.server_pool, person, w.clock.now()))
        await asyncio.sleep(0.3)  # the second's insert waits for this transaction
        assert not second.done()
    wallet, opened = await second
    assert (wallet.person_id, wallet.balance_fen, opened) == (person, 0, False)


async def test_a_transfer_past_its_due_time_holds_its_sender_back_no_more(w: Wallets) -> None:
    """The expiry work has not run yet: the next send returns the past-due transfer itself, and its
    money counts; a refused send leaves it for the work."""
    parent, child = await w.family(sender_fen=1_000)
    day = w.clock.now().astimezone(CHINA).date()
    first = (await w.send(parent, child, 1_000)).transfer
    w.clock.set(at(day + dt.timedelta(days=1), 6))
    await refused(w.send(parent, child, 1_001), S.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")
    assert (await w.wallet(child)).pending_in_fen == 1_000  # refused: nothing written
    second = (await w.send(parent, child, 1_000)).transfer
    assert second.state == PENDING
    listed = await w.stub.ListTransfers(
        wallet_pb2.ListTransfersRequest(person_id=parent), metadata=bearer(w.api.tokens.app)
    )
    states = {t.transfer_id: t.state for t in listed.transfers}
    assert (states[first.transfer_id], states[second.transfer_id]) == (EXPIRED, PENDING)
    assert await w.api.balance(parent) == 0


async def test_a_retry_is_answered_by_its_transfer_whatever_the_rules_say_now(w: Wallets, pool: asyncpg.Pool) -> None:
    parent, child = await w.family(region="640100", recipient_region="640100")
    first = await w.send(parent, child, 100, request_id="retry-rules-" + parent)
    try:
        await pool.execute(
            "insert into region_policy (region_key, scope, allowed_relationships, wallet_relationships)"
            " values ('64', 'PROVINCE', '{SPOUSE}', '{SPOUSE}')"
        )
        again = await w.send(parent, child, 100, request_id="retry-rules-" + parent)
        assert (again.replayed, again.transfer.transfer_id) == (True, first.transfer.transfer_id)
        await refused(w.send(parent, child, 100), S.FAILED_PRECONDITION, "RELATIONSHIP_NOT_ALLOWED")
    finally:
        await pool.execute("delete from region_policy where region_key = '64'")


async def test_the_expiry_work_locks_accounts_in_the_order_settlements_do(w: Wallets) -> None:
    """A batch returning transfers of several senders takes their accounts in key order, as a settlement
    or a refund takes its two: a transaction holding the first sender's account and then asking for the
    second's finishes, and the batch after it (before the fix: a deadlock, one side aborted)."""
    day = w.clock.now().astimezone(CHINA).date()
    one, child_one = await w.family(sender_fen=100)
    two, child_two = await w.family(sender_fen=100)
    first, second = sorted((one, two))  # key order, as the "C" collation sorts these ids
    recipient = {one: child_one, two: child_two}
    await w.send(second, recipient[second], 100)  # due first
    w.clock.set(at(day + dt.timedelta(days=1), 10))
    await w.send(first, recipient[first], 100)
    w.clock.set(at(day + dt.timedelta(days=3), 10))
    async with w.pool.acquire() as conn, conn.transaction():
        await conn.execute("select 1 from account where person_id = $1 for update", first)
        expiring = asyncio.create_task(w.expire())
        await asyncio.sleep(0.3)  # the batch now holds both transfers and waits for the first account
        await conn.execute("select 1 from account where person_id = $1 for update", second)
    assert await expiring >= 2
    assert (await w.api.balance(first), await w.api.balance(second)) == (100, 100)
