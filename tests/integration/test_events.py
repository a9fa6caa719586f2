"""The outbox and EventService (issue 19): every change that matters downstream is an event written in
its transaction, read in order from a cursor, at least once with a stable id, with ID numbers masked for
a downstream system. Real server, real PostgreSQL: the server's own sequencer runs every 0.2 s; the tests
also run it themselves, so as not to wait (one sequencer at a time, whichever)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import grpc
import pytest
from events_support import deduplicated, head, stream_vs_books
from support import PARENT, SPOUSE, Api, bearer, cancel, reverse

from gongji.domain.people import mask_id
from gongji.store import events
from gongji.v1 import events_pb2

pytestmark = pytest.mark.usefixtures("books")


async def since(api: Api, pool: asyncpg.Pool, after: int, person: str) -> list[events_pb2.Event]:
    """The person's events after `after`, once everything committed is sequenced."""
    await head(pool)
    return [e for e in await api.read_events(after) if person in e.person_ids]


async def test_a_family_s_money_is_told_in_order(api: Api, pool: asyncpg.Pool) -> None:
    start = await head(pool)
    patient = await api.enroll(balance_fen=1_000)
    authorizer = await api.enroll(balance_fen=5_000)
    await api.grant(authorizer, patient)
    await api.credit(patient, 500)
    paid = await api.settle(patient, 2_000)  # 1,500 own, 500 mutual aid
    await cancel(api, paid.settlement.settlement_id, 300)
    other = await api.settle(patient, 100, request_id="events-reversed-1")
    await reverse(api, "events-reversed-1")
    told = await since(api, pool, start, patient)
    assert [e.type for e in told] == [
        "account.credited",  # enrolled with 1,000
        "grant.given",
        "account.credited",
        "settlement.settled",
        "settlement.refunded",
        "settlement.settled",
        "settlement.reversed",
    ]
    settled = told[3].settlement
    assert (settled.settlement_id, settled.patient_id, settled.authorizer_id) == (
        paid.settlement.settlement_id,
        patient,
        authorizer,
    )
    assert (settled.amount_fen, settled.acct_pay_fen, settled.acct_mulaid_pay_fen, settled.psn_cash_pay_fen) == (
        2_000,
        1_500,
        500,
        0,
    )
    assert told[4].refund.amount_fen == 300 and told[4].refund.kind == "CANCEL"
    assert told[6].refund.settlement_id == other.settlement.settlement_id
    assert list(told[3].person_ids) == [patient, authorizer]
    assert [e.position for e in told] == sorted(e.position for e in told)
    assert len({e.event_id for e in told}) == len(told)
    assert await stream_vs_books(pool, told, [patient]) == []


async def test_grants_and_bindings_are_told(api: Api, pool: asyncpg.Pool) -> None:
    start = await head(pool)
    holder = await api.enroll()
    member = await api.enroll(birth=dt.date(1950, 1, 1))
    await api.bind(holder, member, relationship=PARENT)
    await api.grant(holder, member, relationship=PARENT)
    await api.revoke(holder, member)
    await api.unbind(holder, member)
    told = await since(api, pool, start, member)
    assert [e.type for e in told] == ["binding.bound", "grant.given", "grant.ended", "binding.ended"]
    assert told[2].grant.status == "REVOKED" and told[2].grant.HasField("ended_at")
    assert told[0].binding.holder_id == holder and told[0].binding.relationship == "PARENT"


async def test_a_downstream_system_sees_id_numbers_masked(api: Api, pool: asyncpg.Pool) -> None:
    start = await head(pool)
    patient = await api.enroll(balance_fen=1_000)
    authorizer = await api.enroll(balance_fen=1_000)
    await api.grant(authorizer, patient, relationship=SPOUSE)
    await api.settle(patient, 1_500)
    await head(pool)
    seen = [e for e in await api.read_events(start, token=api.tokens.consumer) if mask_id(patient) in e.person_ids]
    assert [e.type for e in seen] == ["account.credited", "grant.given", "settlement.settled"]
    text = str(seen)
    assert patient not in text and authorizer not in text
    assert seen[2].settlement.patient_id == mask_id(patient)
    assert seen[2].settlement.authorizer_id == mask_id(authorizer)
    assert seen[2].settlement.acct_mulaid_pay_fen == 500  # money is not masked


async def test_a_consumer_resumes_from_its_cursor(api: Api, pool: asyncpg.Pool) -> None:
    start = await head(pool)
    patient = await api.enroll(balance_fen=1_000)
    for amount in (10, 20, 30, 40):
        await api.settle(patient, amount)
    await head(pool)
    everything = await api.read_events(start)
    first = await api.read_events(start, max_events=2)
    rest = await api.read_events(first[-1].position)
    assert first + rest == everything
    assert [e.position for e in everything] == list(range(start + 1, start + 1 + len(everything)))


async def test_a_following_stream_gets_events_as_they_commit(api: Api, pool: asyncpg.Pool) -> None:
    start = await head(pool)
    patient = await api.enroll(balance_fen=1_000)
    call = api.events.StreamEvents(
        events_pb2.StreamEventsRequest(after_position=start, follow=True), metadata=bearer(api.tokens.app), timeout=30
    )
    got: list[events_pb2.Event] = []

    async def read() -> None:
        async for r in call:
            got.append(r.event)
            if r.event.type == "settlement.settled" and r.event.settlement.patient_id == patient:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)  # the stream is open and caught up
    settled = await api.settle(patient, 123)
    await asyncio.wait_for(reader, 10)  # the server's own sequencer gives it its position
    call.cancel()
    assert got[-1].settlement.settlement_id == settled.settlement.settlement_id
    assert got[-1].settlement.patient_id == patient  # the app backend sees ID numbers whole


async def test_a_real_name_mismatch_is_told_to_the_fraud_team(api: Api, pool: asyncpg.Pool) -> None:
    start = await head(pool)
    patient = await api.enroll(balance_fen=1_000)
    someone = await api.enroll(balance_fen=1_000)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.settle(patient, 100, voucher=await api.voucher(someone), request_id="events-mismatch-1")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    told = await since(api, pool, start, patient)
    assert [e.type for e in told] == ["account.credited", "voucher.real_name_mismatch"]
    assert told[1].real_name_mismatch.request_id == "events-mismatch-1"
    assert await pool.fetchval("select count(*) from settlement where request_id = 'events-mismatch-1'") == 0


async def test_a_named_consumer_s_lag_is_kept(api: Api, pool: asyncpg.Pool) -> None:
    start = await head(pool)
    await api.read_events(start, token=api.tokens.consumer, consumer="warehouse")
    row = await pool.fetchrow(
        "select position from event_consumer e join credential c using (credential_id)"
        " where c.label = 'test consumer' and e.name = 'warehouse'"
    )
    assert row["position"] >= start
    patient = await api.enroll(balance_fen=1_000)
    await api.settle(patient, 10)
    await head(pool)
    lags = {lag.label: lag for lag in await events.consumer_lags(pool, dt.timedelta(days=1))}
    assert lags["test consumer/warehouse"].events >= 1 and lags["test consumer/warehouse"].seconds >= 0
    caught_up = await api.read_events(row["position"], token=api.tokens.consumer, consumer="warehouse")
    lags = {lag.label: lag for lag in await events.consumer_lags(pool, dt.timedelta(days=1))}
    assert lags["test consumer/warehouse"].events <= (await events.head(pool)).position - caught_up[-1].position


async def test_the_stream_itself_is_whole() -> None:
    """deduplicated() finds what a broken stream would show: a repeat that differs, a step back."""
    a = events_pb2.Event(event_id="1", position=1, type="x")
    b = events_pb2.Event(event_id="2", position=2, type="x")
    assert deduplicated([a, b, a, b]) == ([a, b], [])
    assert deduplicated([b, a])[1] == ["event 1 at position 1 after position 2"]
    assert deduplicated([a, events_pb2.Event(event_id="1", position=1, type="y")])[1] == [
        "event 1 told twice, differently"
    ]
