"""Hostile callers of EventService.StreamEvents: every bad field is INVALID_ARGUMENT with one ErrorInfo;
a cursor the stream never gave, or one retention has passed, is told so (never silently skipped past);
a terminal may not read other people's business; no credential may hold more streams or name more
consumers than its share; and the server keeps serving through all of it."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import grpc
import pytest
from support import Api, bearer, refused

from gongji import limits
from gongji.store import events
from gongji.v1 import events_pb2

S = grpc.StatusCode


def stream(api: Api, token: str | None = None, **request: object) -> grpc.aio.UnaryStreamCall:
    return api.events.StreamEvents(
        events_pb2.StreamEventsRequest(**request), metadata=bearer(token or api.tokens.consumer), timeout=20
    )


async def drain(call: grpc.aio.UnaryStreamCall) -> list[events_pb2.StreamEventsResponse]:
    return [r async for r in call]


@pytest.mark.parametrize(
    "request_fields",
    [
        {"after_position": -1},
        {"consumer": "has space"},
        {"consumer": "x" * (limits.EVENT_CONSUMER_NAME_LEN_MAX + 1)},
        {"consumer": "名字"},
        {"consumer": "a\x00b"},
        {"max_events": -5},
    ],
)
async def test_bad_fields_are_invalid_argument(api: Api, request_fields: dict[str, object]) -> None:
    await refused(drain(stream(api, **request_fields)), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")


async def test_a_cursor_the_stream_never_gave_is_out_of_range(api: Api, pool: asyncpg.Pool) -> None:
    newest = (await events.head(pool)).position
    await refused(drain(stream(api, after_position=newest + 1_000_000)), S.OUT_OF_RANGE, "CURSOR_AHEAD")
    await refused(drain(stream(api, after_position=2**63 - 1)), S.OUT_OF_RANGE, "CURSOR_AHEAD")


async def test_a_terminal_reads_no_events(api: Api) -> None:
    await refused(drain(stream(api, api.tokens.terminal_a)), S.PERMISSION_DENIED, "NOT_ALLOWED")


async def test_without_credentials_nothing_is_read(api: Api) -> None:
    call = api.events.StreamEvents(events_pb2.StreamEventsRequest(), timeout=10)
    await refused(drain(call), S.UNAUTHENTICATED, "CREDENTIALS_MISSING")


async def test_a_credential_holds_its_share_of_streams(api: Api) -> None:
    """Following streams held open up to the credential's limit; the next is refused at once, and the
    others keep their streams."""
    held = [stream(api, api.tokens.app, follow=True) for _ in range(limits.EVENT_STREAMS_PER_CREDENTIAL_MAX)]
    try:
        for call in held:  # each is open once its headers came back
            await asyncio.wait_for(call.initial_metadata(), 10)
        await asyncio.sleep(0.3)
        await refused(drain(stream(api, api.tokens.app, follow=True)), S.RESOURCE_EXHAUSTED, "EVENT_STREAMS_BUSY")
        assert await api.read_events(max_events=1, token=api.tokens.consumer) is not None  # others still read
    finally:
        for call in held:
            call.cancel()
    await asyncio.sleep(0.3)
    await drain(stream(api, api.tokens.app, max_events=1))  # the slots came back


async def test_a_credential_names_a_bounded_number_of_consumers(api: Api, pool: asyncpg.Pool) -> None:
    """Each name is a series of the lag metric: a credential cannot make them grow without bound."""
    token = await _new_consumer_token(pool)
    for n in range(limits.EVENT_CONSUMER_NAMES_MAX):
        await drain(stream(api, token, consumer=f"c{n}", max_events=1))
    await drain(stream(api, token, consumer="c0", max_events=1))  # a known name reads on
    await refused(
        drain(stream(api, token, consumer="one-more", max_events=1)),
        S.RESOURCE_EXHAUSTED,
        "EVENT_CONSUMERS_LIMIT_REACHED",
    )


async def test_a_cursor_retention_has_passed_is_expired(api: Api, pool: asyncpg.Pool) -> None:
    """Events deleted after a consumer's cursor are never skipped silently: it is told CURSOR_EXPIRED and
    reads on from the oldest kept (position pruned_through)."""
    patient = await api.enroll(balance_fen=1_000)
    await api.settle(patient, 10)
    await events.sequence(pool, limits.EVENT_SEQUENCE_BATCH)
    before = (await events.head(pool)).pruned_through
    # Retention as if every event were past it (the oldest first, a prefix of the stream).
    while await events.prune(pool, dt.datetime.now(dt.UTC) + dt.timedelta(days=1), limits.EVENT_PRUNE_BATCH):
        pass
    head = await events.head(pool)
    assert head.pruned_through > before
    await refused(drain(stream(api, after_position=head.pruned_through - 1)), S.FAILED_PRECONDITION, "CURSOR_EXPIRED")
    assert await api.read_events(head.pruned_through) == []  # from the oldest kept: nothing skipped


async def _new_consumer_token(pool: asyncpg.Pool) -> str:
    from gongji.store import credentials
    from gongji.store.credentials import Kind

    return await credentials.create(pool, Kind.CONSUMER, "hostile consumer")
