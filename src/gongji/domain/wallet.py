"""The 医保钱包 (medical-insurance wallet) and transfers into it, as pure functions (docs/domain.md, "The
医保钱包").

Since 2025 an employee may move personal-account money to a close relative's wallet, across provinces
too. A transfer is two-phase: it leaves the sender's account when sent and waits (PENDING) for the
recipient, who accepts it (POSTED: the money is in the wallet) or declines it (VOIDED: back to the
sender); one nobody accepted by its due time goes back by itself (EXPIRED). Each resolves once.

The published limits are the defaults of `WalletPolicy`; the sender's region policy may say others.
Each function here is the twin of the SQL step of the same name in store/sql/wallet.sql, held to it by
tests/integration/test_twins.py.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from gongji import errors
from gongji.domain.people import CLOSE_RELATIVES, Person, PersonStatus, Relationship, Scheme

CHINA = ZoneInfo("Asia/Shanghai")


class TransferState(enum.StrEnum):
    PENDING = "PENDING"  # left the sender's account, waiting for the recipient
    POSTED = "POSTED"  # accepted: in the recipient's wallet
    VOIDED = "VOIDED"  # declined: back in the sender's account
    EXPIRED = "EXPIRED"  # not accepted by its due time: back in the sender's account


class WalletScope(enum.StrEnum):
    """How far apart sender and recipient may live."""

    REGION = "REGION"
    PROVINCE = "PROVINCE"
    NATIONAL = "NATIONAL"


@dataclass(frozen=True, slots=True)
class WalletPolicy:
    """A region's limits on transfers its insured send; the defaults are the published ones (2025)."""

    relationships: frozenset[Relationship] = CLOSE_RELATIVES
    scope: WalletScope = WalletScope.NATIONAL  # across provinces too, since 2025
    sends_per_day: int = 3  # per sender and China's calendar day, whatever became of them
    send_max_fen: int = 200_000  # 2,000 元 a transfer
    quiet_from: dt.time = dt.time(22, 0)  # no sends from 22:00 ...
    quiet_until: dt.time = dt.time(6, 0)  # ... to 06:00, China time
    expires_at: dt.time = dt.time(6, 0)  # unaccepted transfers go back at 06:00 the next day


DEFAULT_WALLET_POLICY = WalletPolicy()


def in_quiet_hours(now: dt.datetime, policy: WalletPolicy) -> bool:
    """Whether `now` (China time) is in the hours no transfer is sent: from quiet_from (included) to
    quiet_until (excluded), over midnight when quiet_from is the later; none when they are equal. Twin
    of `gongji_transfer_quiet`."""
    t = now.astimezone(CHINA).time()
    start, end = policy.quiet_from, policy.quiet_until
    if start == end:
        return False
    if start < end:
        return start <= t < end
    return t >= start or t < end


def due_at(sent_at: dt.datetime, policy: WalletPolicy) -> dt.datetime:
    """When a transfer sent at `sent_at` goes back to its sender if nobody accepted it: the next China
    calendar day at expires_at, China time. Twin of `gongji_transfer_due`."""
    next_day = sent_at.astimezone(CHINA).date() + dt.timedelta(days=1)
    return dt.datetime.combine(next_day, policy.expires_at, tzinfo=CHINA)


def china_day(t: dt.datetime) -> dt.date:
    return t.astimezone(CHINA).date()


def send_refusal(
    *,
    sender: Person | None,
    sender_has_account: bool,
    recipient: Person | None,
    wallet_open: bool,
    now: dt.datetime,
    policy: WalletPolicy,
    amount_fen: int,
    pending: bool,
    sent_today: int,
    balance_fen: int,
) -> type[errors.GongjiError] | None:
    """Why a send may not be made, in the order the checks run, or None. Twin of `gongji_send_refusal`.

    `pending`: the sender has a transfer still PENDING and not past its due time (one past it goes back
    before the send: it holds nothing back); `sent_today`: the sender's sends this China calendar day
    (whatever became of them); `balance_fen`: the sender's account, with the money of a transfer past
    its due time."""
    if sender is None or recipient is None:
        return errors.PersonNotFound
    if sender.status is not PersonStatus.ACTIVE:
        return errors.PersonNotActive
    if sender.scheme is not Scheme.EMPLOYEE or not sender_has_account:
        return errors.NotEmployeeInsured
    if recipient.status is not PersonStatus.ACTIVE:
        return errors.PersonNotActive
    if not wallet_open:
        return errors.WalletNotOpen
    if in_quiet_hours(now, policy):
        return errors.TransferQuietHours
    if amount_fen > policy.send_max_fen:
        return errors.TransferOverLimit
    if pending:
        return errors.TransferPending
    if sent_today >= policy.sends_per_day:
        return errors.TransferDailyLimit
    if balance_fen < amount_fen:
        return errors.InsufficientBalance
    return None


def resolution(
    state: TransferState, due: dt.datetime, now: dt.datetime, accept: bool
) -> tuple[TransferState, type[errors.GongjiError] | None, bool]:
    """What accepting (`accept`) or declining a transfer in `state`, due at `due`, does at `now`: the
    state it ends in, the refusal answered (None: the call succeeds), and whether money moves now. Twin
    of `gongji_transfer_resolution`.

    A pending transfer past its due time is returned to its sender now, whatever the call (the expiry
    work may not have reached it yet), and an accept is then refused: so the outcome never depends on
    when the work runs. Asking again for what happened already answers it again; asking for the other
    outcome is refused."""
    if state is TransferState.PENDING:
        if now >= due:
            return TransferState.EXPIRED, (errors.TransferResolved if accept else None), True
        return (TransferState.POSTED if accept else TransferState.VOIDED), None, True
    done = TransferState.POSTED if accept else TransferState.VOIDED
    if state is done or (not accept and state is TransferState.EXPIRED):
        return state, None, False
    return state, errors.TransferResolved, False
