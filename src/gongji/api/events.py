"""EventService: the outbox's events, streamed from a cursor (docs/events.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import asyncpg
from google.protobuf import json_format

from gongji import errors, limits
from gongji.api.app import App, Context, timestamp
from gongji.api.auth import current_principal
from gongji.api.validate import Fields
from gongji.domain.people import mask_id
from gongji.store import events
from gongji.store.credentials import Kind
from gongji.v1 import events_pb2, events_pb2_grpc

_CONSUMER_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{limits.EVENT_CONSUMER_NAME_LEN_MAX}}}")

# Which of Event's messages an event type's data is read into: by its type, else by the part before its dot.
_DATA_FIELD = {
    "settlement.settled": "settlement",
    "settlement.refunded": "refund",
    "settlement.reversed": "refund",
    "refund.reversed": "refund",
    "account.credited": "credit",
    "voucher.real_name_mismatch": "real_name_mismatch",
}
_DATA_FIELD_BY_PREFIX = {
    "grant": "grant",
    "binding": "binding",
    "premium": "premium",
    "transfer": "transfer",
    "hold": "hold",
}

# The fields of the events' data that hold a person's ID number: masked for a kind that may not see them.
PERSON_FIELDS = frozenset(
    {
        "patient_id",
        "authorizer_id",
        "person_id",
        "beneficiary_id",
        "holder_id",
        "member_id",
        "payer_id",
        "sender_id",
        "recipient_id",
    }
)
# The kinds of credential that see ID numbers whole: the app backend, which tells each person of their
# family's use of their account (it knows them), and operators. A downstream system sees them masked.
_SEES_ID_NUMBERS = frozenset({Kind.APP, Kind.OPERATOR})


def data_field(event_type: str) -> str:
    return _DATA_FIELD.get(event_type) or _DATA_FIELD_BY_PREFIX[event_type.partition(".")[0]]


# An ID number inside any other text a client chose (a request id such as `credit-610102199203154021`).
_ID_NUMBER = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


def _masked(field: str, value: Any) -> Any:
    if field in PERSON_FIELDS and isinstance(value, str):
        return mask_id(value)
    if isinstance(value, str):
        return _ID_NUMBER.sub(lambda m: mask_id(m.group()), value)
    return value


def event(row: asyncpg.Record, *, masked: bool) -> events_pb2.Event:
    data: dict[str, Any] = json.loads(row["data"])
    person_ids: list[str] = row["person_ids"]
    if masked:
        data = {k: _masked(k, v) for k, v in data.items()}
        person_ids = [mask_id(p) for p in person_ids]
    e = events_pb2.Event(
        event_id=str(row["event_id"]),
        position=row["position"],
        type=row["type"],
        occurred_at=timestamp(row["occurred_at"]),
        person_ids=person_ids,
    )
    # Fields the proto does not know yet are left out, never a stream stopped at the event for good.
    json_format.ParseDict(data, getattr(e, data_field(row["type"])), ignore_unknown_fields=True)
    return e


class _Streams:
    """The event streams open in this process, per credential: each is bounded (limits.py)."""

    def __init__(self) -> None:
        self._open: Counter[int] = Counter()

    @contextlib.contextmanager
    def open(self, credential_id: int) -> Iterator[None]:
        if self._open.total() >= limits.EVENT_STREAMS_MAX:
            raise errors.EventStreamsBusy(f"this server holds {limits.EVENT_STREAMS_MAX} event streams")
        if self._open[credential_id] >= limits.EVENT_STREAMS_PER_CREDENTIAL_MAX:
            raise errors.EventStreamsBusy(
                f"this credential has {limits.EVENT_STREAMS_PER_CREDENTIAL_MAX} event streams open here"
            )
        self._open[credential_id] += 1
        try:
            yield
        finally:
            self._open[credential_id] -= 1
            if not self._open[credential_id]:
                del self._open[credential_id]


class EventService(events_pb2_grpc.EventServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app
        self._streams = _Streams()

    async def StreamEvents(
        self, request: events_pb2.StreamEventsRequest, context: Context
    ) -> AsyncIterator[events_pb2.StreamEventsResponse]:
        fields = Fields()
        if request.after_position < 0:
            fields.bad("after_position", "must be 0 or a position the stream gave")
        if request.consumer and not _CONSUMER_NAME.fullmatch(request.consumer):
            fields.bad("consumer", f"must be 1 to {limits.EVENT_CONSUMER_NAME_LEN_MAX} of A-Z a-z 0-9 . _ -")
        if request.max_events < 0:
            fields.bad("max_events", "must be 0 (no limit) or more")
        fields.done()
        principal = current_principal.get()
        pool = self._app.pool
        with self._streams.open(principal.credential_id):
            head = await events.head(pool)
            after = request.after_position or head.pruned_through  # 0: from the oldest kept
            if after > head.position:
                raise errors.CursorAhead(f"the newest position is {head.position}")
            if after < head.pruned_through:
                raise errors.CursorExpired(
                    f"events up to position {head.pruned_through} were deleted; the oldest kept follows it"
                )
            consumer = _Consumer(pool, principal.credential_id, request.consumer, after)
            await consumer.save()
            masked = principal.kind not in _SEES_ID_NUMBERS
            read = _follow(pool, after, request, masked)
            async with contextlib.aclosing(read):
                async for e in read:
                    yield events_pb2.StreamEventsResponse(event=e)
                    await consumer.reached(e.position)
            await consumer.save()


async def _follow(
    pool: Any, after: int, request: events_pb2.StreamEventsRequest, masked: bool
) -> AsyncGenerator[events_pb2.Event, None]:
    """The events after position `after`, page by page; on as they come with `follow`."""
    position, left = after, request.max_events or None
    while True:
        want = min(limits.EVENT_PAGE, left) if left else limits.EVENT_PAGE
        rows = await events.read(pool, position, want)
        for row in rows:
            if row["position"] != position + 1:
                # Positions are given without gaps; one here was deleted by retention while this
                # consumer read: going on would skip it unseen.
                raise errors.CursorExpired(f"the events after position {position} were deleted while read")
            position = row["position"]
            yield event(row, masked=masked)
            if left is not None:
                left -= 1
                if not left:
                    return
        if len(rows) < want:  # the newest event is sent
            if not request.follow:
                return
            await asyncio.sleep(limits.EVENT_POLL_S)


class _Consumer:
    """A named consumer's last position, written at most every EVENT_CONSUMER_SAVE_S while it reads."""

    def __init__(self, pool: Any, credential_id: int, name: str, position: int) -> None:
        self._pool, self._credential_id, self._name = pool, credential_id, name
        self._position = position
        self._saved_at = time.monotonic()

    async def reached(self, position: int) -> None:
        self._position = position
        if self._name and time.monotonic() - self._saved_at >= limits.EVENT_CONSUMER_SAVE_S:
            await self.save()

    async def save(self) -> None:
        if self._name:
            await events.consumer_seen(
                self._pool, self._credential_id, self._name, self._position, limits.EVENT_CONSUMER_NAMES_MAX
            )
            self._saved_at = time.monotonic()
