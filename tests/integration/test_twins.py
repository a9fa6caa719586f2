"""Each SQL step that decides money against its pure Python twin in gongji.domain, on random states:
the steps of gongji_settle and of gongji_pay_premium, the refusal of gongji_reverse_refund, and the
医保钱包's steps (store/sql/wallet.sql against domain.wallet).

Every example writes its rows in one transaction, asks the SQL function, and rolls back; the twin gets
the same state as Python values. `now()` in SQL is the transaction's start, so the test reads it once
and gives the twin the same instant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gongji.domain import holds, wallet
from gongji.domain.bill import Insutype, MedType, insutype_of, insutype_refusal
from gongji.domain.eligibility import (
    DEFAULT_POLICY,
    HeldGrant,
    RegionPolicy,
    care_scope,
    certificate_refusal,
    live_grant,
    mutual_aid_for_care,
    voucher_choice_refusal,
    wholly_self_paid,
)
from gongji.domain.people import Person, PersonStatus, Relationship, Scheme
from gongji.domain.premium import PremiumRate, premium_rate_for, premium_refusal, premium_replay
from gongji.domain.reversal import refund_reversal_refusal
from gongji.domain.settlement import Seen, settle_refusal, settle_replay
from gongji.domain.vouchers import CARDS, CertType, PresentedVoucher, voucher_refusal
from gongji.store import policies

T = TypeVar("T")
EXAMPLES = 200
T0 = dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC)
_PERSON = """
insert into person (person_id, name, birth_date, region_code, scheme, status)
values ($1, 'twin', date '1980-01-01', '610100', $2, $3)"""
_GRANT = """
insert into mutual_aid_grant (authorizer_id, beneficiary_id, relationship, status, created_at, ended_at)
values ($1, $2, 'SPOUSE', $3, $4, $5) returning grant_id"""
_BINDING = """
insert into kinship_binding (holder_id, member_id, relationship, phone, reason, created_at, ended_at)
values ($1, $2, 'CHILD', '13800000000', 'twin', $3, $4)"""


def seconds(*values: int) -> st.SearchStrategy[dt.timedelta]:
    return st.sampled_from(values).map(lambda s: dt.timedelta(seconds=s))


# Mostly the people a grant can be drawn on, so that the choice among several is exercised.
statuses = st.sampled_from((*[PersonStatus.ACTIVE] * 4, PersonStatus.SUSPENDED, PersonStatus.TERMINATED))
schemes = st.sampled_from((*[Scheme.EMPLOYEE] * 4, Scheme.RESIDENT))


def in_rollback(runner: asyncio.Runner, conn: asyncpg.Connection, step: Awaitable[T]) -> T:
    """Run `step` in a transaction of its own on `conn`, then roll it back: every example starts empty."""

    async def once() -> T:
        tr = conn.transaction()
        await tr.start()
        try:
            return await step
        finally:
            await tr.rollback()

    return runner.run(once())


def hold_to_twin(
    db_url: str, both: Callable[..., Awaitable[tuple[Any, ...]]], *states: Any, examples: int = EXAMPLES
) -> None:
    """Draw states from `states`, and for each ask `both(conn, *state)` for what the SQL and the twin
    answer, in a transaction rolled back after it: they must agree."""
    with asyncio.Runner() as runner:
        conn = runner.run(asyncpg.connect(db_url))
        try:

            @settings(max_examples=examples, deadline=None)
            @given(st.tuples(*states))
            def agree(state: tuple[Any, ...]) -> None:
                sql, twin = in_rollback(runner, conn, both(conn, *state))
                assert sql == twin

            agree()
        finally:
            runner.run(conn.close())


# ---- gongji_voucher_refusal / domain.vouchers.voucher_refusal ---------------------------------------
PATIENT, OTHER, HOLDER = "TWIN-P", "TWIN-Q", "TWIN-H"
PEOPLE = (PATIENT, OTHER, HOLDER)
PAIRS = [(h, m) for h in PEOPLE for m in PEOPLE if h != m]


@dataclass(frozen=True)
class Binding:
    holder_id: str
    member_id: str
    ended: bool


@dataclass(frozen=True)
class VoucherState:
    names_patient: bool
    expires: dt.timedelta  # after now()
    used: bool  # a settlement names the voucher
    bindings: tuple[Binding, ...]
    # The binding the voucher was issued under: an index into `bindings`, -1 for an id no binding has,
    # None for the person's own voucher.
    binding: int | None


@st.composite
def voucher_states(draw: st.DrawFn) -> VoucherState:
    """The patient's voucher or another's, the person's own or a holder's under a binding live or
    ended, of the patient or of someone else, or under a binding id that names nothing."""
    bindings, live = [], set()
    for (holder, member), ended in draw(st.lists(st.tuples(st.sampled_from(PAIRS), st.booleans()), max_size=3)):
        ended = ended or (holder, member) in live  # at most one live binding per pair (kinship_binding_live)
        if not ended:
            live.add((holder, member))
        bindings.append(Binding(holder, member, ended))
    choices = (None, None, -1, *range(len(bindings)), *range(len(bindings)))
    return VoucherState(
        names_patient=draw(st.sampled_from((True,) * 7 + (False,))),
        expires=draw(seconds(5, 4, 3, 2, 1, 0, -1)),  # 0: expires at now(), so is expired
        used=draw(st.sampled_from((False,) * 4 + (True,))),
        bindings=tuple(bindings),
        binding=draw(st.sampled_from(choices)),
    )


_SETTLED = """
insert into settlement (settlement_id, institution_id, terminal_id, request_id, patient_id, voucher_id,
                        amount_fen, acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen, balc_fen)
values (gen_random_uuid(), 'TWIN-H1', 'T1', 'r-used', $1, $2, 100, 0, 0, 100, 0)"""


async def given_voucher(conn: asyncpg.Connection, s: VoucherState) -> tuple[uuid.UUID, PresentedVoucher, int | None]:
    """Write the people, bindings and the voucher's use of `s` in the caller's transaction; answer the
    voucher's id, what the twin is given, and the binding id the token carries."""
    now: dt.datetime = await conn.fetchval("select now()")
    await conn.executemany(_PERSON, [(p, "EMPLOYEE", "ACTIVE") for p in PEOPLE])
    ids = [
        await conn.fetchval(_BINDING + " returning binding_id", b.holder_id, b.member_id, now, now if b.ended else None)
        for b in s.bindings
    ]
    voucher_id = uuid.uuid4()
    if s.used:
        await conn.execute("insert into institution (institution_id, name) values ('TWIN-H1', 'twin')")
        await conn.execute(_SETTLED, PATIENT, voucher_id)
    binding_id: int | None = None
    binding_live: bool | None = None
    if s.binding is not None:
        binding_id = ids[s.binding] if s.binding >= 0 else max(ids, default=0) + 1_000
        chosen = s.bindings[s.binding] if s.binding >= 0 else None
        binding_live = chosen is not None and chosen.member_id == PATIENT and not chosen.ended
    return voucher_id, PresentedVoucher(s.names_patient, s.used, now + s.expires, binding_live), binding_id


async def voucher_refusal_both(conn: asyncpg.Connection, s: VoucherState) -> tuple[str | None, str | None]:
    """What gongji_voucher_refusal and voucher_refusal answer for `s`, inside the caller's transaction."""
    voucher_id, voucher, binding_id = await given_voucher(conn, s)
    sql = await conn.fetchval(
        "select gongji_voucher_refusal($1, $2, $3, $4, $5)",
        voucher_id,
        voucher.names_patient,
        voucher.expires_at,
        binding_id,
        PATIENT,
    )
    twin = voucher_refusal(voucher, await conn.fetchval("select now()"))
    return sql, twin.reason if twin else None


def test_sql_voucher_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_voucher_refusal and domain.vouchers.voucher_refusal answer the same reason."""
    hold_to_twin(db_url, voucher_refusal_both, voucher_states())


# ---- gongji_live_grant / domain.eligibility.live_grant ----------------------------------------------
BENEFICIARY, SECOND = "TWIN-B", "TWIN-C"
AUTHORIZERS = (SECOND, "TWIN-A0", "TWIN-A1", "TWIN-A2", "TWIN-A3")
NOBODY = "TWIN-NOBODY"


@dataclass(frozen=True)
class Grant:
    authorizer_id: str
    beneficiary_id: str
    status: str
    created: dt.timedelta  # after T0: few values, so that ties are common


@dataclass(frozen=True)
class GrantState:
    people: dict[str, tuple[Scheme, PersonStatus]]
    grants: tuple[Grant, ...]  # in the order of insertion, so of grant_id
    named: str | None
    twin_order: tuple[int, ...]  # the order the twin gets the beneficiary's grants in: not grant_id's
    # The grant the e-voucher carries (the patient's pick in the app): an index into `grants`, any of
    # them (ended, or another beneficiary's, which a genuine voucher never carries but the SQL must not
    # trust), or None for a voucher without a choice.
    picked: int | None = None


@st.composite
def grant_states(draw: st.DrawFn) -> GrantState:
    """Grants live, revoked or ended, from authorizers of every status and scheme, to the beneficiary
    and to someone else, made at the same or different instants, inserted in any order (so grant_id
    and created_at disagree); the authorizer named or not; a grant picked in the app or not."""
    people = {p: (draw(schemes), draw(statuses)) for p in (BENEFICIARY, *AUTHORIZERS)}
    offset = seconds(0, 1, 2, 3)
    grants = []
    # The beneficiary's grants, and SECOND's (which the SQL must not pick): at most one live per pair
    # (mutual_aid_grant_live_pair), any number ended.
    for beneficiary in (BENEFICIARY, SECOND):
        for authorizer in AUTHORIZERS:
            if authorizer == beneficiary:
                continue
            ended = draw(st.lists(st.sampled_from(("REVOKED", "ENDED")), max_size=2))
            live = ["LIVE"] if draw(st.sampled_from((True, True, False))) else []
            grants += [Grant(authorizer, beneficiary, status, draw(offset)) for status in live + ended]
    named = draw(st.sampled_from((*[None] * 6, *AUTHORIZERS, BENEFICIARY, NOBODY)))
    held = sum(g.beneficiary_id == BENEFICIARY for g in grants)
    picked = draw(st.one_of(st.none(), st.integers(0, len(grants) - 1))) if grants else None
    return GrantState(
        people, tuple(draw(st.permutations(grants))), named, tuple(draw(st.permutations(range(held)))), picked
    )


async def live_grant_both(conn: asyncpg.Connection, s: GrantState) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """What gongji_live_grant and gongji_voucher_choice_refusal answer for `s`, and what their twins
    answer, inside the caller's transaction."""
    await conn.executemany(_PERSON, [(p, scheme, status) for p, (scheme, status) in s.people.items()])
    held = []
    ids = []
    for g in s.grants:
        created_at = T0 + g.created
        ended_at = None if g.status == "LIVE" else created_at + dt.timedelta(days=1)
        grant_id = await conn.fetchval(_GRANT, g.authorizer_id, g.beneficiary_id, g.status, created_at, ended_at)
        ids.append(grant_id)
        if g.beneficiary_id == BENEFICIARY:
            scheme, status = s.people[g.authorizer_id]
            held.append(HeldGrant(grant_id, g.authorizer_id, g.status, created_at, status, scheme))
    picked_id = None if s.picked is None else ids[s.picked]
    picked_authorizer = None if s.picked is None else s.grants[s.picked].authorizer_id
    sql = await conn.fetchrow(
        "select gongji_live_grant($1, $2, $3) as grant_id, gongji_voucher_choice_refusal($3, $2) as refusal",
        BENEFICIARY,
        s.named,
        picked_id,
    )
    assert sql is not None
    refusal = voucher_choice_refusal(picked_authorizer, s.named)
    twin = live_grant([held[i] for i in s.twin_order], s.named, picked_id), refusal.reason if refusal else None
    return (sql["grant_id"], sql["refusal"]), twin


def test_sql_live_grant_agrees_with_the_twin(db_url: str) -> None:
    """gongji_live_grant and domain.eligibility.live_grant pick the same grant, or none, and refuse a
    terminal's authorizer against the patient's pick alike."""
    hold_to_twin(db_url, live_grant_both, grant_states())


# ---- gongji_settle_refusal / domain.settlement.settle_refusal ---------------------------------------
async def settle_refusal_both(
    conn: asyncpg.Connection, status: PersonStatus | None, s: VoucherState
) -> tuple[str | None, str | None]:
    """What gongji_settle_refusal and settle_refusal answer for a patient of `status` (None: not
    enrolled, an all-null row as gongji_settle reads it) showing the voucher of `s`."""
    voucher_id, voucher, binding_id = await given_voucher(conn, s)
    if status is not None:
        await conn.execute("update person set status = $2 where person_id = $1", PATIENT, status.value)
    sql = await conn.fetchval(
        "select gongji_settle_refusal((select p from person p where p.person_id = $1),"
        " gongji_voucher_refusal($2, $3, $4, $5, $6))",
        PATIENT if status is not None else NOBODY,
        voucher_id,
        voucher.names_patient,
        voucher.expires_at,
        binding_id,
        PATIENT,
    )
    twin = settle_refusal(status, voucher_refusal(voucher, await conn.fetchval("select now()")))
    return sql, twin.reason if twin else None


def test_sql_settle_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_settle_refusal and domain.settlement.settle_refusal: the same reason, in the same order."""
    hold_to_twin(db_url, settle_refusal_both, st.sampled_from((None, *PersonStatus)), voucher_states())


# ---- gongji_settle_replay / domain.settlement.settle_replay -----------------------------------------
INSTITUTION, OTHER_INSTITUTION = "TWIN-H1", "TWIN-H2"
REQUEST, OTHER_REQUEST = "r-twin", "r-other"
DIGEST = b"\x01" * 32


@dataclass(frozen=True)
class KeyState:
    reversals: frozenset[tuple[str, str]]  # (institution, request id)
    keys: dict[tuple[str, str], bytes]  # (institution, request id) -> the digest it settled


@st.composite
def key_states(draw: st.DrawFn) -> KeyState:
    """Reversals and settled keys for this request id and institution, or for another of either (which
    must not count), each settled with this request's digest or another."""
    places = st.sampled_from([(i, r) for i in (INSTITUTION, OTHER_INSTITUTION) for r in (REQUEST, OTHER_REQUEST)])
    digests = st.sampled_from((DIGEST, b"\x02" * 32))
    return KeyState(frozenset(draw(st.lists(places, max_size=2))), draw(st.dictionaries(places, digests, max_size=3)))


async def settle_replay_both(conn: asyncpg.Connection, s: KeyState) -> tuple[tuple[str | None, bool], ...]:
    """What gongji_settle_replay and settle_replay answer for `s`: the answer and, for a replay,
    whether the settlement to answer again is the one the key holds."""
    await conn.executemany("insert into reversal (institution_id, request_id) values ($1, $2)", sorted(s.reversals))
    resources = {place: uuid.uuid4() for place in s.keys}
    await conn.executemany(
        "insert into idempotency_key (scope, request_id, request_digest, resource_id) values ($1, $2, $3, $4)",
        [(f"settle/{i}", r, digest, resources[(i, r)]) for (i, r), digest in s.keys.items()],
    )
    row = await conn.fetchrow("select * from gongji_settle_replay($1, $2, $3)", INSTITUTION, REQUEST, DIGEST)
    assert row is not None
    here = (INSTITUTION, REQUEST)
    twin = settle_replay(reversed_first=here in s.reversals, stored_digest=s.keys.get(here), digest=DIGEST)
    twin_seen = None if twin is None else twin.value if isinstance(twin, Seen) else twin.reason
    sql_points = row["seen_settlement_id"] == resources.get(here) if row["seen"] == "REPLAY" else True
    return (row["seen"], sql_points), (twin_seen, True)


def test_sql_settle_replay_agrees_with_the_twin(db_url: str) -> None:
    """gongji_settle_replay and domain.settlement.settle_replay: a new request, a replay of the right
    settlement, a reused key or a reversed request id, alike."""
    hold_to_twin(db_url, settle_replay_both, key_states())


# ---- gongji_premium_rate / domain.premium.premium_rate_for ------------------------------------------
RATE_KEYS = ("610100", "61", "610200", "44", "440100")
RATE_YEARS = (2026, 2027)
REGIONS = ("610100", "610200", "610300", "440100", "450100")
WINDOW = (dt.date(2026, 9, 1), dt.date(2026, 12, 31))


@st.composite
def rate_sets(draw: st.DrawFn) -> tuple[PremiumRate, ...]:
    """Rates of a 统筹区, its province, a neighbour, another province, for this year and the next: any
    subset (at most one per key and year, the table's key), amounts and windows apart."""
    keys = draw(st.lists(st.tuples(st.sampled_from(RATE_KEYS), st.sampled_from(RATE_YEARS)), unique=True))
    return tuple(
        PremiumRate(key, year, draw(st.integers(1, 60_000)), WINDOW[0] - dt.timedelta(days=draw(st.integers(0, 3))),
                    WINDOW[1] + dt.timedelta(days=draw(st.integers(0, 3))))
        for key, year in keys
    )  # fmt: skip


async def given_rates(conn: asyncpg.Connection, rates: tuple[PremiumRate, ...]) -> None:
    await conn.executemany(
        "insert into premium_rate (region_key, year, amount_fen, opens_on, closes_on) values ($1, $2, $3, $4, $5)",
        [(r.region_key, r.year, r.amount_fen, r.opens_on, r.closes_on) for r in rates],
    )


def _rate(row: asyncpg.Record | None) -> PremiumRate | None:
    if row is None or row["region_key"] is None:
        return None
    return PremiumRate(row["region_key"], row["year"], row["amount_fen"], row["opens_on"], row["closes_on"])


async def premium_rate_both(
    conn: asyncpg.Connection, rates: tuple[PremiumRate, ...], region: str, year: int
) -> tuple[PremiumRate | None, PremiumRate | None]:
    await given_rates(conn, rates)
    sql = await conn.fetchrow("select * from gongji_premium_rate($1, $2)", region, year)
    return _rate(sql), premium_rate_for(rates, region, year)


def test_sql_premium_rate_agrees_with_the_twin(db_url: str) -> None:
    """gongji_premium_rate and domain.premium.premium_rate_for pick the same rate (the 统筹区's own, else
    its province's), or none."""
    hold_to_twin(db_url, premium_rate_both, rate_sets(), st.sampled_from(REGIONS), st.sampled_from(RATE_YEARS))


# ---- gongji_premium_refusal / domain.premium.premium_refusal ----------------------------------------
PAYER, RELATIVE, STRANGER = "TWIN-PAYER", "TWIN-REL", "TWIN-X"


@dataclass(frozen=True)
class PremiumState:
    payer: tuple[Scheme, PersonStatus] | None  # None: not enrolled
    payer_has_account: bool
    beneficiary: tuple[Scheme, PersonStatus, str] | None  # and its 统筹区
    grants: tuple[tuple[str, str], ...]  # (authorizer, status) of grants to the beneficiary
    rates: tuple[PremiumRate, ...]
    year: int
    today: dt.date
    paid: bool | None  # None: not read yet
    balance_fen: int | None  # None: not read yet


def _mostly(passing: T, *others: T) -> st.SearchStrategy[T]:
    """`passing` four times in five, else one of `others`: each check passes often, so that the checks
    after it are reached often too (a state of independent draws would rarely get past the grant)."""
    return st.sampled_from((passing,) * 4 * max(1, len(others)) + others)


@st.composite
def premium_states(draw: st.DrawFn) -> PremiumState:
    """Payers and beneficiaries of every scheme and status or not enrolled, with or without an account,
    grants live or ended from the payer or from someone else, rates set or not, days on both sides of
    each end of the window, the year paid or not, balances around the premium, and the last two facts
    not read yet."""
    others = [(scheme, status) for scheme in Scheme for status in PersonStatus]
    payer = draw(_mostly((Scheme.EMPLOYEE, PersonStatus.ACTIVE), None, *others))
    region = draw(st.sampled_from(REGIONS))
    beneficiary = draw(_mostly((Scheme.RESIDENT, PersonStatus.ACTIVE, region), None, *[(*o, region) for o in others]))
    grants = draw(
        _mostly(
            ((PAYER, "LIVE"),), (), ((PAYER, "REVOKED"),), ((STRANGER, "LIVE"),), ((PAYER, "LIVE"), (STRANGER, "LIVE"))
        )
    )
    year = draw(st.sampled_from(RATE_YEARS))
    rates = draw(rate_sets())
    if draw(st.booleans()):  # make sure the beneficiary's region has one (its own or its province's)
        applies = PremiumRate(draw(st.sampled_from((region, region[:2]))), year, draw(st.integers(1, 60_000)), *WINDOW)
        rates = (*(r for r in rates if (r.region_key, r.year) != (applies.region_key, year)), applies)
    # Days around both ends of every window drawn (the edges are where an off-by-one hides), and others.
    edges = [d for r in rates for d in (r.opens_on, r.closes_on)] + list(WINDOW)
    day = st.sampled_from(edges).flatmap(
        lambda d: st.sampled_from((d - dt.timedelta(days=1), d, d + dt.timedelta(days=1)))
    )
    balance = st.sampled_from([r.amount_fen + d for r in rates for d in (-1, 0, 1)] or [0])
    return PremiumState(
        payer=payer,
        payer_has_account=draw(_mostly(True, False)),
        beneficiary=beneficiary,
        grants=grants,
        rates=rates,
        year=year,
        today=draw(day),
        paid=draw(st.sampled_from((None, False, False, True))),
        balance_fen=draw(st.sampled_from((None,)) | balance | st.integers(0, 60_000)),
    )


def _person(person_id: str, scheme: Scheme, status: PersonStatus, region: str = "610100") -> Person:
    return Person(person_id, "twin", dt.date(1980, 1, 1), region, scheme, status)


async def premium_refusal_both(conn: asyncpg.Connection, s: PremiumState) -> tuple[str | None, str | None]:
    """What gongji_premium_refusal and premium_refusal answer for `s`, the grant and the rate found by
    their own twins (gongji_live_grant, gongji_premium_rate) as gongji_pay_premium finds them."""
    payer = _person(PAYER, *s.payer) if s.payer else None
    beneficiary = _person(RELATIVE, *s.beneficiary) if s.beneficiary else None
    stranger = _person(STRANGER, Scheme.EMPLOYEE, PersonStatus.ACTIVE)
    people = [p for p in (payer, beneficiary, stranger) if p is not None]
    await conn.executemany(
        "insert into person (person_id, name, birth_date, region_code, scheme, status)"
        " values ($1, 'twin', date '1980-01-01', $2, $3, $4)",
        [(p.person_id, p.region_code, p.scheme.value, p.status.value) for p in people],
    )
    if payer and s.payer_has_account:
        await conn.execute("insert into account (person_id) values ($1)", PAYER)
    held = []
    for authorizer, status in s.grants if beneficiary else ():
        a = payer if authorizer == PAYER else stranger
        if a is None:
            continue  # a grant needs both people enrolled
        grant_id = await conn.fetchval(
            _GRANT, authorizer, RELATIVE, status, T0, None if status == "LIVE" else T0 + dt.timedelta(days=1)
        )
        held.append(HeldGrant(grant_id, authorizer, status, T0, a.status, a.scheme))
    await given_rates(conn, s.rates)
    sql = await conn.fetchval(
        "select gongji_premium_refusal((select p from person p where p.person_id = $1),"
        " (select p from person p where p.person_id = $2), exists (select 1 from account a where a.person_id = $1),"
        " gongji_live_grant($2, $1, null),"
        " gongji_premium_rate((select region_code from person where person_id = $2), $3),"
        " $4, $5, $6)",
        PAYER,
        RELATIVE,
        s.year,
        s.today,
        s.paid,
        s.balance_fen,
    )
    twin = premium_refusal(
        payer=payer,
        beneficiary=beneficiary,
        payer_has_account=payer is not None and s.payer_has_account,
        grant_id=live_grant(held, PAYER),
        rate=premium_rate_for(s.rates, beneficiary.region_code, s.year) if beneficiary else None,
        today=s.today,
        paid=s.paid,
        balance_fen=s.balance_fen,
    )
    return sql, twin.reason if twin else None


def test_sql_premium_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_premium_refusal and domain.premium.premium_refusal: the same reason, in the same order."""
    hold_to_twin(db_url, premium_refusal_both, premium_states(), examples=EXAMPLES * 2)


_RESIDENT = (Scheme.RESIDENT, PersonStatus.ACTIVE, "610100")
_PAYABLE = PremiumState(
    payer=(Scheme.EMPLOYEE, PersonStatus.ACTIVE),
    payer_has_account=True,
    beneficiary=_RESIDENT,
    grants=((PAYER, "LIVE"),),
    rates=(PremiumRate("61", 2027, 40_000, *WINDOW),),
    year=2027,
    today=WINDOW[0],
    paid=False,
    balance_fen=40_000,
)
_DAY = dt.timedelta(days=1)
# The payable state changed in one place each: every reason the SQL can answer is reached, in the order
# the checks run (a change that also broke an earlier check would show here), and the edges of the
# window and of the balance fall on the right side.
_ONE_CHANGE: dict[str, tuple[dict[str, object], str | None]] = {
    "payable": ({}, None),
    "not enrolled": ({"beneficiary": None}, "PERSON_NOT_FOUND"),
    "payer suspended": ({"payer": (Scheme.EMPLOYEE, PersonStatus.SUSPENDED)}, "PERSON_NOT_ACTIVE"),
    "payer resident": ({"payer": (Scheme.RESIDENT, PersonStatus.ACTIVE)}, "NOT_EMPLOYEE_INSURED"),
    "no account": ({"payer_has_account": False}, "NOT_EMPLOYEE_INSURED"),
    "beneficiary employee": (
        {"beneficiary": (Scheme.EMPLOYEE, PersonStatus.ACTIVE, "610100")},
        "BENEFICIARY_NOT_RESIDENT",
    ),
    "grant revoked": ({"grants": ((PAYER, "REVOKED"), (STRANGER, "LIVE"))}, "GRANT_NOT_FOUND"),
    "other year": ({"year": 2026}, "PREMIUM_NOT_SET"),
    "other province": ({"beneficiary": (Scheme.RESIDENT, PersonStatus.ACTIVE, "440100")}, "PREMIUM_NOT_SET"),
    "first day": ({"today": WINDOW[0]}, None),
    "day before": ({"today": WINDOW[0] - _DAY}, "PREMIUM_WINDOW_CLOSED"),
    "last day": ({"today": WINDOW[1]}, None),
    "day after": ({"today": WINDOW[1] + _DAY}, "PREMIUM_WINDOW_CLOSED"),
    "paid": ({"paid": True}, "PREMIUM_ALREADY_PAID"),
    "a fen short": ({"balance_fen": 39_999}, "INSUFFICIENT_BALANCE"),
    "not read yet": ({"paid": None, "balance_fen": None}, None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_ONE_CHANGE))
async def test_every_premium_refusal_is_reached(db_url: str, case: str) -> None:
    change, expected = _ONE_CHANGE[case]
    state = dataclasses.replace(_PAYABLE, **change)  # type: ignore[arg-type]
    conn = await asyncpg.connect(db_url)
    try:
        tr = conn.transaction()
        await tr.start()
        try:
            assert await premium_refusal_both(conn, state) == (expected, expected)
        finally:
            await tr.rollback()
    finally:
        await conn.close()


# ---- gongji_premium_replay / domain.premium.premium_replay ------------------------------------------
async def premium_replay_both(conn: asyncpg.Connection, s: KeyState) -> tuple[tuple[str | None, bool], ...]:
    """Keys of PayPremium ('premium') and of Settle ('settle/<institution>', which must not count) under
    this request id and another; what gongji_premium_replay and premium_replay answer."""
    resources = {place: uuid.uuid4() for place in s.keys}
    scope = {INSTITUTION: "premium", OTHER_INSTITUTION: f"settle/{OTHER_INSTITUTION}"}
    await conn.executemany(
        "insert into idempotency_key (scope, request_id, request_digest, resource_id) values ($1, $2, $3, $4)",
        [(scope[i], r, digest, resources[(i, r)]) for (i, r), digest in s.keys.items()],
    )
    row = await conn.fetchrow("select * from gongji_premium_replay($1, $2)", REQUEST, DIGEST)
    assert row is not None
    here = (INSTITUTION, REQUEST)
    twin = premium_replay(stored_digest=s.keys.get(here), digest=DIGEST)
    twin_seen = None if twin is None else twin.value if isinstance(twin, Seen) else twin.reason
    sql_points = row["seen_payment_id"] == resources.get(here) if row["seen"] == "REPLAY" else True
    return (row["seen"], sql_points), (twin_seen, True)


def test_sql_premium_replay_agrees_with_the_twin(db_url: str) -> None:
    """gongji_premium_replay and domain.premium.premium_replay: a new request, a replay of the right
    payment, or a reused key, alike."""
    hold_to_twin(db_url, premium_replay_both, key_states())


# ---- gongji_certificate_refusal / domain.eligibility.certificate_refusal ---------------------------
async def certificate_refusal_both(
    conn: asyncpg.Connection, cert_type: CertType, accepted: frozenset[CertType] | None, own_policy: bool
) -> tuple[str | None, str | None]:
    """What the SQL and the twin answer for a patient of 610100 presenting `cert_type`, under a policy
    of the province accepting `accepted` (None: a policy that lists nothing, so all), or under no policy
    at all; a policy of another province is there to be ignored."""
    insert = (
        "insert into region_policy (region_key, scope, allowed_relationships, accepted_cert_types)"
        " values ($1, 'PROVINCE', '{SPOUSE}', $2)"
        " on conflict (region_key) do update set accepted_cert_types = excluded.accepted_cert_types"
    )
    # Other tests' policies share the database; this example's own are rolled back after it.
    await conn.execute("delete from region_policy where region_key in ('61', '610100')")
    await conn.execute(insert, "45", [])
    policy = DEFAULT_POLICY
    if own_policy:
        listed = None if accepted is None else sorted(c.value for c in accepted)
        await conn.execute(insert, "61", listed)
        policy = RegionPolicy(accepted_cards=CARDS if accepted is None else accepted)
    sql = await conn.fetchval("select gongji_certificate_refusal($1, '610100')", cert_type.value)
    refusal = certificate_refusal(cert_type, policy)
    return sql, refusal.reason if refusal else None


def test_sql_certificate_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_certificate_refusal and domain.eligibility.certificate_refusal accept the same cards."""
    hold_to_twin(
        db_url,
        certificate_refusal_both,
        st.sampled_from(CertType),
        st.one_of(st.none(), st.frozensets(st.sampled_from(CertType))),
        st.booleans(),
    )


# ---- gongji_care_scope, gongji_mutual_aid_care_allowed / domain.eligibility ------------------------
REGIONS_DRAWN = ("610100", "610103", "610200", "619900", "450100", "110101")


async def care_both(
    conn: asyncpg.Connection, insured: str, care: str | None, policy: tuple[bool, bool] | None, own_key: bool
) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """Where care of a patient of `insured` at an institution of `care` happens and whether mutual aid
    may pay, by SQL and by the twins, under the patient's region policy (`policy`: out of region, out of
    province; None: none), set for the 统筹区 itself or for its province."""
    await conn.execute("delete from region_policy where region_key in ($1, $2)", insured, insured[:2])
    twin_policy = DEFAULT_POLICY
    if policy is not None:
        await conn.execute(
            "insert into region_policy (region_key, scope, allowed_relationships, mutual_aid_out_of_region,"
            " mutual_aid_out_of_province) values ($1, 'PROVINCE', '{SPOUSE}', $2, $3)",
            insured if own_key else insured[:2],
            *policy,
        )
        twin_policy = RegionPolicy(mutual_aid_out_of_region=policy[0], mutual_aid_out_of_province=policy[1])
    row = await conn.fetchrow(
        "select s.scope, gongji_mutual_aid_care_allowed(s.scope, $1) as allowed"
        " from (select gongji_care_scope($1, $2) as scope) s",
        insured,
        care,
    )
    assert row is not None
    scope = care_scope(insured, care)
    return (row["scope"], row["allowed"]), (scope.value, mutual_aid_for_care(scope, twin_policy))


def test_sql_care_scope_and_its_policy_agree_with_the_twins(db_url: str) -> None:
    """gongji_care_scope and gongji_mutual_aid_care_allowed against care_scope and mutual_aid_for_care."""
    hold_to_twin(
        db_url,
        care_both,
        st.sampled_from(REGIONS_DRAWN),
        st.one_of(st.none(), st.sampled_from(REGIONS_DRAWN)),
        st.one_of(st.none(), st.tuples(st.booleans(), st.booleans())),
        st.booleans(),
    )


# ---- gongji_refund_reversal_refusal / domain.reversal.refund_reversal_refusal -----------------------
parts = st.integers(0, 2_000)
balances = st.none() | st.integers(0, 2_000)


async def refund_reversal_refusal_both(
    conn: asyncpg.Connection,
    reversed_: bool,
    own: int,
    own_balance: int | None,
    mulaid: int,
    mulaid_balance: int | None,
    wallet: int,
    wallet_balance: int | None,
) -> tuple[str | None, str | None]:
    sql = await conn.fetchval(
        "select gongji_refund_reversal_refusal($1, $2, $3, $4, $5, $6, $7)",
        reversed_, own, own_balance, mulaid, mulaid_balance, wallet, wallet_balance,
    )  # fmt: skip
    twin = refund_reversal_refusal(
        settlement_reversed=reversed_,
        acct_pay_fen=own,
        own_balance_fen=own_balance,
        acct_mulaid_pay_fen=mulaid,
        mulaid_balance_fen=mulaid_balance,
        wallet_pay_fen=wallet,
        wallet_balance_fen=wallet_balance,
    )
    return sql, None if twin is None else twin.reason


def test_sql_refund_reversal_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_refund_reversal_refusal and domain.reversal.refund_reversal_refusal: a settlement reversed
    since, an account or the wallet short of its part (or not credited at all), or a refund that can be
    taken back."""
    hold_to_twin(db_url, refund_reversal_refusal_both, st.booleans(), parts, balances, parts, balances, parts, balances)


# ---- gongji_wholly_self_paid, gongji_insutype_refusal / domain.eligibility, domain.bill --------------
async def wholly_self_paid_both(
    conn: asyncpg.Connection,
    region: str,
    rules: tuple[frozenset[MedType], frozenset[MedType]] | None,
    own_key: bool,
    med_type: MedType | None,
    wholly_fen: int,
) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
    """What may pay the wholly self-paid items of a patient of `region`, by SQL and by the twin, under a
    policy excluding `rules` (the kinds of care the account may not pay them for, those mutual aid may
    not; None: no policy), set for the 统筹区 itself or for its province."""
    await conn.execute("delete from region_policy where region_key in ($1, $2)", region, region[:2])
    policy = DEFAULT_POLICY
    if rules is not None:
        no_account, no_mutual_aid = rules
        await conn.execute(
            "insert into region_policy (region_key, scope, allowed_relationships, wholly_self_paid_no_account,"
            " wholly_self_paid_no_mutual_aid) values ($1, 'PROVINCE', '{SPOUSE}', $2, $3)",
            region if own_key else region[:2],
            sorted(no_account) or None,
            sorted(no_mutual_aid) or None,
        )
        policy = RegionPolicy(wholly_self_paid_no_account=no_account, wholly_self_paid_no_mutual_aid=no_mutual_aid)
    row = await conn.fetchrow("select * from gongji_wholly_self_paid($1, $2, $3)", region, med_type, wholly_fen)
    assert row is not None
    # No wholly self-paid items: nothing to judge, whatever the policy.
    twin = wholly_self_paid(policy, med_type) if wholly_fen > 0 else wholly_self_paid(policy, None)
    return (row["account"], row["mutual_aid"]), (twin.account, twin.mutual_aid)


def test_sql_wholly_self_paid_agrees_with_the_twin(db_url: str) -> None:
    """gongji_wholly_self_paid against domain.eligibility.wholly_self_paid: a rule of the region's own or
    of its province's, for this kind of care or another, mutual aid never paying what the account may not."""
    med_types = st.frozensets(st.sampled_from(MedType))
    hold_to_twin(
        db_url,
        wholly_self_paid_both,
        st.sampled_from(REGIONS_DRAWN),
        st.one_of(st.none(), st.tuples(med_types, med_types)),
        st.booleans(),
        st.one_of(st.none(), st.sampled_from(MedType)),
        st.sampled_from([0, 1, 5_000]),
    )


async def insutype_both(
    conn: asyncpg.Connection, scheme: Scheme, insutype: Insutype | None
) -> tuple[tuple[str | None, str], tuple[str | None, str]]:
    row = await conn.fetchrow(
        "select gongji_insutype_refusal($1, $2) as refusal, gongji_insutype($1) as insutype", scheme, insutype
    )
    assert row is not None
    twin = insutype_refusal(scheme, insutype)
    return (row["refusal"], row["insutype"]), (None if twin is None else twin.reason, insutype_of(scheme).value)


def test_sql_insutype_agrees_with_the_twin(db_url: str) -> None:
    """gongji_insutype and gongji_insutype_refusal against domain.bill: the patient's scheme decides."""
    hold_to_twin(
        db_url, insutype_both, st.sampled_from(Scheme), st.one_of(st.none(), st.sampled_from(Insutype)), examples=20
    )


# ---- The 医保钱包: store/sql/wallet.sql against domain.wallet -----------------------------------------
# Whole minutes as a policy writes them, the minutes at both ends of the day, and odd instants.
_MINUTES = st.sampled_from([dt.time(0, 0), dt.time(23, 59), dt.time(22, 0), dt.time(6, 0), dt.time(12, 0)]) | st.builds(
    dt.time, st.integers(0, 23), st.integers(0, 59)
)
_DAYS = st.dates(dt.date(2024, 1, 1), dt.date(2099, 12, 31))


def _china(day: dt.date, t: dt.time) -> dt.datetime:
    return dt.datetime.combine(day, t, tzinfo=wallet.CHINA)


@st.composite
def instants_near(draw: st.DrawFn, *bounds: dt.time) -> dt.datetime:
    """An instant at one of `bounds` (China time) or just either side of it, or anywhen."""
    day = draw(_DAYS)
    at_bound = st.sampled_from(bounds).map(lambda t: _china(day, t)).flatmap(
        lambda t: st.sampled_from([t, t - dt.timedelta(microseconds=1), t + dt.timedelta(microseconds=1),
                                   t - dt.timedelta(seconds=1), t + dt.timedelta(seconds=59, microseconds=999_999)])
    )  # fmt: skip
    anywhen = st.datetimes(dt.datetime(2024, 1, 1), dt.datetime(2099, 12, 31), timezones=st.just(dt.UTC))
    return draw(at_bound | anywhen)


async def quiet_both(conn: asyncpg.Connection, start: dt.time, end: dt.time, data: Any) -> tuple[bool, bool]:
    now = data.draw(instants_near(start, end, dt.time(0, 0), dt.time(23, 59, 59, 999_999)))
    sql = await conn.fetchval("select gongji_transfer_quiet($1, $2, $3)", now, start, end)
    return sql, wallet.in_quiet_hours(now, wallet.WalletPolicy(quiet_from=start, quiet_until=end))


def test_sql_transfer_quiet_agrees_with_the_twin(db_url: str) -> None:
    """gongji_transfer_quiet and domain.wallet.in_quiet_hours: within the day, over midnight, none when the
    bounds are equal; instants at each bound, a microsecond either side, and at the day's ends."""
    equal = _MINUTES.map(lambda t: (t, t))
    bounds = st.tuples(_MINUTES, _MINUTES) | equal
    hold_to_twin(db_url, lambda conn, b, data: quiet_both(conn, *b, data), bounds, st.data(), examples=EXAMPLES * 2)


async def due_both(conn: asyncpg.Connection, sent_at: dt.datetime, expires: dt.time) -> tuple[dt.datetime, ...]:
    sql = await conn.fetchval("select gongji_transfer_due($1, $2)", sent_at, expires)
    twin = wallet.due_at(sent_at, wallet.WalletPolicy(expires_at=expires))
    return (sql,), (twin,)


def test_sql_transfer_due_agrees_with_the_twin(db_url: str) -> None:
    """gongji_transfer_due and domain.wallet.due_at: the next China day at the expiry time, from sends at
    any instant, around China's midnight too (the UTC date is then another)."""
    hold_to_twin(
        db_url, due_both, instants_near(dt.time(0, 0), dt.time(23, 59), dt.time(8, 0), dt.time(6, 0)), _MINUTES
    )


@dataclass(frozen=True)
class SendState:
    sender: tuple[Scheme, PersonStatus] | None  # None: not enrolled
    sender_has_account: bool
    recipient: PersonStatus | None
    wallet_open: bool
    now: dt.datetime
    quiet: tuple[dt.time, dt.time]
    send_max_fen: int
    amount_fen: int
    pending: bool
    sent_today: int
    sends_per_day: int
    balance_fen: int


@st.composite
def send_states(draw: st.DrawFn) -> SendState:
    """Each check passing most of the time (so that the later ones are reached), the limits at their
    edges: an amount at the most one send carries and a fen over, the day's count at its limit and one
    short, a balance a fen short."""
    others = [(scheme, status) for scheme in Scheme for status in PersonStatus]
    quiet = draw(_mostly((dt.time(22), dt.time(6)), (dt.time(0), dt.time(0)), (dt.time(8), dt.time(20))))
    now = draw(instants_near(*quiet))
    most = draw(st.sampled_from([1, 100, 200_000, 100_000_000]))
    amount = draw(st.sampled_from([most, most + 1, max(1, most - 1), 1]))
    per_day = draw(st.sampled_from([0, 1, 3, 100]))
    return SendState(
        sender=draw(_mostly((Scheme.EMPLOYEE, PersonStatus.ACTIVE), None, *others)),
        sender_has_account=draw(_mostly(True, False)),
        recipient=draw(_mostly(PersonStatus.ACTIVE, None, PersonStatus.SUSPENDED, PersonStatus.TERMINATED)),
        wallet_open=draw(_mostly(True, False)),
        now=now,
        quiet=quiet,
        send_max_fen=most,
        amount_fen=amount,
        pending=draw(_mostly(False, True)),
        sent_today=draw(st.sampled_from([0, max(0, per_day - 1), per_day, per_day + 1])),
        sends_per_day=per_day,
        balance_fen=draw(st.sampled_from([amount, amount - 1, amount + 1, 0])),
    )


async def send_refusal_both(conn: asyncpg.Connection, s: SendState) -> tuple[str | None, str | None]:
    sender = _person(PAYER, *s.sender) if s.sender else None
    recipient = _person(RELATIVE, Scheme.RESIDENT, s.recipient) if s.recipient else None
    people = [p for p in (sender, recipient) if p is not None]
    await conn.executemany(
        "insert into person (person_id, name, birth_date, region_code, scheme, status)"
        " values ($1, 'twin', date '1980-01-01', $2, $3, $4)",
        [(p.person_id, p.region_code, p.scheme.value, p.status.value) for p in people],
    )
    sql = await conn.fetchval(
        "select gongji_send_refusal((select p from person p where p.person_id = $1), $2,"
        " (select p from person p where p.person_id = $3), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        PAYER, s.sender_has_account, RELATIVE, s.wallet_open, s.now, *s.quiet, s.send_max_fen, s.amount_fen,
        s.pending, s.sent_today, s.sends_per_day, s.balance_fen,
    )  # fmt: skip
    twin = wallet.send_refusal(
        sender=sender,
        sender_has_account=s.sender_has_account,
        recipient=recipient,
        wallet_open=s.wallet_open,
        now=s.now,
        policy=wallet.WalletPolicy(
            quiet_from=s.quiet[0], quiet_until=s.quiet[1], send_max_fen=s.send_max_fen, sends_per_day=s.sends_per_day
        ),
        amount_fen=s.amount_fen,
        pending=s.pending,
        sent_today=s.sent_today,
        balance_fen=s.balance_fen,
    )
    return sql, None if twin is None else twin.reason


def test_sql_send_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_send_refusal and domain.wallet.send_refusal: the same reason, in the same order."""
    hold_to_twin(db_url, send_refusal_both, send_states(), examples=EXAMPLES * 3)


async def resolution_both(
    conn: asyncpg.Connection, state: wallet.TransferState, due: dt.datetime, late: dt.timedelta, accept: bool
) -> tuple[tuple[str, str | None, bool], tuple[str, str | None, bool]]:
    now = due + late
    row = await conn.fetchrow("select * from gongji_transfer_resolution($1, $2, $3, $4)", state.value, due, now, accept)
    assert row is not None
    end, refusal, moves = wallet.resolution(state, due, now, accept)
    return (row["state"], row["refusal"], row["moves"]), (end.value, None if refusal is None else refusal.reason, moves)


def test_sql_transfer_resolution_agrees_with_the_twin(db_url: str) -> None:
    """gongji_transfer_resolution and domain.wallet.resolution: every state, accept or decline, a
    microsecond before its due time, at it, and after."""
    late = st.sampled_from([-1, 0, 1, -86_400_000_000, 3_600_000_000]).map(lambda us: dt.timedelta(microseconds=us))
    due = st.datetimes(dt.datetime(2024, 1, 1), dt.datetime(2099, 12, 31), timezones=st.just(dt.UTC))
    hold_to_twin(
        db_url, resolution_both, st.sampled_from(wallet.TransferState), due, late, st.booleans(), examples=EXAMPLES
    )


_WALLET_COLUMNS = (
    "wallet_relationships", "wallet_scope", "wallet_sends_per_day", "wallet_send_max_fen", "wallet_quiet_from",
    "wallet_quiet_until", "wallet_expires_at",
)  # fmt: skip


async def wallet_policy_both(
    conn: asyncpg.Connection, region: str, values: tuple[Any, ...] | None, own_key: bool
) -> tuple[wallet.WalletPolicy, wallet.WalletPolicy]:
    """The wallet limits gongji_wallet_policy gives a send from `region` under a policy row of these
    wallet_* values (None each: unset; None whole: no policy), set for the 统筹区 or its province, and
    what the store reads of the same row (gongji.store.policies, as ListRegionPolicies answers)."""
    await conn.execute("delete from region_policy where region_key in ($1, $2)", region, region[:2])
    if values is not None:
        await conn.execute(
            f"insert into region_policy (region_key, scope, allowed_relationships, {', '.join(_WALLET_COLUMNS)})"
            " values ($1, 'PROVINCE', '{SPOUSE}', $2, $3, $4, $5, $6, $7, $8)",
            region if own_key else region[:2],
            *values,
        )
    row = await conn.fetchrow("select * from gongji_wallet_policy($1)", region)
    assert row is not None
    sql = wallet.WalletPolicy(
        frozenset(Relationship(r) for r in row["relationships"]),
        wallet.WalletScope(row["scope"]),
        *(row[k] for k in ("sends_per_day", "send_max_fen", "quiet_from", "quiet_until", "expires_at")),
    )
    return sql, (await policies.for_region(conn, region)).wallet


def test_sql_wallet_policy_defaults_agree_with_the_twin(db_url: str) -> None:
    """gongji_wallet_policy's published values are DEFAULT_WALLET_POLICY's, field by field: a region with
    no policy, and a policy row with any of its wallet columns unset."""
    close = sorted(r.value for r in wallet.DEFAULT_WALLET_POLICY.relationships)
    column_values = st.tuples(
        st.none() | st.sampled_from([["SPOUSE"], close, ["CHILD", "PARENT"]]),
        st.none() | st.sampled_from([s.value for s in wallet.WalletScope]),
        st.none() | st.integers(0, 100),
        st.none() | st.integers(1, 100_000_000),
        st.none() | _MINUTES,
        st.none() | _MINUTES,
        st.none() | _MINUTES,
    )
    hold_to_twin(db_url, wallet_policy_both, st.sampled_from(REGIONS_DRAWN), st.none() | column_values, st.booleans())


async def test_the_published_wallet_limits_apply_where_no_policy_says(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("select * from gongji_wallet_policy(null)")
        assert row is not None
        d = wallet.DEFAULT_WALLET_POLICY
        assert sorted(row["relationships"]) == sorted(r.value for r in d.relationships)
        assert (row["scope"], row["sends_per_day"], row["send_max_fen"]) == (d.scope, d.sends_per_day, d.send_max_fen)
        assert (row["quiet_from"], row["quiet_until"], row["expires_at"]) == (d.quiet_from, d.quiet_until, d.expires_at)
    finally:
        await conn.close()


# ---- Holds at the till: store/sql/hold.sql against domain.holds -------------------------------------
_HOLD_ROW = "jsonb_populate_record(null::settlement_hold, $1::jsonb)"


def _hold_json(
    state: holds.HoldState | None, institution: str, expires_at: dt.datetime, digest: bytes, mulaid_fen: int = 0
) -> str | None:
    """A settlement_hold row as JSON with what the refusals read (None: no such hold): mutual aid held
    (`mulaid_fen`) from grant 7, counted in 2031's caps."""
    if state is None:
        return None
    return json.dumps(
        {
            "hold_id": str(uuid.uuid4()),
            "institution_id": institution,
            "state": state.value,
            "expires_at": expires_at.isoformat(),
            "request_digest": "\\x" + digest.hex(),
            "acct_mulaid_pay_fen": mulaid_fen,
            "grant_id": 7 if mulaid_fen else None,
            "cap_year": 2031,
        }
    )


async def capture_refusal_both(
    conn: asyncpg.Connection,
    state: holds.HoldState | None,
    same_institution: bool,
    late: dt.timedelta,
    same_content: bool,
    mulaid_fen: int,
    cap_year: int,
    picked: int | None,
) -> tuple[str | None, str | None]:
    expires_at = dt.datetime(2031, 5, 1, 10, tzinfo=dt.UTC)
    now = expires_at + late
    row = _hold_json(state, "H61010300101" if same_institution else "H61010300202", expires_at, b"held", mulaid_fen)
    sql = await conn.fetchval(
        f"select gongji_capture_refusal({_HOLD_ROW}, $2, $3, $4, $5, $6)",
        row,
        "H61010300101",
        b"held" if same_content else b"other",
        now,
        cap_year,
        picked,
    )
    twin = holds.capture_refusal(
        state=state,
        same_institution=same_institution,
        expires_at=expires_at,
        now=now,
        same_content=same_content,
        year_turned=mulaid_fen > 0 and cap_year != 2031,
        other_grant_picked=mulaid_fen > 0 and picked is not None and picked != 7,
    )
    return sql, None if twin is None else twin.reason


def test_sql_capture_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_capture_refusal and domain.holds.capture_refusal: no hold or another institution's, every
    state, a microsecond before the hold's time, at it and after, the same content or other."""
    late = st.sampled_from([-1, 0, 1, -60_000_000]).map(lambda us: dt.timedelta(microseconds=us))
    hold_to_twin(
        db_url,
        capture_refusal_both,
        st.none() | st.sampled_from(holds.HoldState),
        st.booleans(),
        late,
        st.booleans(),
        st.sampled_from([0, 100]),
        st.sampled_from([2031, 2032]),
        st.sampled_from([None, 7, 8]),
        examples=EXAMPLES,
    )


async def release_refusal_both(
    conn: asyncpg.Connection, state: holds.HoldState | None, same_institution: bool
) -> tuple[str | None, str | None]:
    row = _hold_json(state, "H61010300101" if same_institution else "H61010300202", dt.datetime.now(dt.UTC), b"")
    sql = await conn.fetchval(f"select gongji_release_refusal({_HOLD_ROW}, $2)", row, "H61010300101")
    twin = holds.release_refusal(state=state, same_institution=same_institution)
    return sql, None if twin is None else twin.reason


def test_sql_release_refusal_agrees_with_the_twin(db_url: str) -> None:
    """gongji_release_refusal and domain.holds.release_refusal: every state, either institution, none."""
    hold_to_twin(db_url, release_refusal_both, st.none() | st.sampled_from(holds.HoldState), st.booleans(), examples=40)
