"""The outbox's edges, found by a review (issue 19, part 3): a retried fraud signal, a capture's order,
a sequencer that cannot take the head, reading from 0 and the lag once retention ran, a slow consumer
going away. Real server, real PostgreSQL, as tests/integration/test_events.py. The retention test deletes
every sequenced event of the session's database, as tests/hostile/test_event_stream.py does: every other
test reads from a position it took first."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import grpc
import pytest
from events_support import head, stream_vs_books
from support import Api
from wallet_support import Wallets

from gongji import limits, metrics
from gongji.api.outbox import Outbox
from gongji.store import events
from gongji.v1 import events_pb2, settlement_pb2

pytestmark = pytest.mark.usefixtures("books")


async def test_a_retried_real_name_mismatch_is_told_once(api: Api, pool: asyncpg.Pool) -> None:
    """A terminal retries a Settle whose answer it did not get, with the same request id: one signal
    (voucher_mismatch, one row per request), one event, however often the refusal is answered."""
    start = await head(pool)
    patient = await api.enroll(balance_fen=1_000)
    someone = await api.enroll(balance_fen=1_000)
    voucher = await api.voucher(someone)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.settle(patient, 100, voucher=voucher, request_id="review-mismatch-retried")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await head(pool)
    told = [
        e
        for e in await api.read_events(start)
        if e.type == "voucher.real_name_mismatch" and e.real_name_mismatch.request_id == "review-mismatch-retried"
    ]
    assert len({e.event_id for e in told}) == 1, f"one mismatch, told as {len(told)} distinct events"


async def test_a_captured_hold_is_told_in_the_order_of_its_ledger_entries(w: Wallets) -> None:
    """A capture writes HOLD_RELEASE then SETTLEMENT entries in one commit, and its events are
    settlement.settled then hold.captured (docs/events.md): the stream holds to the books, the hold's
    release read as part of the capture's settlement (events_support.stream_vs_books)."""
    pool = w.pool
    start = await head(pool)
    patient = await w.api.enroll(balance_fen=1_000)
    q = await w.api.settlement.Quote(
        settlement_pb2.QuoteRequest(
            voucher=await w.api.voucher(patient),
            patient_id=patient,
            amount_fen=600,
            hold_seconds=120,
            request_id=f"h-{uuid.uuid4()}",
        ),
        metadata=(("authorization", f"Bearer {w.api.tokens.terminal_a}"),),
    )
    await w.api.settlement.Settle(
        settlement_pb2.SettleRequest(
            request_id=f"cap-{uuid.uuid4()}",
            voucher=await w.api.voucher(patient),
            patient_id=patient,
            amount_fen=600,
            hold_id=q.hold.hold_id,
        ),
        metadata=(("authorization", f"Bearer {w.api.tokens.terminal_a}"),),
    )
    await head(pool)
    told = [e for e in await w.api.read_events(start) if patient in e.person_ids]
    assert await stream_vs_books(pool, told, [patient]) == [], [e.type for e in told]


async def test_a_sequencer_that_cannot_take_the_head_is_not_counted_ok(api: Api, pool: asyncpg.Pool) -> None:
    """A transaction holding the outbox_head row makes every sequencer skip: those runs are counted
    `skipped`, never `ok`, and the age of the oldest waiting event grows, so GongjiOutboxStalled fires."""
    outbox = Outbox(pool, 30)
    ok = metrics.OUTBOX_RUNS.labels("sequence", "ok")
    skipped = metrics.OUTBOX_RUNS.labels("sequence", "skipped")
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("select 1 from outbox_head for update")
        await api.credit(await api.enroll(), 100)  # a committed event, waiting
        before, skipped_before = ok._value.get(), skipped._value.get()
        task = asyncio.create_task(outbox._every("sequence", 0.05, outbox.sequence))
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.read_lags()
        waiting_s = metrics.EVENTS_UNSEQUENCED_SECONDS._value.get()
        counted_ok, counted_skipped = ok._value.get() - before, skipped._value.get() - skipped_before
    assert waiting_s > 0 and counted_skipped > 0
    assert counted_ok == 0, f"{counted_ok} sequencer runs counted ok while an event waited {waiting_s:.3f} s"


async def test_after_position_0_reads_from_the_oldest_kept_and_lag_survives_retention(
    api: Api, pool: asyncpg.Pool
) -> None:
    """0 reads from the oldest event kept, also once retention has deleted some; and a named consumer
    whose unread events retention deleted (the one now losing events) still reports its lag, so
    GongjiEventConsumerBehind stays firing."""
    start = await head(pool)
    await api.read_events(start, token=api.tokens.consumer, consumer="review-lagging")
    patient = await api.enroll(balance_fen=1_000)
    await api.settle(patient, 10)
    await head(pool)
    await asyncio.sleep(0.1)
    lagging = {g.label: g for g in await events.consumer_lags(pool, dt.timedelta(days=1))}[
        "test consumer/review-lagging"
    ]
    assert lagging.seconds > 0
    while await events.prune(pool, dt.datetime.now(dt.UTC) + dt.timedelta(days=1), limits.EVENT_PRUNE_BATCH):
        pass
    assert (await events.head(pool)).pruned_through > start
    lagging = {g.label: g for g in await events.consumer_lags(pool, dt.timedelta(days=1))}[
        "test consumer/review-lagging"
    ]
    problems = []
    if lagging.seconds == 0:
        problems.append(f"lag_seconds 0 for a consumer {lagging.events} events behind, some of them deleted")
    try:
        await api.read_events(0)
    except grpc.aio.AioRpcError as exc:
        problems.append(f"after_position 0: {exc.code().name} {exc.details()}")
    assert problems == []


async def test_a_slow_consumer_that_goes_away_leaves_no_error_and_frees_its_streams(
    api: Api, pool: asyncpg.Pool, captured_log: object
) -> None:
    """A consumer reading a backlog slowly (flow control holds the server at a `yield`) and then going
    away: grpc closes the handler's generators from another task, where the interceptor cannot reset the
    caller's context; that is no error, and the credential's stream slots come back."""
    await pool.execute(  # a backlog of a few megabytes of events
        """insert into outbox_event (type, occurred_at, person_ids, data)
           select 'account.credited', now(), '{}', jsonb_build_object('credit_id', repeat('x', 200), 'amount_fen', 1)
             from generate_series(1, 20000)"""
    )
    await head(pool)
    start_log = captured_log.getvalue()  # type: ignore[attr-defined]
    for _ in range(limits.EVENT_STREAMS_PER_CREDENTIAL_MAX + 1):
        call = api.events.StreamEvents(
            events_pb2.StreamEventsRequest(after_position=0, follow=True),
            metadata=(("authorization", f"Bearer {api.tokens.consumer}"),),
        )
        await call.read()  # one event, then stop reading: the server fills the window and waits
        await asyncio.sleep(0.3)
        call.cancel()
        await asyncio.sleep(0.3)
    import gc

    gc.collect()
    await asyncio.sleep(0.5)
    new_log = captured_log.getvalue()[len(start_log) :]  # type: ignore[attr-defined]
    assert "unhandled" not in new_log and "Traceback" not in new_log, new_log[-3000:]
    assert len(await api.read_events(0, token=api.tokens.consumer, max_events=1)) == 1
