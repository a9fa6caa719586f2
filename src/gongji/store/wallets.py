"""The 医保钱包: wallets, and transfers into them (store/sql/wallet.sql does the money, one statement each)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg

from gongji import errors
from gongji.domain.eligibility import ALWAYS_REFUSED, Scope, check_plausible, in_scope
from gongji.domain.people import Relationship
from gongji.domain.wallet import TransferState, WalletPolicy, WalletScope
from gongji.store import credentials, db, people
from gongji.store.credentials import Kind

_TRANSFER_COLUMNS = (
    "transfer_id, sender_id, recipient_id, relationship, amount_fen, state, request_id, sent_at, due_at, resolved_at"
)
# Money calls: the app backend's credential is checked in the same statement (credentials.money_guard).
_SEND = f"""
select g.outcome, g.replayed, (g.transfer).* from credential c
 cross join lateral gongji_send_transfer($2, $3, $4, $5, $6, $7) g
 where {credentials.money_guard("$1", Kind.APP)}"""
_RESOLVE = f"""
select g.outcome, g.replayed, (g.transfer).* from credential c
 cross join lateral gongji_resolve_transfer($2, $3, $4, $5) g
 where {credentials.money_guard("$1", Kind.APP)}"""
_EXPIRE = f"select {_TRANSFER_COLUMNS} from gongji_expire_transfers($1, $2)"
_POLICY = "select * from gongji_wallet_policy($1)"
_SENT_BEFORE = "select exists (select 1 from wallet_transfer where sender_id = $1 and request_id = $2)"
_OPEN = """
with person_ok as (select p.person_id from person p where p.person_id = $1 and p.status = 'ACTIVE'),
opened as (
    insert into wallet (person_id, opened_at, updated_at) select person_id, $2, $2 from person_ok
    on conflict (person_id) do nothing returning person_id, balance_fen, opened_at, true as new)
select person_id, balance_fen, opened_at, new from opened
union all
select w.person_id, w.balance_fen, w.opened_at, false from wallet w where w.person_id = $1"""
_WALLET = """
select w.person_id, w.balance_fen, w.opened_at,
       coalesce((select sum(t.amount_fen) from wallet_transfer t
                  where t.recipient_id = w.person_id and t.state = 'PENDING'), 0)::bigint as pending_in_fen,
       coalesce((select sum(h.wallet_pay_fen) from settlement_hold h
                  where h.patient_id = w.person_id and h.state = 'PENDING'), 0)::bigint as held_fen
  from wallet w where w.person_id = $1"""
_PENDING_OUT = """
select coalesce(sum(t.amount_fen), 0)::bigint from wallet_transfer t where t.sender_id = $1 and t.state = 'PENDING'"""
_LIST = f"""
select {_TRANSFER_COLUMNS} from wallet_transfer
 where (sender_id = $1 or recipient_id = $1) and (sent_at, transfer_id) < ($2, $3)
 order by sent_at desc, transfer_id desc limit $4"""
# What the expiry work and its metrics watch: transfers pending, their money, and those past due.
_PENDING_STATS = """
select count(*) as pending, coalesce(sum(amount_fen), 0)::bigint as pending_fen,
       count(*) filter (where due_at <= $1) as overdue,
       extract(epoch from $1 - min(due_at) filter (where due_at <= $1))::float8 as overdue_s
  from wallet_transfer where state = 'PENDING'"""


@dataclass(frozen=True, slots=True)
class WalletRow:
    person_id: str
    balance_fen: int
    opened_at: dt.datetime
    pending_in_fen: int = 0  # transfers to this wallet still waiting to be accepted
    held_fen: int = 0  # held at the till by the owner's pending holds (out of balance_fen)


@dataclass(frozen=True, slots=True)
class TransferRow:
    transfer_id: uuid.UUID
    sender_id: str
    recipient_id: str
    relationship: Relationship
    amount_fen: int
    state: TransferState
    request_id: str
    sent_at: dt.datetime
    due_at: dt.datetime
    resolved_at: dt.datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> TransferRow:
        fields = {k: r[k] for k in cls.__dataclass_fields__}
        return cls(**fields | {"relationship": Relationship(r["relationship"]), "state": TransferState(r["state"])})


@dataclass(frozen=True, slots=True)
class PendingStats:
    pending: int
    pending_fen: int
    overdue: int
    overdue_s: float | None  # how far past due the oldest overdue transfer is; None: none is


async def open_wallet(pool: asyncpg.Pool, person_id: str, now: dt.datetime) -> tuple[WalletRow, bool]:
    """Open the person's wallet (an ACTIVE person, employee- or resident-insured); (wallet, opened now).
    Opening an open wallet answers it as it is."""
    rows = await db.fetch(pool, _OPEN, person_id, now)
    if not rows:
        # Either no active person, or another OpenWallet of this person committed its insert while this
        # one waited on it: the insert then did nothing, and the statement's snapshot, taken before that
        # commit, cannot see the row. A statement of its own can.
        opened = await get_wallet(pool, person_id)
        if opened is not None:
            return opened, False
        person = await people.get_person(pool, person_id)
        raise errors.PersonNotFound() if person is None else errors.PersonNotActive()
    r = rows[0]
    return WalletRow(r["person_id"], r["balance_fen"], r["opened_at"]), r["new"]


async def get_wallet(pool: asyncpg.Pool, person_id: str) -> WalletRow | None:
    r = await db.fetchrow(pool, _WALLET, person_id)
    return None if r is None else WalletRow(**dict(r))


async def pending_out_fen(pool: asyncpg.Pool, person_id: str) -> int:
    """What the person sent that waits for its recipient: out of the account, not yet anyone's."""
    fen: int = await db.fetchval(pool, _PENDING_OUT, person_id)
    return fen


async def policy_for(pool: asyncpg.Pool, region_code: str | None) -> WalletPolicy:
    r = await db.fetchrow(pool, _POLICY, region_code)
    assert r is not None
    return WalletPolicy(
        frozenset(Relationship(x) for x in r["relationships"]),
        WalletScope(r["scope"]),
        r["sends_per_day"],
        r["send_max_fen"],
        r["quiet_from"],
        r["quiet_until"],
        r["expires_at"],
    )


async def sent_before(pool: asyncpg.Pool, sender_id: str, request_id: str) -> bool:
    """Whether the sender's request id made a transfer already: its retry is answered by the send's own
    statement (the same transfer, or IDEMPOTENCY_KEY_REUSED), whatever the relationship rules say now."""
    seen: bool = await db.fetchval(pool, _SENT_BEFORE, sender_id, request_id)
    return seen


async def check_relationship(pool: asyncpg.Pool, sender_id: str, recipient_id: str, relationship: Relationship) -> None:
    """Raise the refusal when `recipient_id` may not receive transfers from `sender_id` as their
    `relationship`: as for a grant, the birth dates must agree with it, and the sender's region policy
    decides which relatives and how far apart they may live (by default: the close relatives, anywhere
    in the country). The money rules are judged in the send's own statement."""
    sender, recipient = await people.get_person(pool, sender_id), await people.get_person(pool, recipient_id)
    if sender is None or recipient is None:
        raise errors.PersonNotFound()
    policy = await policy_for(pool, sender.region_code)
    if relationship in ALWAYS_REFUSED or relationship not in policy.relationships:
        raise errors.RelationshipNotAllowed(f"{relationship} may not receive transfers from this region")
    check_plausible(sender, recipient, relationship)
    if not in_scope(sender.region_code, recipient.region_code, Scope(policy.scope.value)):
        raise errors.RegionOutOfScope(f"sender and recipient must be in the same {policy.scope.lower()}")


def _answer(row: asyncpg.Record | None) -> tuple[TransferRow, bool]:
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["outcome"] != "OK":
        raise errors.BY_REASON[row["outcome"]]()
    return TransferRow.from_record(row), row["replayed"]


async def send(
    pool: asyncpg.Pool,
    *,
    credential_id: int,
    now: dt.datetime,
    request_id: str,
    sender_id: str,
    recipient_id: str,
    relationship: Relationship,
    amount_fen: int,
) -> tuple[TransferRow, bool]:
    """Send in one transaction as the app backend of `credential_id`; (transfer, replayed). Refusals
    raise and wrote nothing."""
    row = await db.fetchrow(
        pool, _SEND, credential_id, now, request_id, sender_id, recipient_id, relationship.value, amount_fen
    )
    transfer, replayed = _answer(row)
    assert transfer.state is not TransferState.PENDING or transfer.resolved_at is None
    return transfer, replayed


@dataclass(frozen=True, slots=True)
class Resolved:
    transfer: TransferRow
    moved: bool  # this call ended the transfer (False: it had ended before)
    refusal: type[errors.GongjiError] | None  # what the call answers: an accept of a returned transfer


async def resolve(
    pool: asyncpg.Pool, *, credential_id: int, now: dt.datetime, transfer_id: uuid.UUID, person_id: str, accept: bool
) -> Resolved:
    """Accept (or decline) as the recipient `person_id`. An accept past the due time returns the money
    to the sender in the same statement and is refused (`refusal`): it would have gone back anyway, and
    that never depends on when the expiry work runs."""
    row = await db.fetchrow(pool, _RESOLVE, credential_id, now, transfer_id, person_id, accept)
    if row is None:
        raise errors.CredentialsInvalid("unknown or revoked credentials")
    if row["transfer_id"] is None:
        raise errors.BY_REASON[row["outcome"]]()
    refusal = None if row["outcome"] == "OK" else errors.BY_REASON[row["outcome"]]
    return Resolved(TransferRow.from_record(row), not row["replayed"], refusal)


async def expire_due(pool: asyncpg.Pool, now: dt.datetime, limit: int) -> list[TransferRow]:
    """Return to their senders at most `limit` pending transfers due by `now`; the ones returned."""
    return [TransferRow.from_record(r) for r in await db.fetch(pool, _EXPIRE, now, limit)]


async def pending_stats(pool: asyncpg.Pool, now: dt.datetime) -> PendingStats:
    r = await db.fetchrow(pool, _PENDING_STATS, now)
    assert r is not None
    return PendingStats(r["pending"], r["pending_fen"], r["overdue"], r["overdue_s"])


async def list_transfers(
    pool: asyncpg.Pool, person_id: str, before: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[TransferRow]:
    """The person's transfers, sent and received, newest first, before the cursor `before`."""
    at, tid = before or (dt.datetime.max.replace(tzinfo=dt.UTC), uuid.UUID(int=(1 << 128) - 1))
    return [TransferRow.from_record(r) for r in await db.fetch(pool, _LIST, person_id, at, tid, limit)]
