"""The model-based test: hypothesis drives the real gongji server over gRPC with random sequences of
enrolments, status changes, credits, grants, revocations, bindings, vouchers, region rules on wholly
self-paid items, quotes and settlements of bills sent as their amount or as their parts (with a kind of
care and an insutype), refunds and reversals, relatives' premiums paid and refunded (retries with the
same request id among them), 医保钱包 wallets and transfers on a clock the model drives, and wallet
money paying at settlement where each region's policy places it (refunded, reversed, and taken back by
the reversal of a refund), and splits held at the till (holding Quotes, their captures, releases and
expiry on the same clock), and after every step compares every answer, split, refusal reason and
balance (accounts and wallets, and what holds set aside of them) with the pure model of the rules
(docs/domain.md) in gongji_model.py.
After every step the books must also pass the audit.

Hypothesis' stateful testing is synchronous, so the server runs in an event loop of the test's own
(harness.own_loop_server) and each step is one runner.run(). CI runs a small size; a full run sets
GONGJI_MODEL_EXAMPLES and GONGJI_MODEL_STEPS (docs/reliability.md). Shrunk failures are kept as
explicit regression tests at the end of this file.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import grpc
from gongji_model import (
    ACTIVE,
    CHILD,
    CHINA_TIME,
    CLOSE_RELATIVES,
    DEFAULT_WALLET_ORDER,
    EMPLOYEE,
    FAMILY_BOUND_MEMBERS_MAX,
    GRANDCHILD,
    GRANDPARENT,
    HOLD_SECONDS_MAX,
    INSUTYPES,
    MED_TYPES,
    OTHER,
    PARENT,
    PENDING,
    RESIDENT,
    SEND_MAX_FEN,
    SIBLING,
    SPOUSE,
    SUSPENDED,
    TERMINATED,
    WALLET_ORDERS,
    Bill,
    Hold,
    Model,
    Quoted,
    Refused,
    Settlement,
    Transfer,
    plausible,
)
from harness import CODEC, Served, own_loop_server, reason_of
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support import bearer

from gongji.api.family import china_today
from gongji.api.wallet_expiry import WalletExpiry
from gongji.clock import ManualClock
from gongji.domain.bill import Parts
from gongji.domain.waterfall import BillSplit, Split
from gongji.store import audit
from gongji.v1 import account_pb2, family_pb2, settlement_pb2, types_pb2, wallet_pb2, wallet_pb2_grpc

T = TypeVar("T")

EXAMPLES = int(os.environ.get("GONGJI_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("GONGJI_MODEL_STEPS", "30"))

REGIONS = ["610100", "610200", "440100"]  # two 统筹区 of Shaanxi, one of Guangdong
# A grandparent, a parent, a young adult, a child: 1960 and 1988 are 28 years apart, 2000 is too close to
# both neighbours to be a grandparent's or a grandchild's.
BIRTHS = [dt.date(1960, 3, 1), dt.date(1988, 7, 1), dt.date(2000, 7, 2), dt.date(2015, 6, 1)]
RELATIONSHIPS = {
    SPOUSE: types_pb2.RELATIONSHIP_SPOUSE,
    PARENT: types_pb2.RELATIONSHIP_PARENT,
    CHILD: types_pb2.RELATIONSHIP_CHILD,
    SIBLING: types_pb2.RELATIONSHIP_SIBLING,
    GRANDPARENT: types_pb2.RELATIONSHIP_GRANDPARENT,
    GRANDCHILD: types_pb2.RELATIONSHIP_GRANDCHILD,
    OTHER: types_pb2.RELATIONSHIP_OTHER,
}
SCHEMES = {EMPLOYEE: types_pb2.SCHEME_EMPLOYEE, RESIDENT: types_pb2.SCHEME_RESIDENT}
STATUSES = {
    ACTIVE: types_pb2.PERSON_STATUS_ACTIVE,
    SUSPENDED: types_pb2.PERSON_STATUS_SUSPENDED,
    TERMINATED: types_pb2.PERSON_STATUS_TERMINATED,
}
INSTITUTIONS = ["A", "B"]

schemes = st.sampled_from([EMPLOYEE, EMPLOYEE, EMPLOYEE, RESIDENT])
statuses = st.sampled_from([ACTIVE] * 6 + [SUSPENDED, TERMINATED])
amounts = st.integers(1, 3_000) | st.sampled_from([1, 100_000_000])
use_account = st.sampled_from([True, True, True, False])
# What may pay a kind of care's wholly self-paid items (account, mutual aid); the last is refused.
WHOLLY_RULES = [(True, True), (True, False), (False, False)]
wholly_rules = st.dictionaries(st.sampled_from(MED_TYPES), st.sampled_from(WHOLLY_RULES), max_size=3)
# Where a region's patients' wallets pay: mostly the default, said or (UNSPECIFIED) not.
wallet_orders = st.sampled_from(["UNSPECIFIED", DEFAULT_WALLET_ORDER, *WALLET_ORDERS])
# A patient's visits to the till, with the wallet's money (GongjiMachine._at_the_till).
till_steps = st.lists(
    st.sampled_from(
        ["settle"] * 5
        + ["cancel"] * 3
        + ["reverse cancel", "reverse cancel", "hold", "hold"]
        + ["refund spent", "reverse", "top up", "order"]
    ),
    min_size=3,
    max_size=10,
)

# Holds at the till: how long (mostly allowed, now and then a second too long), and a patient's visits to
# the till with holds (GongjiMachine.holds_at_the_till).
hold_seconds = st.sampled_from([1, 60, 60, 120, HOLD_SECONDS_MAX, HOLD_SECONDS_MAX + 1])
hold_steps = st.lists(
    st.sampled_from(
        ["capture"] * 4 + ["hold"] * 2 + ["release", "settle", "retry", "clock", "clock", "expire", "revoke"]
    ),
    min_size=2,
    max_size=8,
)

# 医保钱包 transfers: around the limit of one transfer, the odd invalid amount, mostly small ones.
wallet_amounts = st.sampled_from([0, 1, SEND_MAX_FEN - 1, SEND_MAX_FEN, SEND_MAX_FEN + 1]) | st.integers(1, 3_000)
# Where the model's clock goes next (China time): just before and at the quiet hours' edges, to the
# morning, or on by a second, an hour, a day.
CLOCK_MOVES = ["21:59:59", "22:00:00", "05:59:59", "06:00:00", "10:00:00", "+1s", "+1h", "+1d"]
# The first example's clock: ahead of any real clock and of tests/integration/test_wallet.py's 2031.
CLOCK_START = dt.datetime(2032, 1, 1, 10, tzinfo=CHINA_TIME)


def moved(now: dt.datetime, move: str) -> dt.datetime:
    """`now` moved as CLOCK_MOVES says: on by a step, or to the next time of day strictly after it."""
    steps = {"+1s": dt.timedelta(seconds=1), "+1h": dt.timedelta(hours=1), "+1d": dt.timedelta(days=1)}
    if move in steps:
        return now + steps[move]
    local = now.astimezone(CHINA_TIME)
    target = dt.datetime.combine(local.date(), dt.time.fromisoformat(move), tzinfo=CHINA_TIME)
    return target if target > local else target + dt.timedelta(days=1)


@dataclass(frozen=True)
class SendCall:
    """A SendTransfer as the app backend sent it, kept so that it can be retried."""

    request_id: str
    sender: str
    recipient: str
    relationship: str
    amount_fen: int


@dataclass(frozen=True)
class BillShape:
    """A bill as a POS might send it, before it is known whose: the amount, its parts (None: the amount
    only), the kind of care, and which insutype the POS says ("theirs": the patient's, "other": the
    other scheme's, None: none)."""

    amount_fen: int
    parts: Parts | None
    med_type: str | None
    insutype: str | None


@st.composite
def bills(draw: st.DrawFn, amount_fen: int | None = None) -> BillShape:
    """Mostly bills sent as their parts, now and then as their amount only as before; now and then
    parts that do not add up, a negative part, a missing med_type, or the wrong insutype. Of
    `amount_fen` when given."""
    amount = draw(amounts, label="amount") if amount_fen is None else amount_fen
    med_type = draw(st.none() | st.sampled_from(MED_TYPES), label="med_type")
    insutype = draw(st.sampled_from([None, None, None, "theirs", "theirs", "other"]), label="insutype")
    if not draw(st.sampled_from([False, True, True]), label="as parts"):
        return BillShape(amount, None, med_type, insutype)
    edges = st.sampled_from([0, amount])
    over = draw(edges | st.integers(0, amount), label="over the limit")
    wholly = draw(edges.map(lambda x: min(x, amount - over)) | st.integers(0, amount - over), label="wholly")
    parts = Parts(amount - over - wholly, over, wholly)
    broken = draw(st.sampled_from([None] * 12 + ["not adding up", "negative"]), label="broken")
    if broken == "not adding up":
        parts = Parts(parts.in_scope_fen + 1, over, wholly)
    elif broken == "negative":
        parts = Parts(amount - wholly + 1, -1, wholly)
    return BillShape(amount, parts, med_type or draw(st.sampled_from([*MED_TYPES, None]), label="med"), insutype)


@dataclass(frozen=True)
class SettleCall:
    """A Settle as a POS sent it, kept so that it can be retried or reversed."""

    institution: str
    request_id: str
    patient: str
    amount_fen: int
    authorizer: str | None
    use_account: bool
    card: str | None = None  # an ID card of this person read at the counter instead of an e-voucher
    parts: Parts | None = None  # the bill's; None: sent as its amount only
    med_type: str | None = None
    insutype: str | None = None
    hold_id: str | None = None  # the hold it captures; None: none

    @property
    def bill(self) -> Bill:
        return Bill(self.amount_fen, self.parts, self.med_type, self.insutype)


@dataclass(frozen=True)
class HoldCall:
    """A Quote that holds, as a POS sent it (`asked`: its content, institution and request id; no card),
    kept so that it can be captured, released or retried."""

    asked: SettleCall
    seconds: int
    voucher: str | None  # what the patient presented: a capture may present it again


@dataclass(frozen=True)
class CancelCall:
    institution: str
    request_id: str
    settlement_id: str
    amount_fen: int


@dataclass(frozen=True)
class CreditCall:
    request_id: str
    person: str
    amount_fen: int


@dataclass(frozen=True)
class PremiumCall:
    request_id: str
    payer: str
    beneficiary: str
    year: int


@dataclass
class Figures:
    """What a run did, printed at its end (and quoted in docs/reliability.md)."""

    examples: int = 0
    steps: int = 0
    calls: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    # The 医保钱包's calls by what they were and how each ended ("send TRANSFER_PENDING", "accept OK"),
    # with the transfers the expiry work returned: the wallet's share of `outcomes`, told apart.
    wallet: collections.Counter[str] = field(default_factory=collections.Counter)
    # Holds at the till, the same way ("hold OK", "capture HOLD_EXPIRED", "release OK", "expired by the
    # expiry work", how the holds ended).
    holds: collections.Counter[str] = field(default_factory=collections.Counter)

    def line(self) -> str:
        top = ", ".join(f"{reason} {n}" for reason, n in self.outcomes.most_common())
        wallet = ", ".join(f"{what} {n}" for what, n in sorted(self.wallet.items()))
        holds = ", ".join(f"{what} {n}" for what, n in sorted(self.holds.items()))
        return (
            f"model: {self.examples} sequences, {self.steps} steps checked, {self.calls} calls ({top}); "
            f"医保钱包: {wallet}; holds at the till: {holds}; disagreements with the model: 0"
        )


FIGURES = Figures()
SOURCES = ("acct_pay_fen", "acct_mulaid_pay_fen", "wallet_pay_fen", "psn_cash_pay_fen")


def _split_of(m: Any) -> Split:
    """What each source paid (a Settlement, a QuoteResponse) or got back (a Refund)."""
    return Split(m.acct_pay_fen, m.acct_mulaid_pay_fen, m.psn_cash_pay_fen, m.wallet_pay_fen)


def _reversal_of(s: types_pb2.Settlement) -> Split | None:
    """What a settlement's reversal (2601) gave back; None when it gave back nothing (or was none)."""
    reversals = [_split_of(r) for r in s.refunds if r.kind == "REVERSAL"]
    assert len(reversals) <= 1, s.refunds
    return reversals[0] if reversals else None


def _wallet_balc(m: Any) -> int | None:
    """The wallet's balance after a Settlement or a QuoteResponse; None when unset."""
    return m.wallet_balc_fen if m.HasField("wallet_balc_fen") else None


def _parts_of(p: types_pb2.BillParts) -> Parts:
    return Parts(p.in_scope_fen, p.over_limit_fen, p.wholly_self_paid_fen)


def _bill_answer(m: Any) -> tuple[object, ...]:
    """How a Settlement or a QuoteResponse read the bill and what each source paid of each part."""
    return (
        types_pb2.BillReading.Name(m.bill_reading).removeprefix("BILL_READING_"),
        _parts_of(m.bill),
        BillSplit(
            _parts_of(m.own_parts), _parts_of(m.mutual_aid_parts), _parts_of(m.cash_parts), _parts_of(m.wallet_parts)
        ),
        str(m.med_type) if m.med_type else None,
        str(m.insutype),
    )


def _bill_expected(bill: Bill, parts: BillSplit, insutype: str) -> tuple[object, ...]:
    return (bill.reading, bill.read, parts, bill.med_type, insutype)


def _with_bill(request: Any, bill: Bill) -> None:
    """The bill's parts, med_type and insutype on a SettleRequest or QuoteRequest (their numbers are the
    platform's codes)."""
    if bill.parts is not None:
        p = bill.parts
        request.bill.CopyFrom(
            types_pb2.BillParts(
                in_scope_fen=p.in_scope_fen,
                over_limit_fen=p.over_limit_fen,
                wholly_self_paid_fen=p.wholly_self_paid_fen,
            )
        )
    if bill.med_type is not None:
        request.med_type = int(bill.med_type)
    if bill.insutype is not None:
        request.insutype = int(bill.insutype)


class GongjiMachine(RuleBasedStateMachine):
    runner: ClassVar[asyncio.Runner]
    served: ClassVar[Served]
    clock: ClassVar[ManualClock]  # the server's: the model's clock drives it

    people = Bundle("people")
    vouchers = Bundle("vouchers")
    settle_calls = Bundle("settle_calls")
    cancel_calls = Bundle("cancel_calls")
    credit_calls = Bundle("credit_calls")
    premium_calls = Bundle("premium_calls")
    send_calls = Bundle("send_calls")
    hold_calls = Bundle("hold_calls")

    def __init__(self) -> None:
        super().__init__()
        FIGURES.examples += 1
        self.model = Model(china_today())
        self.api = self.served.api
        self.tag = uuid.uuid4().hex[:10]  # request ids of this example only
        self.sequence = 0
        self.big_family = False
        self.wallet = wallet_pb2_grpc.WalletServiceStub(self.served.channel)
        # Each example on days of its own, after the last one's: the morning after the latest time so
        # far. The expiry work returns what earlier examples left pending, so that from here on it
        # returns this example's transfers only.
        day = self.clock.now().astimezone(CHINA_TIME).date() + dt.timedelta(days=1)
        self._set_clock(dt.datetime(day.year, day.month, day.day, 10, tzinfo=CHINA_TIME))
        self.runner.run(self._expiry().run_once())

    # ---- plumbing --------------------------------------------------------------------------------
    def _run(self, make: Callable[[], Awaitable[T]]) -> T | Refused:
        """Run one call on the server's loop; a gRPC failure becomes the Refused it stands for. The call
        is made inside the loop: a grpc.aio call binds to the loop running when it is created."""

        async def go() -> T | Refused:
            try:
                return await make()
            except grpc.aio.AioRpcError as error:
                return Refused(error.code().name, reason_of(error))

        outcome = self.runner.run(go())
        FIGURES.calls += 1
        FIGURES.outcomes[outcome.reason if isinstance(outcome, Refused) else "OK"] += 1
        return outcome

    def _id(self, kind: str) -> str:
        self.sequence += 1
        return f"m-{self.tag}-{kind}{self.sequence}"

    def _token(self, institution: str) -> str:
        return self.api.tokens.terminal_a if institution == "A" else self.api.tokens.terminal_b

    @staticmethod
    def _same_outcome(got: object, expected: object) -> None:
        """Both refused for the same reason, or both answered (the caller compares the answers)."""
        if isinstance(expected, Refused) or isinstance(got, Refused):
            assert got == expected, f"server {got}, model {expected}"

    # ---- people and accounts ---------------------------------------------------------------------
    @initialize(target=people)
    def a_family(self) -> Any:
        """An authorizer with money and a child who holds a grant: the usual case, from the start."""
        parent = self._enroll(EMPLOYEE, ACTIVE, REGIONS[0], BIRTHS[0])
        child = self._enroll(EMPLOYEE, ACTIVE, REGIONS[0], BIRTHS[1])
        self._credit(CreditCall(self._id("c"), parent, 2_000))
        self._credit(CreditCall(self._id("c"), child, 500))
        self.grant(parent, child, CHILD)
        return multiple(parent, child)

    def _enroll(self, scheme: str, status: str, region: str, birth: dt.date) -> str:
        person = self.runner.run(
            self.api.enroll(scheme=SCHEMES[scheme], status=STATUSES[status], region=region, birth=birth)
        )
        assert self.model.enroll(person, scheme, status, region, birth) == 0
        return person

    @rule(
        target=people,
        scheme=schemes,
        status=statuses,
        region=st.sampled_from(REGIONS),
        birth=st.sampled_from(BIRTHS),
    )
    def enroll(self, scheme: str, status: str, region: str, birth: dt.date) -> str:
        return self._enroll(scheme, status, region, birth)

    @rule(person=people, scheme=schemes, status=statuses, region=st.sampled_from(REGIONS))
    def change_person(self, person: str, scheme: str, status: str, region: str) -> None:
        """Enroll again: a status, scheme or region change, which may end grants by itself."""
        reply = self._run(lambda: self.api.set_status(person, STATUSES[status], scheme=SCHEMES[scheme], region=region))
        birth = self.model.people[person].birth
        expected = self.model.enroll(person, scheme, status, region, birth)
        assert not isinstance(reply, Refused), reply
        assert (reply.created, reply.grants_ended) == (False, expected)

    def _credit(self, call: CreditCall) -> CreditCall:
        reply = self._run(lambda: self.api.credit(call.person, call.amount_fen, request_id=call.request_id))
        expected = self.model.credit(call.request_id, call.person, call.amount_fen)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert (reply.balance_fen, reply.replayed) == expected  # type: ignore[union-attr]
        return call

    @rule(target=credit_calls, person=people, amount=st.integers(1, 3_000))
    def credit(self, person: str, amount: int) -> CreditCall:
        return self._credit(CreditCall(self._id("c"), person, amount))

    @rule(call=credit_calls, same=st.booleans())
    def retry_credit(self, call: CreditCall, same: bool) -> None:
        """The operator's retry: the same request replays; other content under its id is refused."""
        self._credit(call if same else CreditCall(call.request_id, call.person, call.amount_fen + 1))

    # ---- family mutual aid -----------------------------------------------------------------------
    @rule(authorizer=people, beneficiary=people, relationship=st.sampled_from(sorted(RELATIONSHIPS)))
    def grant(self, authorizer: str, beneficiary: str, relationship: str) -> None:
        reply = self._run(lambda: self.api.grant(authorizer, beneficiary, RELATIONSHIPS[relationship]))
        expected = self.model.grant(authorizer, beneficiary, relationship)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert reply.already_granted == expected  # type: ignore[union-attr]

    @rule(authorizer=people, beneficiary=people, by=st.sampled_from(["authorizer", "beneficiary", "stranger"]))
    def revoke(self, authorizer: str, beneficiary: str, by: str) -> None:
        requester = {"authorizer": authorizer, "beneficiary": beneficiary}.get(by) or next(
            (p for p in self.model.people if p not in (authorizer, beneficiary)), authorizer
        )
        reply = self._run(lambda: self.api.revoke(authorizer, beneficiary, requester_id=requester))
        self._same_outcome(reply, self.model.revoke(authorizer, beneficiary, requester))

    @rule(
        authorizer=people,
        beneficiary=people,
        cap=st.sampled_from([None, 0, 300, 1_000]),
        by=st.sampled_from(["authorizer", "authorizer", "beneficiary"]),
        data=st.data(),
    )
    def set_grant_cap(self, authorizer: str, beneficiary: str, cap: int | None, by: str, data: st.DataObject) -> None:
        """Mostly on a live grant, so that settlements meet the caps; sometimes on any pair."""
        live = [(g.authorizer, g.beneficiary) for g in self.model.grants if g.live]
        if live and data.draw(st.booleans(), label="a live grant"):
            authorizer, beneficiary = data.draw(st.sampled_from(live), label="grant")
        requester = authorizer if by == "authorizer" else beneficiary
        reply = self._run(lambda: self.api.set_grant_cap(authorizer, beneficiary, cap, requester_id=requester))
        expected = self.model.set_grant_cap(authorizer, beneficiary, cap, requester)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            assert (reply.grant.yearly_cap_fen if reply.grant.HasField("yearly_cap_fen") else None) == cap

    @rule(
        target=settle_calls,
        cap=st.none() | st.integers(0, 1_500),
        shapes=st.lists(bills(), min_size=1, max_size=4),
        institution=st.sampled_from(INSTITUTIONS),
        data=st.data(),
    )
    def mutual_aid_meets_the_limits(
        self, cap: int | None, shapes: list[BillShape], institution: str, data: st.DataObject
    ) -> Any:
        """A live grant (often the one in the region with caps and a floor), maybe capped by its
        authorizer, then its beneficiary settles a few bills in a row: the limits meet the waterfall in
        every run, not only when several rules happen to line up."""
        live = [(g.authorizer, g.beneficiary) for g in self.model.grants if g.live]
        if not live:
            return multiple()
        limited = [pair for pair in live if self.model.people[pair[1]].region == REGIONS[1]]
        pool = limited if limited and data.draw(st.booleans(), label="in the region with limits") else live
        authorizer, beneficiary = data.draw(st.sampled_from(pool), label="grant")
        if cap is not None:
            self.set_grant_cap(authorizer, beneficiary, cap, "authorizer", data)
        calls = []
        for shape in shapes:
            voucher = self._issue(beneficiary, beneficiary)
            if isinstance(voucher, Refused):
                break
            call = self._settle_call(institution, beneficiary, shape, None, True)
            how = data.draw(st.sampled_from(["settle", "settle", "hold, then settle", "hold"]), label="how")
            if how == "settle":
                calls.append(self._settle(call, voucher))
            else:
                # Held first (its mutual aid counted in the caps), then captured, or left pending while
                # the next bills meet the caps.
                held = self._hold(HoldCall(call, HOLD_SECONDS_MAX, voucher))
                if how == "hold, then settle":
                    self._capture(held, data)
        return multiple(*calls)

    # ---- kinship binding and vouchers ------------------------------------------------------------
    @rule(holder=people, member=people, face_verified=st.booleans(), identity_matches=st.booleans())
    def bind(self, holder: str, member: str, face_verified: bool, identity_matches: bool) -> None:
        overrides: dict[str, Any] = {"face_verification_ref": "face-ok-1" if face_verified else ""}
        if not identity_matches:
            overrides["member_name"] = "另一个人"
        reply = self._run(lambda: self.api.bind(holder, member, **overrides))
        expected = self.model.bind(holder, member, face_verified=face_verified, identity_matches=identity_matches)
        self._same_outcome(reply, expected)

    @rule(holder=people, member=people)
    def unbind(self, holder: str, member: str) -> None:
        self._same_outcome(self._run(lambda: self.api.unbind(holder, member)), self.model.unbind(holder, member))

    def _issue(self, person: str, requester: str, picked: str | None = None) -> str | Refused:
        reply = self._run(lambda: self.api.voucher(person, requester_id=requester, authorizer_id=picked))
        expected = self.model.issue_voucher(person, requester, picked)
        self._same_outcome(reply, expected)
        if isinstance(reply, Refused):
            return reply
        self.model.issued(reply, person, requester, picked=picked)
        return reply

    def _picked(self, data: st.DataObject) -> str | None:
        """Mostly no family member picked in the app; sometimes someone of this example."""
        if data.draw(st.sampled_from((False, False, True)), label="pick a family member in the app"):
            return data.draw(st.sampled_from(list(self.model.people)), label="picked")
        return None

    @rule(target=vouchers, person=people, requester=people, own=st.booleans(), data=st.data())
    def issue_voucher(self, person: str, requester: str, own: bool, data: st.DataObject) -> Any:
        token = self._issue(person, person if own else requester, self._picked(data))
        return multiple() if isinstance(token, Refused) else token

    @rule(target=vouchers, person=people)
    def an_expired_voucher(self, person: str) -> str:
        """A code past its lifetime (a screenshot shown later), made without waiting: signed with the
        server's key and an expiry in the past (a token is all there is of a voucher)."""
        expired_at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
        token = CODEC.issue(uuid.uuid4(), int(expired_at.timestamp()), person, None)
        self.model.issued(token, person, person, expired=True)
        return token

    @precondition(lambda self: not self.big_family)
    @rule(holder=people, region=st.sampled_from(REGIONS))
    def a_big_family(self, holder: str, region: str) -> None:
        """Six children bound one after another: the sixth reaches the limit of five. Once per
        sequence: every person enrolled is checked after every step."""
        self.big_family = True
        for _ in range(FAMILY_BOUND_MEMBERS_MAX + 1):
            child = self._enroll(RESIDENT, ACTIVE, region, BIRTHS[2])
            self.bind(holder, child, face_verified=False, identity_matches=True)

    # ---- quotes and settlements ------------------------------------------------------------------
    def _authorizer(self, data: st.DataObject) -> str | None:
        """No authorizer named (the oldest live grant is used), or someone of this example named."""
        if data.draw(st.booleans(), label="name an authorizer"):
            return data.draw(st.sampled_from(list(self.model.people)), label="authorizer")
        return None

    def _check_settlement(self, got: settlement_pb2.SettleResponse, expected: tuple[Settlement, bool]) -> None:
        s, replayed = expected
        reply = got.settlement
        if not s.settlement_id:
            s.settlement_id = reply.settlement_id
        assert got.replayed == replayed
        assert reply.settlement_id == s.settlement_id
        if s.paid.wallet_pay_fen and not replayed:
            whose = "a resident's" if s.insutype == INSUTYPES[RESIDENT] else "an employee's"
            FIGURES.wallet[f"settled from {whose} wallet"] += 1
        assert (reply.patient_id, reply.authorizer_id, reply.amount_fen) == (
            s.patient,
            s.authorizer or "",
            s.paid.amount_fen,
        )
        assert _split_of(reply) == s.paid, (_split_of(reply), s.paid)
        assert reply.balc_fen == s.balc_fen, (reply.balc_fen, s.balc_fen)
        assert _wallet_balc(reply) == s.wallet_balc_fen, (_wallet_balc(reply), s.wallet_balc_fen)
        assert reply.psn_acct_pay_fen == reply.acct_pay_fen + reply.acct_mulaid_pay_fen  # psnAcctPay, the total
        assert reply.refunded_fen == s.refunded.amount_fen
        limit = types_pb2.MutualAidLimit.Name(reply.mutual_aid_limited_by).removeprefix("MUTUAL_AID_LIMIT_")
        assert (None if limit == "UNSPECIFIED" else limit) == s.limited_by
        assert _bill_answer(reply) == _bill_expected(s.bill, s.parts, s.insutype), (_bill_answer(reply), s)

    def _settle_call(
        self,
        institution: str,
        patient: str,
        shape: BillShape,
        authorizer: str | None,
        use: bool,
        card: str | None = None,
    ) -> SettleCall:
        """A new Settle of `shape`, the insutype it names made the patient's, or the other scheme's."""
        scheme = self.model.people[patient].scheme if patient in self.model.people else EMPLOYEE
        other = RESIDENT if scheme == EMPLOYEE else EMPLOYEE
        insutype = {"theirs": INSUTYPES[scheme], "other": INSUTYPES[other], None: None}[shape.insutype]
        return SettleCall(
            institution,
            self._id("s"),
            patient,
            shape.amount_fen,
            authorizer,
            use,
            card=card,
            parts=shape.parts,
            med_type=shape.med_type,
            insutype=insutype,
        )

    def _settle(self, call: SettleCall, voucher: str | None) -> Any:
        request = settlement_pb2.SettleRequest(
            request_id=call.request_id,
            voucher=voucher or "GJ1.k1.AAAA.AAAA",  # None: a code whose signature does not verify
            patient_id=call.patient,
            amount_fen=call.amount_fen,
            use_personal_account=call.use_account,
            hold_id=call.hold_id or "",
        )
        if call.card is not None:
            request.voucher = ""
            request.certificate_type = types_pb2.CERTIFICATE_TYPE_ID_CARD
            request.card_number = call.card
        if call.authorizer is not None:
            request.authorizer_id = call.authorizer
        _with_bill(request, call.bill)
        reply = self._run(lambda: self.api.settlement.Settle(request, metadata=bearer(self._token(call.institution))))
        expected = self.model.settle(
            call.institution,
            call.request_id,
            voucher,
            call.patient,
            call.bill,
            call.authorizer,
            call.use_account,
            call.hold_id,
        )
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            self._check_settlement(reply, expected)  # type: ignore[arg-type]
        if call.hold_id is not None:
            FIGURES.holds[f"capture {reply.reason if isinstance(reply, Refused) else 'OK'}"] += 1
        return call

    @rule(
        target=settle_calls,
        patient=people,
        bill=bills(),
        use=use_account,
        institution=st.sampled_from(INSTITUTIONS),
        data=st.data(),
    )
    def settle_with_a_fresh_voucher(
        self, patient: str, bill: BillShape, use: bool, institution: str, data: st.DataObject
    ) -> Any:
        """The usual way: the patient shows their own code, just refreshed (with a family member
        picked in the app, sometimes)."""
        voucher = self._issue(patient, patient, self._picked(data))
        if isinstance(voucher, Refused):
            return multiple()
        return self._settle(self._settle_call(institution, patient, bill, self._authorizer(data), use), voucher)

    @rule(
        target=settle_calls,
        voucher=vouchers,
        patient=people,
        bill=bills(),
        use=use_account,
        institution=st.sampled_from(INSTITUTIONS),
        data=st.data(),
    )
    def settle_with_any_voucher(
        self, voucher: str, patient: str, bill: BillShape, use: bool, institution: str, data: st.DataObject
    ) -> Any:
        """Someone's code, maybe used, maybe another person's, maybe a holder's from a removed binding."""
        return self._settle(self._settle_call(institution, patient, bill, self._authorizer(data), use), voucher)

    @rule(
        target=settle_calls,
        patient=people,
        holder=people,
        bill=bills(),
        institution=st.sampled_from(INSTITUTIONS),
        data=st.data(),
    )
    def settle_with_an_id_card(
        self, patient: str, holder: str, bill: BillShape, institution: str, data: st.DataObject
    ) -> Any:
        """An ID card read at the counter: the patient's own, or someone else's (the real-name rule)."""
        call = self._settle_call(institution, patient, bill, self._authorizer(data), True, card=holder)
        return self._settle(call, self.model.card(holder))

    @rule(target=settle_calls, patient=people, amount=amounts, institution=st.sampled_from(INSTITUTIONS))
    def settle_with_a_forged_voucher(self, patient: str, amount: int, institution: str) -> Any:
        return self._settle(SettleCall(institution, self._id("s"), patient, amount, None, True), None)

    @rule(call=settle_calls, same=st.booleans())
    def retry_settle(self, call: SettleCall, same: bool) -> Any:
        """The POS retries with the same request id, showing a rescanned code: a fresh, genuine voucher
        naming the patient, signed with the server's key (a token is all there is of a voucher) and
        told to the model, whatever the patient's status now."""
        expires_s = int(dt.datetime.now(dt.UTC).timestamp()) + 60
        rescanned = CODEC.issue(uuid.uuid4(), expires_s, call.patient, None)
        self.model.issued(rescanned, call.patient, call.patient)
        # Other content: a fen more (within the scope, when the parts were sent), or another kind of care.
        other: dict[str, Any] = {"amount_fen": call.amount_fen + 1}
        if call.parts is not None:
            other["parts"] = Parts(
                call.parts.in_scope_fen + 1, call.parts.over_limit_fen, call.parts.wholly_self_paid_fen
            )
        if call.med_type is not None and call.amount_fen % 2:
            other = {"med_type": next(m for m in MED_TYPES if m != call.med_type)}
        retried = call if same else SettleCall(**{**call.__dict__, **other})
        # A card is read again as it is.
        self._settle(retried, rescanned if call.card is None else self.model.card(call.card))

    @rule(patient=people, shape=bills(), use=use_account, data=st.data())
    def quote(self, patient: str, shape: BillShape, use: bool, data: st.DataObject) -> None:
        voucher = self._issue(patient, patient, self._picked(data))
        if isinstance(voucher, Refused):
            return
        authorizer = self._authorizer(data)
        bill = self._settle_call("A", patient, shape, authorizer, use).bill
        request = settlement_pb2.QuoteRequest(
            voucher=voucher, patient_id=patient, amount_fen=bill.amount_fen, use_personal_account=use
        )
        if authorizer is not None:
            request.authorizer_id = authorizer
        _with_bill(request, bill)
        reply = self._run(lambda: self.api.settlement.Quote(request, metadata=bearer(self.api.tokens.terminal_a)))
        expected = self.model.quote(voucher, patient, bill, authorizer, use)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            self._check_quote(reply, bill, expected)

    @staticmethod
    def _check_quote(reply: settlement_pb2.QuoteResponse, bill: Bill, expected: Quoted) -> None:
        assert reply.psn_acct_pay_fen == reply.acct_pay_fen + reply.acct_mulaid_pay_fen
        got = (_split_of(reply), reply.authorizer_id, reply.balc_fen, _wallet_balc(reply))
        assert got == (expected.paid, expected.authorizer or "", expected.balc_fen, expected.wallet_balc_fen)
        limit = types_pb2.MutualAidLimit.Name(reply.mutual_aid_limited_by).removeprefix("MUTUAL_AID_LIMIT_")
        assert (None if limit == "UNSPECIFIED" else limit) == expected.limited_by
        assert _bill_answer(reply) == _bill_expected(bill, expected.parts, expected.insutype), (reply, expected)

    # ---- refunds and reversals -------------------------------------------------------------------
    def _cancel(self, call: CancelCall) -> CancelCall:
        request = settlement_pb2.CancelRequest(
            request_id=call.request_id, settlement_id=call.settlement_id, amount_fen=call.amount_fen
        )
        reply = self._run(lambda: self.api.settlement.Cancel(request, metadata=bearer(self._token(call.institution))))
        expected = self.model.cancel(call.institution, call.request_id, call.settlement_id, call.amount_fen)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            back, s, replayed = expected
            assert not isinstance(reply, Refused)
            assert s is not None
            assert (_split_of(reply.refund), reply.replayed) == (back, replayed)
            assert reply.settlement.refunded_fen == s.refunded.amount_fen
            if back.wallet_pay_fen and not replayed:
                FIGURES.wallet["refund back to the wallet"] += 1
        return call

    @rule(
        target=cancel_calls,
        institution=st.sampled_from(INSTITUTIONS),
        amount=st.sampled_from([0, 0, 1]) | st.integers(1, 3_500),
        data=st.data(),
    )
    def cancel(self, institution: str, amount: int, data: st.DataObject) -> CancelCall:
        """A refund of a settlement of this example, by its institution's terminal or the other's; now
        and then of a settlement that does not exist."""
        known = list(self.model.settlements.values())
        if known and data.draw(st.integers(0, 9), label="unknown settlement") > 0:
            settlement_id = data.draw(st.sampled_from(known), label="settlement").settlement_id
        else:
            settlement_id = str(uuid.uuid4())
        return self._cancel(CancelCall(institution, self._id("r"), settlement_id, amount))

    @rule(call=cancel_calls, same=st.booleans())
    def retry_cancel(self, call: CancelCall, same: bool) -> None:
        self._cancel(call if same else CancelCall(call.institution, call.request_id, call.settlement_id, 7))

    def _reverse(self, institution: str, request_id: str) -> None:
        reply = self._run(
            lambda: self.api.settlement.Reverse(
                settlement_pb2.ReverseRequest(original_request_id=request_id),
                metadata=bearer(self._token(institution)),
            )
        )
        expected = self.model.reverse(institution, request_id)
        assert not isinstance(reply, Refused), reply
        assert reply.undone == (expected is not None)
        if expected is not None:
            assert reply.settlement.settlement_id == expected.settlement_id
            assert reply.settlement.refunded_fen == expected.refunded.amount_fen == expected.paid.amount_fen
            assert reply.settlement.HasField("reversed_at")
            # What was left went back where it came from, the wallet's share to the wallet.
            assert _reversal_of(reply.settlement) == expected.reversal, (reply.settlement.refunds, expected)
            if expected.reversal is not None and expected.reversal.wallet_pay_fen:
                FIGURES.wallet["reversal back to the wallet"] += 1

    @rule(call=settle_calls, other_institution=st.booleans())
    def reverse(self, call: SettleCall, other_institution: bool) -> None:
        """The POS never got an answer and reverses by the request id (another institution's terminal
        reverses only its own request of that name)."""
        institution = call.institution if not other_institution else ("B" if call.institution == "A" else "A")
        self._reverse(institution, call.request_id)

    @rule(call=cancel_calls, other_institution=st.booleans())
    def reverse_cancel(self, call: CancelCall, other_institution: bool) -> None:
        """The POS never got a Cancel's answer and reverses it by its request id (2601 naming 2208): its
        refund is taken back if it committed, and a late Cancel is refused; another institution's
        terminal reverses only its own Cancel of that name."""
        institution = call.institution if not other_institution else ("B" if call.institution == "A" else "A")
        request = settlement_pb2.ReverseRequest(
            original_request_id=call.request_id, original_kind=settlement_pb2.ORIGINAL_KIND_CANCEL
        )
        reply = self._run(lambda: self.api.settlement.Reverse(request, metadata=bearer(self._token(institution))))
        first = (institution, call.request_id) not in self.model.cancel_reversals
        expected = self.model.reverse_cancel(institution, call.request_id)
        self._same_outcome(reply, expected)
        if isinstance(expected, Refused):
            c = self.model.cancels.get((institution, call.request_id))
            if expected.reason == "REFUND_ALREADY_SPENT" and c is not None:
                wallet = self.model.wallets.get(self.model._settlement_of(c).patient)
                if wallet is not None and c.refund.wallet_pay_fen > wallet.balance_fen:
                    FIGURES.wallet["refund reversal REFUND_ALREADY_SPENT, the wallet spent it"] += 1
            return
        assert not isinstance(reply, Refused)
        assert reply.undone == (expected is not None)
        if expected is not None:
            c, s = expected
            assert (_split_of(reply.refund), reply.refund.HasField("reversed_at")) == (c.refund, True)
            if c.refund.wallet_pay_fen and first:
                FIGURES.wallet["refund reversal taken from the wallet"] += 1
            assert (reply.settlement.settlement_id, reply.settlement.refunded_fen) == (
                s.settlement_id,
                s.refunded.amount_fen,
            )

    @rule(target=cancel_calls, call=settle_calls, amount=st.sampled_from([0, 1, 300]))
    def reverse_before_the_cancel(self, call: SettleCall, amount: int) -> CancelCall:
        """The reversal overtakes its Cancel: the Cancel, retried later, is refused."""
        s = self.model.settlements.get((call.institution, call.request_id))
        cancel = CancelCall(call.institution, self._id("r"), s.settlement_id if s else str(uuid.uuid4()), amount)
        self.reverse_cancel(cancel, other_institution=False)
        return cancel

    @rule(target=settle_calls, patient=people, amount=amounts, institution=st.sampled_from(INSTITUTIONS))
    def reverse_before_the_original(self, patient: str, amount: int, institution: str) -> SettleCall:
        """The reversal overtakes its original: the original, retried later, is refused."""
        call = SettleCall(institution, self._id("s"), patient, amount, None, True)
        self._reverse(institution, call.request_id)
        return call

    # ---- resident premiums paid from a relative's account (国办发〔2024〕38号) ----------------------
    @initialize(
        target=people,
        rules=st.fixed_dictionaries({region: wholly_rules for region in REGIONS}),
        orders=st.fixed_dictionaries({region: wallet_orders for region in REGIONS}),
    )
    def caps_in_one_region(self, rules: dict[str, dict[str, tuple[bool, bool]]], orders: dict[str, str]) -> Any:
        """Region 610200 caps what mutual aid pays one beneficiary in a year and keeps a floor under its
        authorizers (set again, the same, at each example: region policy outlives one), and a family
        lives there: a parent with a little above the floor, granting a resident child. Every region's
        rules on wholly self-paid items are set afresh too: often none, else the account only, or cash
        only, for some kinds of care; and where its patients' wallets pay (mostly the default)."""
        region, ben_cap, floor = REGIONS[1], 2_000, 1_000
        self.model.caps[region] = (ben_cap, floor)
        for key, by_med_type in rules.items():
            self._set_policy(key, [(m, *who) for m, who in by_med_type.items()], orders[key])
        parent = self._enroll(EMPLOYEE, ACTIVE, region, BIRTHS[1])
        child = self._enroll(RESIDENT, ACTIVE, region, BIRTHS[3])
        self._credit(CreditCall(self._id("c"), parent, 4_000))
        self.grant(parent, child, CHILD)
        return multiple(parent, child)

    # ---- region policy on wholly self-paid items ---------------------------------------------------
    def _set_policy(self, region: str, rules: list[tuple[str, bool, bool]], wallet_order: str | None = None) -> None:
        """The region's whole policy, as the model has it (the default scope and relationships, the caps
        of caps_in_one_region, the wallet's place), with these rules on wholly self-paid items, and the
        wallet's place `wallet_order` when given (UNSPECIFIED: the default, said by saying nothing)."""
        ben_cap, floor = self.model.caps.get(region, (None, None))
        if wallet_order is None:
            wallet_order = self.model.wallet_orders.get(region, DEFAULT_WALLET_ORDER)
        policy = account_pb2.RegionPolicy(
            region_key=region,
            scope=types_pb2.GRANT_SCOPE_PROVINCE,
            allowed_relationships=[RELATIONSHIPS[r] for r in (SPOUSE, PARENT, CHILD, SIBLING, GRANDPARENT, GRANDCHILD)],
            beneficiary_yearly_cap_fen=ben_cap,
            authorizer_floor_fen=floor,
            wholly_self_paid_rules=[
                account_pb2.WhollySelfPaidRule(
                    med_type=types_pb2.MedType.ValueType(int(m)), account_pays=account, mutual_aid_pays=mutual
                )
                for m, account, mutual in rules
            ],
            wallet_order=account_pb2.WalletOrder.Value(f"WALLET_ORDER_{wallet_order}"),
        )
        request = account_pb2.SetRegionPolicyRequest(policy=policy)
        reply = self._run(lambda: self.api.account.SetRegionPolicy(request, metadata=bearer(self.api.tokens.operator)))
        order = DEFAULT_WALLET_ORDER if wallet_order == "UNSPECIFIED" else wallet_order
        expected = self.model.set_wholly_self_paid_rules(region, rules, order)
        self._same_outcome(reply, expected)
        if not isinstance(reply, Refused):
            # A rule that says what a region without one says (both pay) is not listed back.
            got = {(str(r.med_type), r.account_pays, r.mutual_aid_pays) for r in reply.policy.wholly_self_paid_rules}
            assert got == {(m, *who) for m, who in self.model.wholly[region].items() if who != (True, True)}
            # The wallet's place is answered as it applies, the default named.
            got_order = account_pb2.WalletOrder.Name(reply.policy.wallet_order).removeprefix("WALLET_ORDER_")
            assert got_order == self.model.wallet_orders[region]

    @rule(
        region=st.sampled_from(REGIONS),
        rules=st.lists(
            st.tuples(st.sampled_from(MED_TYPES), st.sampled_from([*WHOLLY_RULES, (False, True)])).map(
                lambda r: (r[0], *r[1])
            ),
            max_size=4,
        ),
    )
    def change_wholly_self_paid_rules(self, region: str, rules: list[tuple[str, bool, bool]]) -> None:
        """An operator sets a region's rules again: now and then two for one med_type, or mutual aid
        without the account (both refused, the old rules kept)."""
        self._set_policy(region, rules)

    @rule(region=st.sampled_from(REGIONS), order=wallet_orders)
    def change_wallet_order(self, region: str, order: str) -> None:
        """An operator moves where a region's patients' wallets pay (its other rules kept as they are):
        settlements from then on take the sources in the new order; refunds give back in one order
        whatever it says, so a settlement made before refunds as it always would."""
        rules = [(m, *who) for m, who in self.model.wholly.get(region, {}).items()]
        self._set_policy(region, rules, order)

    @initialize(target=people)
    def premium_rates_and_a_resident_child(self) -> Any:
        """The rates every sequence pays under: Shaanxi's (61) for next year, open; one 统筹区 of it
        (610200) with its own, not open yet; none for this year, none in Guangdong. And a parent with
        three resident-insured children they granted, two where the window is open and one where it is
        not, and money for one premium: payments that go through, and each refusal, are common."""
        this_year = self.model.today.year
        rates = [
            ("61", this_year + 1, 450, dt.date(this_year, 1, 1), dt.date(this_year + 1, 12, 31)),
            (REGIONS[1], this_year + 1, 500, dt.date(this_year + 1, 1, 1), dt.date(this_year + 1, 12, 31)),
        ]
        for rate in rates:
            self.runner.run(self.api.set_premium_rate(*rate))
            self.model.set_premium_rate(*rate)
        parent = self._enroll(EMPLOYEE, ACTIVE, REGIONS[0], BIRTHS[1])
        children = [self._enroll(RESIDENT, ACTIVE, region, BIRTHS[3]) for region in (REGIONS[0], *REGIONS[:2])]
        self._credit(CreditCall(self._id("c"), parent, 700))
        for child in children:
            self.grant(parent, child, CHILD)
        return multiple(parent, *children)

    def _pay_premium(self, call: PremiumCall) -> PremiumCall:
        reply = self._run(
            lambda: self.api.pay_premium(call.payer, call.beneficiary, call.year, request_id=call.request_id)
        )
        expected = self.model.pay_premium(call.request_id, call.payer, call.beneficiary, call.year)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            paid, replayed = expected
            if not paid.payment_id:
                paid.payment_id = reply.payment.payment_id
            got = reply.payment
            assert (got.payment_id, got.payer_id, got.beneficiary_id, got.year, got.amount_fen) == (
                paid.payment_id,
                *paid.content,
                paid.amount_fen,
            )
            assert (reply.balance_fen, reply.replayed, got.HasField("refunded_at")) == (
                paid.balance_after_fen,
                replayed,
                paid.refunded,
            )
        return call

    @rule(
        target=premium_calls,
        payer=people,
        beneficiary=people,
        year=st.sampled_from(["next", "next", "next", "this"]),
    )
    def pay_premium(self, payer: str, beneficiary: str, year: str) -> PremiumCall:
        """Someone's account pays someone's premium of next year (or of this year: not set)."""
        contribution_year = self.model.today.year + (1 if year == "next" else 0)
        return self._pay_premium(PremiumCall(self._id("p"), payer, beneficiary, contribution_year))

    def _granted_residents(self) -> list[tuple[str, str]]:
        people = self.model.people
        granted = [g for g in self.model.grants if g.live and people[g.beneficiary].scheme == RESIDENT]
        return [(g.authorizer, g.beneficiary) for g in granted]

    @precondition(lambda self: self._granted_residents())
    @rule(target=premium_calls, data=st.data(), year=st.sampled_from(["next", "next", "next", "this"]))
    def pay_a_granted_relatives_premium(self, data: st.DataObject, year: str) -> PremiumCall:
        """The usual way: an authorizer pays for a resident-insured relative they granted (whether the
        window is open, the year paid already or the balance enough is the model's to say)."""
        payer, beneficiary = data.draw(st.sampled_from(self._granted_residents()), label="grant")
        return self.pay_premium(payer, beneficiary, year)

    @rule(call=premium_calls, same=st.booleans())
    def retry_pay_premium(self, call: PremiumCall, same: bool) -> None:
        """The app backend's retry: the same request replays; another year under its id is refused."""
        self._pay_premium(call if same else PremiumCall(call.request_id, call.payer, call.beneficiary, call.year - 1))

    @precondition(lambda self: self.model.premiums)
    @rule(data=st.data())
    def refund_premium(self, data: st.DataObject) -> None:
        """An operator refunds a payment of this sequence (again, now and then), or one that does not exist."""
        known = [x.payment_id for x in self.model.premiums.values()]
        if known and data.draw(st.integers(0, 9), label="unknown payment") > 0:
            payment_id = data.draw(st.sampled_from(known), label="payment")
        else:
            payment_id = str(uuid.uuid4())
        reply = self._run(lambda: self.api.refund_premium(payment_id))
        expected = self.model.refund_premium(payment_id)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            paid, replayed = expected
            assert (reply.payment.payment_id, reply.balance_fen, reply.replayed) == (
                payment_id,
                paid.refund_balance_fen,
                replayed,
            )

    # ---- the 医保钱包: wallets, transfers, and the clock they run on --------------------------------
    def _set_clock(self, at: dt.datetime) -> None:
        self.model.now = at
        self.clock.set(at)

    def _expiry(self) -> WalletExpiry:
        return WalletExpiry(self.served.pool, self.clock, 3600)

    def _app(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.api.tokens.app)

    @rule(person=people)
    def open_wallet(self, person: str) -> None:
        request = wallet_pb2.OpenWalletRequest(person_id=person)
        reply = self._run(lambda: self.wallet.OpenWallet(request, metadata=self._app()))
        expected = self.model.open_wallet(person)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            w, replayed = expected
            got = reply.wallet
            opened_at = got.opened_at.ToDatetime(dt.UTC)
            assert (got.person_id, got.balance_fen, opened_at, reply.replayed) == (
                person,
                w.balance_fen,
                w.opened_at,
                replayed,
            )

    @initialize(target=people)
    def a_wallet_family(self) -> Any:
        """Three generations with wallets: a grandparent with enough for a few transfers at the limit, a
        parent with a little (both employee-insured), and a resident-insured grandchild in another
        province (transfers go across provinces since 2025). The parent has sent the child a little,
        which nobody has answered yet: every sequence has a transfer that comes due, unless answered in
        time."""
        grandparent = self._enroll(EMPLOYEE, ACTIVE, REGIONS[0], BIRTHS[0])
        parent = self._enroll(EMPLOYEE, ACTIVE, REGIONS[1], BIRTHS[1])
        grandchild = self._enroll(RESIDENT, ACTIVE, REGIONS[2], BIRTHS[3])
        self._credit(CreditCall(self._id("c"), grandparent, 450_000))
        self._credit(CreditCall(self._id("c"), parent, 1_000))
        for person in (grandparent, parent, grandchild):
            self.open_wallet(person)
        self._send(SendCall(self._id("w"), parent, grandchild, CHILD, 300))
        return multiple(grandparent, parent, grandchild)

    def _check_transfer(self, got: wallet_pb2.Transfer, t: Transfer) -> None:
        resolved_at = got.resolved_at.ToDatetime(dt.UTC) if got.HasField("resolved_at") else None
        assert (
            got.transfer_id,
            got.request_id,
            got.sender_id,
            got.recipient_id,
            types_pb2.Relationship.Name(got.relationship).removeprefix("RELATIONSHIP_"),
            got.amount_fen,
            wallet_pb2.TransferState.Name(got.state).removeprefix("TRANSFER_STATE_"),
            got.sent_at.ToDatetime(dt.UTC),
            got.due_at.ToDatetime(dt.UTC),
            resolved_at,
        ) == (
            t.transfer_id,
            t.request_id,
            t.sender,
            t.recipient,
            t.relationship,
            t.amount_fen,
            t.state,
            t.sent_at,
            t.due_at,
            t.resolved_at,
        ), (got, t)

    def _send(self, call: SendCall) -> SendCall:
        request = wallet_pb2.SendTransferRequest(
            request_id=call.request_id,
            sender_id=call.sender,
            recipient_id=call.recipient,
            relationship=RELATIONSHIPS[call.relationship],
            amount_fen=call.amount_fen,
        )
        reply = self._run(lambda: self.wallet.SendTransfer(request, metadata=self._app()))
        FIGURES.wallet[f"send {reply.reason if isinstance(reply, Refused) else 'OK'}"] += 1
        expected = self.model.send(call.request_id, call.sender, call.recipient, call.relationship, call.amount_fen)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            t, replayed = expected
            if not t.transfer_id:
                t.transfer_id = reply.transfer.transfer_id
            self._check_transfer(reply.transfer, t)
            assert reply.replayed == replayed
        return call

    @rule(
        target=send_calls,
        sender=people,
        recipient=people,
        relationship=st.sampled_from(sorted(RELATIONSHIPS)),
        amount=wallet_amounts,
    )
    def send_transfer(self, sender: str, recipient: str, relationship: str, amount: int) -> SendCall:
        """Anyone to anyone, as any relative: mostly refused, for every reason in turn."""
        return self._send(SendCall(self._id("w"), sender, recipient, relationship, amount))

    @rule(target=send_calls, data=st.data(), amount=st.sampled_from(["small", "max", "over", "all", "all+1"]))
    def send_to_a_relative(self, data: st.DataObject, amount: str) -> Any:
        """The usual way: an employee sends to a relative with an open wallet, named as the birth dates
        allow; the amount small, at the limit or just over, or all the account holds, or a fen more."""
        people = self.model.people
        senders = [p for p in people if people[p].has_account]
        # Mostly one who may send and has money to: the rules after the first ones then decide.
        able = [
            p for p in senders if people[p].balance_fen and (people[p].status, people[p].scheme) == (ACTIVE, EMPLOYEE)
        ]
        if able and data.draw(st.integers(0, 3), label="an able sender") > 0:
            senders = able
        if not senders or not self.model.wallets:
            return multiple()
        sender = data.draw(st.sampled_from(senders), label="sender")
        recipients = [p for p in self.model.wallets if p != sender]
        if not recipients:
            return multiple()
        recipient = data.draw(st.sampled_from(recipients), label="recipient")
        fitting = [r for r in CLOSE_RELATIVES if plausible(people[sender], people[recipient], r)]
        relationship = data.draw(st.sampled_from(fitting), label="relationship")
        balance = people[sender].balance_fen
        fen = {"max": SEND_MAX_FEN, "over": SEND_MAX_FEN + 1, "all": balance, "all+1": balance + 1}.get(amount)
        if not fen:
            fen = data.draw(st.integers(1, min(max(balance, 1), 3_000)), label="small")
        return self._send(SendCall(self._id("w"), sender, recipient, relationship, fen))

    @rule(call=send_calls, same=st.booleans())
    def retry_send(self, call: SendCall, same: bool) -> None:
        """The app backend's retry: the same request replays the transfer as it is now; a fen more under
        its request id is refused."""
        self._send(
            call
            if same
            else SendCall(call.request_id, call.sender, call.recipient, call.relationship, call.amount_fen + 1)
        )

    @precondition(lambda self: self.model.transfers)
    @rule(data=st.data(), accept=st.booleans(), by=st.sampled_from(["recipient"] * 4 + ["sender", "unknown"]))
    def resolve_transfer(self, data: st.DataObject, accept: bool, by: str) -> None:
        """The recipient accepts or declines a transfer of this example (mostly a pending one); or the
        sender tries to; or someone answers a transfer that does not exist."""
        known = [t for t in self.model.transfers.values() if t.transfer_id]
        pending = [t for t in known if t.state == PENDING]
        if not known:
            return
        t = data.draw(
            st.sampled_from(pending if pending and data.draw(st.booleans(), label="pending") else known),
            label="transfer",
        )
        transfer_id = str(uuid.uuid4()) if by == "unknown" else t.transfer_id
        self._resolve(transfer_id, t.sender if by == "sender" else t.recipient, accept)

    def _resolve(self, transfer_id: str, person: str, accept: bool) -> None:
        if accept:
            accept_request = wallet_pb2.AcceptTransferRequest(transfer_id=transfer_id, recipient_id=person)
            reply = self._run(lambda: self.wallet.AcceptTransfer(accept_request, metadata=self._app()))
        else:
            decline_request = wallet_pb2.DeclineTransferRequest(transfer_id=transfer_id, recipient_id=person)
            reply = self._run(lambda: self.wallet.DeclineTransfer(decline_request, metadata=self._app()))
        FIGURES.wallet[
            f"{'accept' if accept else 'decline'} {reply.reason if isinstance(reply, Refused) else 'OK'}"
        ] += 1
        expected = self.model.resolve(transfer_id, person, accept=accept)
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            self._check_transfer(reply.transfer, expected[0])
            assert reply.replayed == expected[1]

    @rule(move=st.sampled_from(CLOCK_MOVES))
    def move_the_clock(self, move: str) -> None:
        """Time passes, for the model and the server alike: across the quiet hours' edges, past due
        times, into the next China calendar day."""
        self._set_clock(moved(self.model.now, move))

    @rule()
    def run_the_expiry_work(self) -> None:
        """The expiry work runs (the server's own loop is stopped: when it runs is the model's to say):
        the holds past their time first (counted apart), then the transfers due."""
        expired = self.runner.run(self._expiry().expire_holds())
        assert expired == self.model.expire_holds()
        FIGURES.holds["expired by the expiry work"] += expired
        returned = self.runner.run(self._expiry().run_once())
        assert returned == self.model.expire()
        FIGURES.wallet["returned by the expiry work"] += returned

    @rule(
        target=send_calls,
        steps=st.lists(
            st.sampled_from(["send"] * 3 + ["accept"] * 2 + ["decline", "clock", "clock", "due", "expire"]),
            min_size=3,
            max_size=8,
        ),
        data=st.data(),
    )
    def a_day_of_transfers(self, steps: list[str], data: st.DataObject) -> Any:
        """A few of the wallet's steps in a row, mostly the usual ones: the family sends, the recipients
        accept or decline, time passes (now and then to the next pending transfer's due time, or just
        past it) and the expiry work runs. The limits (one pending, three a day, the quiet hours, the
        due time) meet each other in every run, not only when single steps happen to line up."""
        calls = []
        for step in steps:
            if step == "send":
                amount = data.draw(st.sampled_from(["small", "small", "max", "over", "all", "all+1"]), label="amount")
                calls.append(self.send_to_a_relative(data, amount))
            elif step in ("accept", "decline") and self.model.transfers:
                by = data.draw(st.sampled_from(["recipient"] * 9 + ["sender"]), label="by")
                self.resolve_transfer(data, step == "accept", by)
            elif step == "clock":
                self.move_the_clock(data.draw(st.sampled_from(CLOCK_MOVES), label="move"))
            elif step == "due":
                due = [
                    t.due_at for t in self.model.transfers.values() if t.state == PENDING and t.due_at > self.model.now
                ]
                if due:
                    self._set_clock(min(due) + dt.timedelta(seconds=data.draw(st.sampled_from([0, 1]), label="past")))
            elif step == "expire":
                self.run_the_expiry_work()
        return multiple(*(c for c in calls if isinstance(c, SendCall)))

    @rule(
        target=send_calls,
        edge=st.sampled_from(["-1s", "at", "at", "+1s", "+1h", "+1d"]),
        then=st.sampled_from(["expire", "expire", "expire", "send", "accept", "decline"]),
        data=st.data(),
    )
    def past_a_due_time(self, edge: str, then: str, data: st.DataObject) -> Any:
        """A transfer nobody answers in time: a pending one (sent now, when there is none), the clock to
        its due time (a second before it, at it, a little or a day after), then the expiry work runs, or
        its sender sends again (which returns it first), or its recipient answers it (too late, or just
        in time): what was due goes back to its sender exactly once, stamped with that time, and what
        was not stays pending. Every transfer of the two is read back as the model has it right away,
        not only at the end."""
        calls: list[SendCall] = []
        if not any(t.state == PENDING and t.transfer_id for t in self.model.transfers.values()):
            calls.append(self.send_to_a_relative(data, "small"))
        pending = [t for t in self.model.transfers.values() if t.state == PENDING and t.transfer_id]
        if not pending:
            return multiple(*(c for c in calls if isinstance(c, SendCall)))
        t = data.draw(st.sampled_from(sorted(pending, key=lambda t: (t.due_at, t.transfer_id))), label="transfer")
        offset = {"-1s": -1, "at": 0, "+1s": 1, "+1h": 3_600, "+1d": 86_400}[edge]
        at = t.due_at + dt.timedelta(seconds=offset)
        if at > self.model.now:  # time only goes on
            self._set_clock(at)
        if then == "expire":
            self.run_the_expiry_work()
        elif then == "send":
            fen = data.draw(st.integers(1, 3_000), label="amount")
            calls.append(self._send(SendCall(self._id("w"), t.sender, t.recipient, t.relationship, fen)))
        else:
            self._resolve(t.transfer_id, t.recipient, accept=then == "accept")
        self._transfers_listed((t.sender, t.recipient))
        return multiple(*(c for c in calls if isinstance(c, SendCall)))

    # ---- the 医保钱包 at the till: wallet money pays at settlement --------------------------------
    @initialize(
        target=people,
        resident_fen=st.integers(1, 3_000),
        employee_fen=st.integers(1, 3_000),
        own_fen=st.sampled_from([0, 1, 300, 2_000]),
        order=wallet_orders,
        steps=till_steps,
        data=st.data(),
    )
    def wallets_that_pay(
        self, resident_fen: int, employee_fen: int, own_fen: int, order: str, steps: list[str], data: st.DataObject
    ) -> Any:
        """Money in wallets from the start, sent by a parent and accepted: a resident-insured child, whose
        wallet is all the personal-account money they have, and an employee-insured one with `own_fen`
        in their own account too. The parent grants both, so that the own account, the wallet, mutual aid
        and cash meet in their settlements, in the order their region's policy says; one of them goes
        to the till at once, so that every sequence spends wallet money. (The region's policy is set
        first, with the wallet's place and the rules the model has for it now: region policy outlives
        an example, and caps_in_one_region may not have set this example's yet.)"""
        parent = self._enroll(EMPLOYEE, ACTIVE, REGIONS[0], BIRTHS[0])
        resident = self._enroll(RESIDENT, ACTIVE, REGIONS[0], BIRTHS[3])
        employee = self._enroll(EMPLOYEE, ACTIVE, REGIONS[0], BIRTHS[2])
        self._credit(CreditCall(self._id("c"), parent, 10_000))
        if own_fen:
            self._credit(CreditCall(self._id("c"), employee, own_fen))
        for child, fen in ((resident, resident_fen), (employee, employee_fen)):
            self.open_wallet(child)
            self.grant(parent, child, CHILD)
            self._fund(SendCall(self._id("w"), parent, child, CHILD, fen))
        self.change_wallet_order(REGIONS[0], order)
        patient = data.draw(st.sampled_from([resident, employee]), label="to the till")
        self._at_the_till(patient, steps, data.draw(st.sampled_from(INSTITUTIONS), label="institution"), data)
        return multiple(parent, resident, employee)

    def _fund(self, call: SendCall) -> SendCall:
        """A relative sends and the recipient accepts, as far as the rules let them (the model says)."""
        self._send(call)
        t = self.model.transfers.get((call.sender, call.request_id))
        if t is not None and t.state == PENDING:
            self._resolve(t.transfer_id, call.recipient, accept=True)
        return call

    def _settle_from_the_wallet(self, patient: str, institution: str, data: st.DataObject) -> SettleCall | None:
        """A bill of about what the patient's wallet and own account hold: a fen below the wallet, all
        of it, a fen more; all the two hold, a fen more; or a small one. Mostly with the personal
        account (the wallet is personal-account money: without it, cash pays)."""
        p = self.model.people[patient]
        wallet = self.model.wallets[patient].balance_fen
        own = p.balance_fen if p.scheme == EMPLOYEE else 0
        sizes = [wallet - 1, wallet, wallet + 1, own + wallet, own + wallet + 1, 0]
        amount = data.draw(st.sampled_from(sizes), label="amount")
        if amount < 1:
            amount = data.draw(st.integers(1, 3_000), label="small")
        shape = data.draw(bills(amount), label="bill")
        use = data.draw(st.sampled_from([True] * 5 + [False]), label="use the personal account")
        voucher = self._issue(patient, patient)
        if isinstance(voucher, Refused):
            return None
        call: SettleCall = self._settle(self._settle_call(institution, patient, shape, None, use), voucher)
        return call

    def _hold_from_the_wallet(self, patient: str, institution: str, data: st.DataObject) -> None:
        """A bill of about what the wallet and the own account hold, held first (the patient confirms on
        the terminal), then captured (mostly), released, or left to run out."""
        p = self.model.people[patient]
        wallet = self.model.wallets[patient].balance_fen
        own = p.balance_fen if p.scheme == EMPLOYEE else 0
        amount = data.draw(st.sampled_from([wallet, wallet + 1, own + wallet, own + wallet + 1, 0]), label="amount")
        if amount < 1:
            amount = data.draw(st.integers(1, 3_000), label="small")
        voucher = self._issue(patient, patient)
        if isinstance(voucher, Refused):
            return
        seconds = data.draw(st.sampled_from([1, 60, HOLD_SECONDS_MAX]), label="seconds")
        call = self._settle_call(institution, patient, data.draw(bills(amount), label="bill"), None, True)
        held = self._hold(HoldCall(call, seconds, voucher))
        then = data.draw(st.sampled_from(["capture"] * 4 + ["release", "leave"]), label="then")
        if then == "capture":
            self._capture(held, data)
        elif then == "release":
            self._release_call(held, data)

    def _wallet_holders(self, scheme: str | None = None) -> list[str]:
        """Who may settle with an open wallet (of `scheme`): those with money in it first, when any."""
        people = self.model.people
        holders = [p for p in self.model.wallets if people[p].status == ACTIVE and scheme in (None, people[p].scheme)]
        return [p for p in holders if self.model.wallets[p].balance_fen] or holders

    @precondition(lambda self: self._wallet_holders(RESIDENT))
    @rule(target=settle_calls, steps=till_steps, institution=st.sampled_from(INSTITUTIONS), data=st.data())
    def a_resident_pays_from_the_wallet(self, steps: list[str], institution: str, data: st.DataObject) -> Any:
        """A resident-insured patient, who has no personal account of their own: the wallet is all the
        personal-account money they have, before mutual aid (or after it, as their region says)."""
        patient = data.draw(st.sampled_from(self._wallet_holders(RESIDENT)), label="patient")
        return multiple(*self._at_the_till(patient, steps, institution, data))

    @precondition(lambda self: self._wallet_holders())
    @rule(target=settle_calls, steps=till_steps, institution=st.sampled_from(INSTITUTIONS), data=st.data())
    def the_wallet_at_the_till(self, steps: list[str], institution: str, data: st.DataObject) -> Any:
        """Anyone with an open wallet (with money in it, mostly), employee-insured ones with their own
        account too."""
        patient = data.draw(st.sampled_from(self._wallet_holders()), label="patient")
        return multiple(*self._at_the_till(patient, steps, institution, data))

    def _at_the_till(self, patient: str, steps: list[str], institution: str, data: st.DataObject) -> list[SettleCall]:
        """A patient with a wallet at the till a few times in a row: bills around what the wallet holds,
        refunds of part of one (into the wallet: past what cash and mutual aid paid) or of all that is
        left, the POS reversing a refund (refused when the wallet has spent it since) or a settlement, a
        relative topping the wallet up (first, when it is empty), the region moving the wallet's place, a
        bill held first (then captured, released or left to run out). Wallet money meets the own
        account, mutual aid, holds, refunds and reversals in every run, not only when single steps happen
        to line up. The settlements made, for the bundle."""
        calls: list[SettleCall] = []
        cancels: list[CancelCall] = []
        if not self.model.wallets[patient].balance_fen:
            steps = ["top up", *steps]
        for step in steps:
            settled = [s for c in calls if (s := self.model.settlements.get((c.institution, c.request_id))) is not None]
            if step == "settle":
                call = self._settle_from_the_wallet(patient, institution, data)
                if call is not None:
                    calls.append(call)
            elif step == "hold":
                self._hold_from_the_wallet(patient, institution, data)
            elif step == "cancel" and settled:
                s = data.draw(st.sampled_from(settled), label="settlement")
                left = s.left
                into_wallet = left.psn_cash_pay_fen + left.acct_mulaid_pay_fen + 1
                amount = data.draw(st.sampled_from([0, 1, into_wallet, left.amount_fen + 1]), label="refund")
                cancels.append(self._cancel(CancelCall(institution, self._id("r"), s.settlement_id, amount)))
            elif step == "reverse cancel" and cancels:
                self.reverse_cancel(data.draw(st.sampled_from(cancels), label="cancel"), other_institution=False)
            elif step == "refund spent" and settled:
                self._refund_spent(data.draw(st.sampled_from(settled), label="settlement"), institution, data)
            elif step == "reverse" and calls:
                self._reverse(institution, data.draw(st.sampled_from(calls), label="reversed").request_id)
            elif step == "top up":
                self._top_up(patient, data)
            elif step == "order":
                self.change_wallet_order(self.model.people[patient].region, data.draw(wallet_orders, label="order"))
        return calls

    def _refund_spent(self, s: Settlement, institution: str, data: st.DataObject) -> None:
        """What is left of a settlement refunded (to the wallet, when it paid), the wallet spent on another
        bill, then the POS reverses the refund: refused REFUND_ALREADY_SPENT when the wallet no longer
        holds what the refund gave it, taken back when it does (the model says which)."""
        cancel = self._cancel(CancelCall(institution, self._id("r"), s.settlement_id, 0))
        wallet = self.model.wallets[s.patient].balance_fen
        if wallet and data.draw(st.sampled_from([True, True, False]), label="spend it"):
            voucher = self._issue(s.patient, s.patient)
            if not isinstance(voucher, Refused):
                shape = BillShape(wallet + self.model.people[s.patient].balance_fen, None, None, None)
                self._settle(self._settle_call(institution, s.patient, shape, None, True), voucher)
        self.reverse_cancel(cancel, other_institution=False)

    def _top_up(self, patient: str, data: st.DataObject) -> None:
        """A relative with money sends the patient a little, and the patient accepts (when the limits
        and the hours let it through)."""
        people = self.model.people
        relatives = [
            (p, r)
            for p in people
            if p != patient and people[p].has_account and people[p].balance_fen
            for r in CLOSE_RELATIVES
            if plausible(people[p], people[patient], r)
        ]
        if not relatives:
            return
        sender, relationship = data.draw(st.sampled_from(relatives), label="relative")
        fen = data.draw(st.integers(1, min(people[sender].balance_fen, 3_000)), label="top up")
        self._fund(SendCall(self._id("w"), sender, patient, relationship, fen))

    # ---- holds at the till: a Quote holds its split, a Settle captures it --------------------------
    def _hold(self, call: HoldCall) -> HoldCall:
        asked = call.asked
        request = settlement_pb2.QuoteRequest(
            voucher=call.voucher or "GJ1.k1.AAAA.AAAA",  # None: a code whose signature does not verify
            patient_id=asked.patient,
            amount_fen=asked.amount_fen,
            use_personal_account=asked.use_account,
            hold_seconds=call.seconds,
            request_id=asked.request_id,
        )
        if asked.authorizer is not None:
            request.authorizer_id = asked.authorizer
        _with_bill(request, asked.bill)
        token = bearer(self._token(asked.institution))
        reply = self._run(lambda: self.api.settlement.Quote(request, metadata=token))
        known = (asked.institution, asked.request_id) in self.model.holds
        expected = self.model.hold(
            asked.institution,
            asked.request_id,
            call.voucher,
            asked.patient,
            asked.bill,
            asked.authorizer,
            asked.use_account,
            call.seconds,
        )
        outcome = reply.reason if isinstance(reply, Refused) else "replayed" if known else "OK"
        FIGURES.holds[f"hold {outcome}"] += 1
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            h, _ = expected
            if not h.hold_id:
                h.hold_id = reply.hold.hold_id
            self._check_held(reply, h)
        return call

    def _check_held(self, reply: settlement_pb2.QuoteResponse, h: Hold) -> None:
        """A holding Quote's answer: the split held, the balances after as they are now, the hold."""
        balc, wallet_balc, insutype = self.model.held_answer(h)
        q = h.quoted
        assert reply.psn_acct_pay_fen == reply.acct_pay_fen + reply.acct_mulaid_pay_fen
        got = (_split_of(reply), reply.authorizer_id, reply.balc_fen, _wallet_balc(reply))
        assert got == (q.paid, q.authorizer or "", balc, wallet_balc), (got, h)
        limit = types_pb2.MutualAidLimit.Name(reply.mutual_aid_limited_by).removeprefix("MUTUAL_AID_LIMIT_")
        assert (None if limit == "UNSPECIFIED" else limit) == q.limited_by
        bill = h.content[3]
        assert isinstance(bill, Bill)
        assert _bill_answer(reply) == _bill_expected(bill, q.parts, insutype), (reply, h)
        self._check_hold(reply.hold, h)

    @staticmethod
    def _check_hold(got: settlement_pb2.Hold, h: Hold) -> None:
        resolved_at = got.resolved_at.ToDatetime(dt.UTC) if got.HasField("resolved_at") else None
        assert (
            got.hold_id,
            got.request_id,
            got.patient_id,
            got.amount_fen,
            _split_of(got),
            got.authorizer_id,
            settlement_pb2.HoldState.Name(got.state).removeprefix("HOLD_STATE_"),
            got.created_at.ToDatetime(dt.UTC),
            got.expires_at.ToDatetime(dt.UTC),
            resolved_at,
            got.settlement_id,
        ) == (
            h.hold_id,
            h.request_id,
            h.patient,
            h.paid.amount_fen,
            h.paid,
            h.quoted.authorizer or "",
            h.state,
            h.created_at,
            h.expires_at,
            h.resolved_at,
            h.settlement.settlement_id if h.settlement is not None else "",
        ), (got, h)

    def _held(self, call: HoldCall) -> Hold | None:
        return self.model.holds.get((call.asked.institution, call.asked.request_id))

    def _rescanned(self, patient: str) -> str:
        """A fresh, genuine voucher naming `patient` (a token is all there is of a voucher), told to the
        model, whatever the patient's status now."""
        expires_s = int(dt.datetime.now(dt.UTC).timestamp()) + 60
        token = CODEC.issue(uuid.uuid4(), expires_s, patient, None)
        self.model.issued(token, patient, patient)
        return token

    def _capture(self, call: HoldCall, data: st.DataObject) -> SettleCall | None:
        """The Settle naming a hold: mostly asking what the Quote asked, now and then a fen more, another
        authorizer, at the other institution's terminal, or naming a hold that does not exist; presenting
        the voucher the Quote was asked with (unused: a Quote uses up nothing), or a fresh one (with a
        family member picked in the app, sometimes)."""
        asked, h = call.asked, self._held(call)
        hold_id = h.hold_id if h is not None and h.hold_id else str(uuid.uuid4())
        how = data.draw(st.sampled_from(["same"] * 6 + ["amount", "authorizer", "institution", "unknown"]), label="how")
        other: dict[str, Any] = {"request_id": self._id("s"), "hold_id": hold_id}
        if how == "amount":
            other["amount_fen"] = asked.amount_fen + 1
            if asked.parts is not None:
                parts = asked.parts
                other["parts"] = Parts(parts.in_scope_fen + 1, parts.over_limit_fen, parts.wholly_self_paid_fen)
        elif how == "authorizer":
            other["authorizer"] = None if asked.authorizer is not None else self._authorizer(data)
        elif how == "institution":
            other["institution"] = "B" if asked.institution == "A" else "A"
        elif how == "unknown":
            other["hold_id"] = str(uuid.uuid4())
        capture = SettleCall(**{**asked.__dict__, **other})
        presented = data.draw(st.sampled_from(["the quote's", "the quote's", "fresh", "picked"]), label="voucher")
        voucher: str | Refused | None = call.voucher
        if presented != "the quote's" or voucher is None:
            picked = (
                data.draw(st.sampled_from(list(self.model.people)), label="picked") if presented == "picked" else None
            )
            voucher = self._issue(asked.patient, asked.patient, picked)
            if isinstance(voucher, Refused):
                return None
        result: SettleCall = self._settle(capture, voucher)
        return result

    def _release(self, hold_id: str, institution: str) -> None:
        request = settlement_pb2.ReleaseHoldRequest(hold_id=hold_id)
        token = bearer(self._token(institution))
        reply = self._run(lambda: self.api.settlement.ReleaseHold(request, metadata=token))
        expected = self.model.release(institution, hold_id)
        outcome = "replayed" if not isinstance(reply, Refused) and reply.replayed else "OK"
        FIGURES.holds[f"release {reply.reason if isinstance(reply, Refused) else outcome}"] += 1
        self._same_outcome(reply, expected)
        if not isinstance(expected, Refused):
            assert not isinstance(reply, Refused)
            h, replayed = expected
            self._check_hold(reply.hold, h)
            assert reply.replayed == replayed

    def _release_call(self, call: HoldCall, data: st.DataObject) -> None:
        """Its terminal releases a hold (mostly), or the other institution's does, or a hold that does
        not exist is named."""
        h = self._held(call)
        by = data.draw(st.sampled_from(["its terminal"] * 4 + ["the other institution", "unknown"]), label="by")
        hold_id = h.hold_id if h is not None and h.hold_id and by != "unknown" else str(uuid.uuid4())
        institution = call.asked.institution
        if by == "the other institution":
            institution = "B" if institution == "A" else "A"
        self._release(hold_id, institution)

    def _retry_hold(self, call: HoldCall, data: st.DataObject) -> None:
        """The POS retries a holding Quote with the same request id, showing a rescanned code: the same
        content answers the same hold, whatever became of it (for another time, too: the time is not
        content); a fen more is refused."""
        asked = call.asked
        how = data.draw(st.sampled_from(["same", "same", "another time", "a fen more"]), label="retry")
        seconds = data.draw(st.sampled_from([1, 60]), label="seconds") if how == "another time" else call.seconds
        if how == "a fen more":
            asked = SettleCall(**{**asked.__dict__, "amount_fen": asked.amount_fen + 1, "parts": None})
        self._hold(HoldCall(asked, seconds, self._rescanned(asked.patient)))

    @rule(
        target=hold_calls,
        patient=people,
        bill=bills(),
        use=use_account,
        institution=st.sampled_from(INSTITUTIONS),
        seconds=hold_seconds,
        data=st.data(),
    )
    def hold_at_the_till(
        self, patient: str, bill: BillShape, use: bool, institution: str, seconds: int, data: st.DataObject
    ) -> Any:
        """Anyone's bill held, with the patient's fresh code (a family member picked in the app, and an
        authorizer named by the terminal, sometimes): the checks and the split of a settlement."""
        voucher = self._issue(patient, patient, self._picked(data))
        if isinstance(voucher, Refused):
            return multiple()
        asked = self._settle_call(institution, patient, bill, self._authorizer(data), use)
        return self._hold(HoldCall(asked, seconds, voucher))

    @rule(
        voucher=vouchers,
        patient=people,
        bill=bills(),
        institution=st.sampled_from(INSTITUTIONS),
        seconds=hold_seconds,
    )
    def hold_with_any_voucher(
        self, voucher: str, patient: str, bill: BillShape, institution: str, seconds: int
    ) -> None:
        """Someone's code, maybe used, maybe another person's, maybe a holder's from a removed binding
        (mostly refused: not kept for the steps that capture, release or retry holds)."""
        self._hold(HoldCall(self._settle_call(institution, patient, bill, None, True), seconds, voucher))

    def _with_money(self) -> list[str]:
        """Who may pay at the till with money of their own, their wallet's or a relative's (all ACTIVE)."""
        people = self.model.people
        beneficiaries = {g.beneficiary for g in self.model.grants if g.live}
        return [
            p
            for p, x in people.items()
            if x.status == ACTIVE
            and (
                (x.scheme == EMPLOYEE and x.balance_fen)
                or (p in self.model.wallets and self.model.wallets[p].balance_fen)
                or p in beneficiaries
            )
        ]

    @precondition(lambda self: self._with_money())
    @rule(target=hold_calls, steps=hold_steps, institution=st.sampled_from(INSTITUTIONS), data=st.data())
    def holds_at_the_till(self, steps: list[str], institution: str, data: st.DataObject) -> Any:
        """A patient with money at the till a few times in a row: bills of about what the own account and
        the wallet hold held, captured (mostly as asked), released, retried; another settlement
        meanwhile (the held money out of its reach), time to a hold's end (a second before, at, after),
        the expiry work, and the grant a hold drew on revoked. Holds meet settlements, the caps, grants,
        the clock and each other in every run, not only when single steps happen to line up. The holds
        asked, for the bundle."""
        patient = data.draw(st.sampled_from(self._with_money()), label="patient")
        return multiple(*self._holds_of(patient, steps, institution, data))

    def _holds_of(self, patient: str, steps: list[str], institution: str, data: st.DataObject) -> list[HoldCall]:
        """`patient` at the till, `steps` in a row (holds_at_the_till); the holds asked."""
        calls: list[HoldCall] = []
        for step in steps:
            p = self.model.people[patient]
            have = (p.balance_fen if p.scheme == EMPLOYEE else 0) + (
                self.model.wallets[patient].balance_fen if patient in self.model.wallets else 0
            )
            if step in ("hold", "settle") or not calls:
                amount = data.draw(st.sampled_from([have - 1, have, have + 1, 0]), label="amount")
                if amount < 1:
                    amount = data.draw(st.integers(1, 3_000), label="small")
                shape = data.draw(bills(amount), label="bill")
                voucher = self._issue(patient, patient)
                if isinstance(voucher, Refused):
                    continue
                asked = self._settle_call(institution, patient, shape, None, True)
                if step == "settle":
                    self._settle(asked, voucher)
                else:
                    seconds = data.draw(st.sampled_from([1, 60, HOLD_SECONDS_MAX]), label="seconds")
                    calls.append(self._hold(HoldCall(asked, seconds, voucher)))
                continue
            call = data.draw(st.sampled_from(calls), label="hold")
            h = self._held(call)
            if step == "capture":
                self._capture(call, data)
            elif step == "release":
                self._release_call(call, data)
            elif step == "retry":
                self._retry_hold(call, data)
            elif step == "clock":
                at = self.model.now + dt.timedelta(seconds=1)
                if h is not None and h.state == PENDING:
                    offset = data.draw(st.sampled_from([-1, 0, 0, 1]), label="to its end")
                    at = max(at, h.expires_at + dt.timedelta(seconds=offset))
                self._set_clock(at)
            elif step == "expire":
                self.run_the_expiry_work()
            elif step == "revoke" and h is not None and h.quoted.grant is not None:
                # The grant the hold drew on ends: its capture is refused, and the hold runs out.
                self.revoke(h.quoted.grant.authorizer, h.quoted.grant.beneficiary, "authorizer")
        return calls

    @initialize(target=people, steps=hold_steps, institution=st.sampled_from(INSTITUTIONS), data=st.data())
    def a_family_holds_at_the_till(self, steps: list[str], institution: str, data: st.DataObject) -> Any:
        """A parent with money granting an employee-insured child with a little of their own, in the
        region with caps and a floor (its policy as the model has it now); the child goes to the till
        with holds at once (holds_at_the_till), so that every sequence holds, captures and gives back."""
        region = REGIONS[1]
        self.model.caps[region] = (2_000, 1_000)
        self._set_policy(region, [(m, *who) for m, who in self.model.wholly.get(region, {}).items()])
        parent = self._enroll(EMPLOYEE, ACTIVE, region, BIRTHS[0])
        child = self._enroll(EMPLOYEE, ACTIVE, region, BIRTHS[2])
        self._credit(CreditCall(self._id("c"), parent, 5_000))
        self._credit(CreditCall(self._id("c"), child, 300))
        self.grant(parent, child, CHILD)
        self._holds_of(child, steps, institution, data)
        return multiple(parent, child)

    @rule(call=hold_calls, data=st.data())
    def capture_a_hold(self, call: HoldCall, data: st.DataObject) -> None:
        """A hold captured later: after other steps changed balances, grants, caps, statuses or the time."""
        self._capture(call, data)

    @rule(call=hold_calls, data=st.data())
    def release_a_hold(self, call: HoldCall, data: st.DataObject) -> None:
        self._release_call(call, data)

    @rule(call=hold_calls, data=st.data())
    def retry_a_holding_quote(self, call: HoldCall, data: st.DataObject) -> None:
        self._retry_hold(call, data)

    def _holds_read_back(self) -> None:
        """Every hold of this example as the model has it, answered by its holding Quote sent again."""
        for h in self.model.holds.values():
            bill = h.content[3]
            assert isinstance(bill, Bill)
            asked = SettleCall(
                h.institution,
                h.request_id,
                h.patient,
                bill.amount_fen,
                h.content[1],  # type: ignore[arg-type]
                h.content[2],  # type: ignore[arg-type]
                parts=bill.parts,
                med_type=bill.med_type,
                insutype=bill.insutype,
            )
            seconds = int((h.expires_at - h.created_at).total_seconds())
            self._hold(HoldCall(asked, seconds, self._rescanned(h.patient)))
            FIGURES.holds[f"holds {h.state} as a sequence ends"] += 1

    # ---- after every step ------------------------------------------------------------------------
    @invariant()
    def balances_and_books(self) -> None:
        """Every account and wallet as the model has it (what holds took from them too), and books that
        explain every balance."""
        FIGURES.steps += 1

        async def accounts() -> list[tuple[str, str, bool, int, int]]:
            replies = await asyncio.gather(
                *(
                    self.api.account.GetAccount(
                        account_pb2.GetAccountRequest(person_id=p), metadata=bearer(self.api.tokens.operator)
                    )
                    for p in self.model.people
                )
            )
            return [
                (
                    types_pb2.Scheme.Name(r.account.scheme).removeprefix("SCHEME_"),
                    types_pb2.PersonStatus.Name(r.account.status).removeprefix("PERSON_STATUS_"),
                    r.account.has_personal_account,
                    r.account.balance_fen,
                    r.account.held_fen,
                )
                for r in replies
            ]

        async def wallets() -> list[tuple[int, int, int]]:
            requests = [wallet_pb2.GetWalletRequest(person_id=p) for p in self.model.wallets]
            replies = await asyncio.gather(*(self.wallet.GetWallet(r, metadata=self._app()) for r in requests))
            return [(r.wallet.balance_fen, r.wallet.pending_in_fen, r.wallet.held_fen) for r in replies]

        got = self.runner.run(accounts())
        expected = [self.model.account(p) for p in self.model.people]
        assert got == expected, [(p, g, e) for p, g, e in zip(self.model.people, got, expected, strict=True) if g != e]
        got_wallets = self.runner.run(wallets())
        expected_wallets = [self.model.wallet(p) for p in self.model.wallets]
        assert got_wallets == expected_wallets, list(
            zip(self.model.wallets, got_wallets, expected_wallets, strict=True)
        )
        assert all(p.balance_fen >= 0 for p in self.model.people.values())
        assert self.runner.run(audit.differences(self.served.pool)) == []

    def teardown(self) -> None:
        """At the end: every settlement read back, and every person's grants held, as the model has them."""
        for s in self.model.settlements.values():
            request = settlement_pb2.GetSettlementRequest(settlement_id=s.settlement_id)
            token = bearer(self._token(s.institution))
            reply = self._run(lambda: self.api.settlement.GetSettlement(request, metadata=token))  # noqa: B023
            assert not isinstance(reply, Refused), reply
            got = reply.settlement
            assert (_split_of(got), got.refunded_fen, got.HasField("reversed_at")) == (
                s.paid,
                s.refunded.amount_fen,
                s.reversed,
            )
            assert _bill_answer(got) == _bill_expected(s.bill, s.parts, s.insutype)
            assert _wallet_balc(got) == s.wallet_balc_fen
            # What the refunds standing gave back, source by source (a reversed one gave nothing back).
            standing = [_split_of(r) for r in got.refunds if not r.HasField("reversed_at")]
            assert [sum(getattr(r, f) for r in standing) for f in SOURCES] == [getattr(s.refunded, f) for f in SOURCES]
            # Each Cancel's refund as the model made it, and taken back when the model took it back.
            cancels = {
                request_id: c
                for (institution, request_id), c in self.model.cancels.items()
                if institution == s.institution and c.content[0] == s.settlement_id
            }
            assert _reversal_of(got) == s.reversal
            got_cancels = {r.request_id: r for r in got.refunds if r.kind == "CANCEL"}
            assert sorted(got_cancels) == sorted(cancels), (got.refunds, cancels)
            for request_id, r in got_cancels.items():
                c = cancels[request_id]
                assert (_split_of(r), r.HasField("reversed_at")) == (c.refund, c.reversed), (r, c)
        for person in self.model.people:
            listing = family_pb2.ListFamilyRequest(person_id=person)
            family = self._run(lambda: self.api.family.ListFamily(listing, metadata=bearer(self.api.tokens.app)))  # noqa: B023
            assert not isinstance(family, Refused), family
            live_held = [g.authorizer_id for g in family.grants_held if g.status == types_pb2.GRANT_STATUS_LIVE]
            assert live_held == [g.authorizer for g in self.model.grants if g.live and g.beneficiary == person]
        for t in self.model.transfers.values():
            FIGURES.wallet[f"transfers {t.state} as a sequence ends"] += 1
        # Time runs out for what is still pending: past the last due time, the expiry work returns all of
        # it, as many as the model says, each back to its sender at that time (read back below), and gives
        # back every hold nobody captured.
        due = [t.due_at for t in self.model.transfers.values() if t.state == PENDING and t.due_at > self.model.now]
        due += [h.expires_at for h in self.model.holds.values() if h.state == PENDING and h.expires_at > self.model.now]
        if due:
            self._set_clock(max(due))
        expired = self.runner.run(self._expiry().expire_holds())
        assert expired == self.model.expire_holds()
        FIGURES.holds["expired at the end by the expiry work"] += expired
        returned = self.runner.run(self._expiry().run_once())
        assert returned == self.model.expire()
        FIGURES.wallet["returned at the end by the expiry work"] += returned
        assert all(t.state != PENDING for t in self.model.transfers.values())
        assert all(h.state != PENDING for h in self.model.holds.values())
        self._transfers_listed(self.model.people)
        self._holds_read_back()
        self.balances_and_books()

    def _transfers_listed(self, people: Iterable[str]) -> None:
        """Every transfer of `people`, sent and received, newest first, each as the model has it."""
        for person in people:
            listing = wallet_pb2.ListTransfersRequest(person_id=person, page_size=100)
            reply = self._run(lambda: self.wallet.ListTransfers(listing, metadata=self._app()))  # noqa: B023
            assert not isinstance(reply, Refused), reply
            theirs = [t for t in self.model.transfers.values() if person in (t.sender, t.recipient)]
            theirs.sort(key=lambda t: (t.sent_at, t.transfer_id), reverse=True)
            assert len(reply.transfers) == len(theirs), (person, reply.transfers, theirs)
            for got, t in zip(reply.transfers, theirs, strict=True):
                self._check_transfer(got, t)


@contextlib.contextmanager
def _serving_the_machine(server_url: str) -> Iterator[None]:
    clock = ManualClock(CLOCK_START)
    with own_loop_server(server_url, "gongji_model", clock=clock) as (runner, served):
        # The machine runs the expiry work itself, as a step: stop the server's own loop of it, which
        # would otherwise return transfers whenever it happened to run.
        assert served.running.wallet_expiry is not None
        runner.run(served.running.wallet_expiry.close())
        GongjiMachine.runner = runner
        GongjiMachine.served = served
        GongjiMachine.clock = clock
        yield


def run_machine(server_url: str, *, examples: int, steps: int) -> None:
    FIGURES.__init__()  # type: ignore[misc]
    with _serving_the_machine(server_url):
        run_state_machine_as_test(
            GongjiMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    print(FIGURES.line())


def test_gongji_behaves_like_the_model(server_url: str) -> None:
    run_machine(server_url, examples=EXAMPLES, steps=STEPS)


# ---- shrunk failures, kept ------------------------------------------------------------------------


def test_shrunk_balc_of_a_settlement_that_does_not_use_the_account(server_url: str) -> None:
    """The first failure the machine found, as it shrank it: a_family(), then the child settles 245
    without the personal account (naming the parent). gongji answered balc_fen 0, the model the
    child's 500: the balance after, which nothing touched. Fixed in 0002_settle.sql."""
    with _serving_the_machine(server_url):
        state = GongjiMachine()
        parent, child = state.a_family()
        state.balances_and_books()
        voucher = state._issue(child, child)
        assert not isinstance(voucher, Refused)
        state._settle(SettleCall("A", state._id("s"), child, 245, parent, False), voucher)
        state.balances_and_books()
        state.teardown()


def test_a_limit_that_held_nothing_back_is_not_named(server_url: str) -> None:
    """caps_in_one_region(), a rule of its region that the accounts do not pay the wholly self-paid
    items of outpatient care, then the resident child settles 100 within the scope and 500 wholly
    self-paid: mutual aid pays the 100, well within the room the authorizer's floor leaves it, and cash
    the 500 it may not pay. The floor held nothing back, so no limit is named."""
    with _serving_the_machine(server_url):
        state = GongjiMachine()
        _, child = state.caps_in_one_region({region: {} for region in REGIONS}, dict.fromkeys(REGIONS, "UNSPECIFIED"))
        state.change_wholly_self_paid_rules(REGIONS[1], [("11", False, False)])
        voucher = state._issue(child, child)
        assert not isinstance(voucher, Refused)
        shape = BillShape(600, Parts(100, 0, 500), "11", None)
        state._settle(state._settle_call("A", child, shape, None, True), voucher)
        state.balances_and_books()
        state.teardown()


def test_mutual_aid_held_counts_in_the_year_the_caps_were_read_for(server_url: str) -> None:
    """The first failure holds met, shrunk by hand: caps_in_one_region(), then the resident child's
    bill of 1 fen held (mutual aid pays it) while the service's clock (the model's, years ahead) and
    the database's disagree on the year. The hold counts its mutual aid in the caps of its cap_year,
    the database's year, as settlements do; the audit looked for it in the year of the hold's
    created_at, the service's clock, and found both years wrong until the hold ended. Fixed in
    store/audit.py: a pending hold counts in its cap_year."""
    with _serving_the_machine(server_url):
        state = GongjiMachine()
        _, child = state.caps_in_one_region({region: {} for region in REGIONS}, dict.fromkeys(REGIONS, "UNSPECIFIED"))
        voucher = state._issue(child, child)
        assert not isinstance(voucher, Refused)
        asked = state._settle_call("A", child, BillShape(1, None, None, None), None, True)
        state._hold(HoldCall(asked, 60, voucher))
        assert state.model.holds[("A", asked.request_id)].paid.acct_mulaid_pay_fen == 1
        state.balances_and_books()
        state.teardown()


def test_a_holding_quote_answers_balc_as_a_quote_does(server_url: str) -> None:
    """Found by the machine: a_family(), the child becomes resident-insured (keeping the account of
    their employee insurance, with its 500), then holds a bill of 100 (mutual aid pays it). A Quote
    answers balc_fen 0 for a patient not employee-insured; the holding Quote answered the kept 500.
    Fixed in store/sql/hold.sql (gongji_hold_after)."""
    with _serving_the_machine(server_url):
        state = GongjiMachine()
        _, child = state.a_family()
        state.change_person(child, RESIDENT, ACTIVE, REGIONS[0])
        voucher = state._issue(child, child)
        assert not isinstance(voucher, Refused)
        state._hold(HoldCall(state._settle_call("A", child, BillShape(100, None, None, None), None, True), 60, voucher))
        state.balances_and_books()
        state.teardown()


def test_a_hold_on_a_revoked_grant_is_not_captured_and_runs_out(server_url: str) -> None:
    """a_family(), the child holds 600 (their 500, then 100 of mutual aid), the parent revokes the grant:
    the capture is refused GRANT_NOT_FOUND and the hold stays pending, its mutual aid still counted,
    until its time is over; a capture then is refused HOLD_EXPIRED and gives everything back."""
    with _serving_the_machine(server_url):
        state = GongjiMachine()
        parent, child = state.a_family()
        voucher = state._issue(child, child)
        assert not isinstance(voucher, Refused)
        asked = state._settle_call("A", child, BillShape(600, None, None, None), None, True)
        state._hold(HoldCall(asked, 60, voucher))
        h = state.model.holds[("A", asked.request_id)]
        assert h.paid.acct_mulaid_pay_fen == 100
        state.revoke(parent, child, "authorizer")
        capture = SettleCall(**{**asked.__dict__, "request_id": state._id("s"), "hold_id": h.hold_id})
        state._settle(capture, voucher)
        assert h.state == PENDING and (capture.institution, capture.request_id) not in state.model.settlements
        state.balances_and_books()
        state._set_clock(h.expires_at)
        state._settle(SettleCall(**{**capture.__dict__, "request_id": state._id("s")}), voucher)
        assert h.state == "EXPIRED"
        state.balances_and_books()
        state.teardown()
