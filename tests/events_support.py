"""The event stream held against the books: every entry of every ledger and wallet has its event in the
stream, and each person's events come in the order of their entries (commit order per account)."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from gongji import limits
from gongji.store import events as outbox
from gongji.v1 import events_pb2


async def head(pool: asyncpg.Pool) -> int:
    """The newest position, once every event committed so far is sequenced (the tests sequence them
    themselves rather than wait for the server's sequencer: one at a time, whichever)."""
    await outbox.sequence(pool, limits.EVENT_SEQUENCE_BATCH)
    return (await outbox.head(pool)).position


# An entry's kind -> the event it comes with: (type or type group, the entry's column naming its subject).
_ENTRY_EVENT = {
    "CREDIT": ("account.credited", "credit_id"),
    "SETTLEMENT": ("settlement.settled", "settlement_id"),
    "MUTUAL_AID": ("settlement.settled", "settlement_id"),
    "REFUND": ("settlement.refunded", "refund_id"),
    "REVERSAL": ("settlement.reversed", "refund_id"),
    "REFUND_REVERSAL": ("refund.reversed", "refund_id"),
    "PREMIUM": ("premium.paid", "premium_payment_id"),
    "PREMIUM_REFUND": ("premium.refunded", "premium_payment_id"),
    "TRANSFER_OUT": ("transfer.sent", "transfer_id"),
    "TRANSFER_RETURN": ("transfer.returned", "transfer_id"),
    "TRANSFER_IN": ("transfer.posted", "transfer_id"),
    "HOLD": ("hold.placed", "hold_id"),
    "HOLD_RELEASE": ("hold.ended", "hold_id"),
}
# Types that stand for a group of the table above.
_GROUP = {
    "transfer.voided": "transfer.returned",
    "transfer.expired": "transfer.returned",
    "hold.captured": "hold.ended",
    "hold.released": "hold.ended",
    "hold.expired": "hold.ended",
}
_SUBJECT = {
    "settlement": "settlement_id",
    "refund": "refund_id",
    "credit": "credit_id",
    "premium": "payment_id",
    "transfer": "transfer_id",
    "hold": "hold_id",
}


def key(e: events_pb2.Event) -> tuple[str, str] | None:
    """The (type group, subject id) an event is found by from the entries; None for events without entries."""
    part = e.WhichOneof("data")
    if part not in _SUBJECT:
        return None
    return _GROUP.get(e.type, e.type), getattr(getattr(e, part), _SUBJECT[part])


def deduplicated(events: Iterable[events_pb2.Event]) -> tuple[list[events_pb2.Event], list[str]]:
    """The events once each, by event_id, as a consumer keeps them, and what is wrong with the stream
    itself: an event told twice with other content or another position, positions out of order."""
    seen: dict[str, events_pb2.Event] = {}
    problems: list[str] = []
    last = 0
    for e in events:
        earlier = seen.get(e.event_id)
        if earlier is not None:
            if earlier != e:
                problems.append(f"event {e.event_id} told twice, differently")
            continue
        if e.position <= last:
            problems.append(f"event {e.event_id} at position {e.position} after position {last}")
        last = e.position
        seen[e.event_id] = e
    return list(seen.values()), problems


async def stream_vs_books(pool: asyncpg.Pool, events: list[events_pb2.Event], people: Iterable[str]) -> list[str]:
    """What does not match between the books of `people` and the (deduplicated) stream: an entry whose
    event is missing, or a person's events out of the order of their entries."""
    position = {k: e.position for e in events if (k := key(e)) is not None}
    problems: list[str] = []
    for book in ("ledger_entry", "wallet_entry"):
        rows = await pool.fetch(
            f"""select e.*, h.settlement_id as captured_by from {book} e
                  left join settlement_hold h on h.hold_id = e.hold_id and h.state = 'CAPTURED'
                 where e.person_id = any($1::text[]) order by e.person_id, e.entry_id""",
            list(people),
        )
        last: dict[str, tuple[int, int]] = {}
        for r in rows:
            kind, column = _ENTRY_EVENT[r["kind"]]
            k = (kind, str(r[column]))
            if r["kind"] == "HOLD_RELEASE" and r["captured_by"] is not None:
                # A capture gives the hold's money back and settles in one commit: its entries come in
                # that order, its events as settlement.settled, then hold.captured.
                k = ("settlement.settled", str(r["captured_by"]))
            if k not in position:
                problems.append(f"{book} {r['entry_id']} ({r['kind']}): no event {k}")
                continue
            before = last.get(r["person_id"])
            if before is not None and position[k] < before[0]:
                problems.append(
                    f"{book} {r['entry_id']} ({r['kind']}): its event at position {position[k]} comes before "
                    f"the event of entry {before[1]} at {before[0]}"
                )
            last[r["person_id"]] = (position[k], r["entry_id"])
    return problems
