"""A pure, in-memory model of docs/domain.md (and of the contract in docs/api.md and the README), written apart
from gongji's code so that the two can disagree. Only the waterfall is shared: gongji.domain.waterfall
is the reference for splits and refunds, as the store's own property tests already prove. Who may pay a
bill's wholly self-paid items, and where the patient's 医保钱包 stands among the sources, is the
model's own reading of the region rules, and every split is checked against the rules said simply
(Model._check_split), whatever order the waterfall takes the parts in.

Each operation answers what gongji should answer: a value, or a Refused(code, reason), checked in the
order the contract gives them. No I/O; the state machine in test_model.py drives the real server and
this side by side.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from gongji.domain.bill import Parts, WhollySelfPaid
from gongji.domain.waterfall import BillSplit, Split, WalletOrder, refund_split, split_bill

EMPLOYEE, RESIDENT = "EMPLOYEE", "RESIDENT"
ACTIVE, SUSPENDED, TERMINATED = "ACTIVE", "SUSPENDED", "TERMINATED"
SPOUSE, PARENT, CHILD, SIBLING, OTHER = "SPOUSE", "PARENT", "CHILD", "SIBLING", "OTHER"
GRANDPARENT, GRANDCHILD = "GRANDPARENT", "GRANDCHILD"
# The default region policy since 2024: the close relatives; a grandparent is 24 full years older.
CLOSE_RELATIVES = (SPOUSE, PARENT, CHILD, SIBLING, GRANDPARENT, GRANDCHILD)
GRANDPARENT_GAP_YEARS = 24
FAMILY_BOUND_MEMBERS_MAX = 5
AMOUNT_FEN_MAX = 100_000_000  # one settlement: at most 1,000,000 yuan
FACE_VERIFICATION_AGE_OVER = 16
PREMIUM_YEAR_MIN = 2024  # the first contribution year a personal account may pay (国办发〔2024〕38号)
# 医疗类别 (med_type) codes gongji settles, and the 险种类型 (insutype) of each scheme.
MED_TYPES = ("11", "13", "14", "21", "41")
INSUTYPES = {EMPLOYEE: "310", RESIDENT: "390"}
AMOUNT, PARTS = "AMOUNT", "PARTS"  # how a settlement read its bill
# The 医保钱包's published limits (2025), which every region of the model keeps: 3 sends a China calendar
# day per sender whatever became of them, 2,000 元 each, none from 22:00 to 06:00 China time, and an
# unaccepted transfer back to its sender at 06:00 China time the next day.
CHINA_TIME = dt.timezone(dt.timedelta(hours=8))  # China keeps no summer time
SENDS_PER_DAY = 3
SEND_MAX_FEN = 200_000
PENDING, POSTED, VOIDED, EXPIRED = "PENDING", "POSTED", "VOIDED", "EXPIRED"
# Holds at the till: a holding Quote sets its split aside for 1 to 300 s by the service's clock; then
# exactly one of these (EXPIRED as a transfer's).
CAPTURED, RELEASED = "CAPTURED", "RELEASED"
HOLD_SECONDS_MAX = 300
# Where a patient's wallet pays at settlement, by the patient's region policy (the model's reading of
# it): the sources in the order they pay, cash last. A region that says nothing: after the own account,
# before mutual aid (the patient's own money before a relative's).
OWN, WALLET, MUTUAL_AID = "own", "wallet", "mutual_aid"
WALLET_ORDERS = {
    "BEFORE_ACCOUNT": (WALLET, OWN, MUTUAL_AID),
    "AFTER_ACCOUNT": (OWN, WALLET, MUTUAL_AID),
    "AFTER_MUTUAL_AID": (OWN, MUTUAL_AID, WALLET),
}
DEFAULT_WALLET_ORDER = "AFTER_ACCOUNT"


@dataclass(frozen=True)
class Refused:
    code: str
    reason: str


@dataclass
class Person:
    person_id: str
    scheme: str
    status: str
    region: str
    birth: dt.date
    # Opened when first employee-insured, and kept (with its money) whatever the scheme becomes.
    has_account: bool = False
    balance_fen: int = 0


@dataclass
class Grant:
    authorizer: str
    beneficiary: str
    relationship: str
    live: bool = True
    cap: int | None = None  # the authorizer's yearly cap; None: none
    used: int = 0  # what it paid this year, net of refunds (an example runs within one year)


@dataclass
class Binding:
    holder: str
    member: str
    live: bool = True


@dataclass
class Voucher:
    person: str
    requester: str
    binding: Binding | None  # the binding it was issued under, for a holder's voucher
    used: bool = False
    expired: bool = False
    picked: Grant | None = None  # the grant the patient picked in the app, carried by the voucher
    card: bool = False  # an ID card read at the counter: names its holder, never used up nor expired


@dataclass
class Settlement:
    institution: str
    request_id: str
    content: tuple[object, ...]  # what makes a retry "the same request"
    patient: str
    authorizer: str | None
    paid: Split
    balc_fen: int
    bill: Bill
    parts: BillSplit  # what each source paid of each part
    insutype: str  # the patient's, at the time
    refunded: Split = field(default_factory=lambda: Split(0, 0, 0))
    reversed: bool = False
    settlement_id: str = ""  # as the server named it
    grant: Grant | None = None  # the grant mutual aid was drawn on
    limited_by: str | None = None  # GRANT_CAP when the grant's cap held mutual aid back
    wallet_balc_fen: int | None = None  # the wallet's balance after; None: no wallet, or the account not used
    reversal: Split | None = None  # what its reversal (2601) gave back: all that was left; None: none

    @property
    def left(self) -> Split:
        return _minus(self.paid, self.refunded)


@dataclass(frozen=True)
class Bill:
    """A bill as the POS sent it: the amount, and its parts (None: the amount only), the kind of care
    and the insutype it settles under (None: not said)."""

    amount_fen: int
    parts: Parts | None = None
    med_type: str | None = None
    insutype: str | None = None

    @property
    def reading(self) -> str:
        return AMOUNT if self.parts is None else PARTS

    @property
    def read(self) -> Parts:
        """The bill as gongji reads it: sent as its amount only, all of it is within the policy scope."""
        return Parts(self.amount_fen) if self.parts is None else self.parts


@dataclass
class Quoted:
    paid: Split
    authorizer: str | None  # drawn on; None when mutual aid paid nothing
    balc_fen: int
    grant: Grant | None  # drawn on
    limited_by: str | None
    parts: BillSplit
    insutype: str  # the patient's
    wallet_balc_fen: int | None  # the wallet's balance after; None: no wallet, or the account not used


@dataclass
class Hold:
    """A split held at the till by a Quote (docs/domain.md, "Holds at the till"), and what became of it."""

    institution: str
    request_id: str
    content: tuple[object, ...]  # patient, authorizer, use_account, bill: what the capture must ask again
    quoted: Quoted  # the split held, as the Quote split it
    created_at: dt.datetime
    expires_at: dt.datetime
    state: str = PENDING
    resolved_at: dt.datetime | None = None
    settlement: Settlement | None = None  # the one that captured it
    hold_id: str = ""  # as the server named it

    @property
    def patient(self) -> str:
        patient = self.content[0]
        assert isinstance(patient, str)
        return patient

    @property
    def paid(self) -> Split:
        return self.quoted.paid


@dataclass
class Cancel:
    content: tuple[str, int]
    refund: Split
    reversed: bool = False  # taken back by a reversal of the Cancel (2601)


@dataclass
class Premium:
    """A relative's resident premium paid from a personal account, as the app backend asked for it."""

    content: tuple[str, str, int]  # payer, beneficiary, year: what makes a retry "the same request"
    amount_fen: int
    balance_after_fen: int  # the payer's, right after the payment
    refund_balance_fen: int | None = None  # the payer's, right after the refund; None: not refunded
    payment_id: str = ""  # as the server named it

    @property
    def refunded(self) -> bool:
        return self.refund_balance_fen is not None


@dataclass
class Wallet:
    opened_at: dt.datetime
    balance_fen: int = 0


@dataclass
class Transfer:
    """A 医保钱包 transfer as the app backend sent it, and what became of it."""

    request_id: str
    sender: str
    recipient: str
    relationship: str
    amount_fen: int
    sent_at: dt.datetime
    state: str = PENDING
    resolved_at: dt.datetime | None = None
    transfer_id: str = ""  # as the server named it

    @property
    def content(self) -> tuple[str, int, str]:
        """What makes a retry "the same request"."""
        return self.recipient, self.amount_fen, self.relationship

    @property
    def due_at(self) -> dt.datetime:
        """06:00 China time, the day after it was sent (China's calendar day)."""
        day = self.sent_at.astimezone(CHINA_TIME).date() + dt.timedelta(days=1)
        return dt.datetime(day.year, day.month, day.day, 6, tzinfo=CHINA_TIME)


def china_day(t: dt.datetime) -> dt.date:
    return t.astimezone(CHINA_TIME).date()


def quiet(t: dt.datetime) -> bool:
    """From 22:00 to 06:00 China time no transfer is sent."""
    return not 6 <= t.astimezone(CHINA_TIME).hour < 22


def _plus(a: Split, b: Split) -> Split:
    return Split(
        a.acct_pay_fen + b.acct_pay_fen,
        a.acct_mulaid_pay_fen + b.acct_mulaid_pay_fen,
        a.psn_cash_pay_fen + b.psn_cash_pay_fen,
        a.wallet_pay_fen + b.wallet_pay_fen,
    )


def _minus(a: Split, b: Split) -> Split:
    return Split(
        a.acct_pay_fen - b.acct_pay_fen,
        a.acct_mulaid_pay_fen - b.acct_mulaid_pay_fen,
        a.psn_cash_pay_fen - b.psn_cash_pay_fen,
        a.wallet_pay_fen - b.wallet_pay_fen,
    )


def age_on(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def plausible(a: Person, b: Person, relationship: str) -> bool:
    """Whether the birth dates allow `relationship`, read from a's side (a grant's authorizer, a
    transfer's sender): a CHILD is younger, a PARENT older, and grandparents 24 full years older."""
    younger = relationship in (CHILD, GRANDCHILD)
    if (younger and not b.birth > a.birth) or (relationship in (PARENT, GRANDPARENT) and not b.birth < a.birth):
        return False
    if relationship in (GRANDPARENT, GRANDCHILD):
        elder, junior = (a.birth, b.birth) if younger else (b.birth, a.birth)
        return age_on(elder, junior) >= GRANDPARENT_GAP_YEARS
    return True


class Model:
    def __init__(self, today: dt.date) -> None:
        self.today = today
        self.people: dict[str, Person] = {}
        self.grants: list[Grant] = []  # in creation order: the oldest live grant is drawn on first
        self.bindings: list[Binding] = []
        self.vouchers: dict[str, Voucher] = {}
        self.settlements: dict[tuple[str, str], Settlement] = {}  # (institution, request id)
        self.reversals: dict[tuple[str, str], Settlement | None] = {}
        self.cancels: dict[tuple[str, str], Cancel] = {}
        self.cancel_reversals: dict[tuple[str, str], Cancel | None] = {}  # by the Cancel's request id
        self.credits: dict[str, tuple[tuple[str, int], int]] = {}  # request id -> content, balance after
        # (province or 统筹区, year) -> premium, first and last day of collection
        self.premium_rates: dict[tuple[str, int], tuple[int, dt.date, dt.date]] = {}
        self.premiums: dict[str, Premium] = {}  # request id -> the payment it made
        # 统筹区 -> (yearly cap per beneficiary, floor under an authorizer), by region policy
        self.caps: dict[str, tuple[int | None, int | None]] = {}
        self.ben_used: dict[str, int] = {}  # beneficiary -> mutual aid received this year, net of refunds
        # 统筹区 -> med_type -> (the personal account, mutual aid) may pay its wholly self-paid items, by
        # region policy; a kind of care without a rule: both may.
        self.wholly: dict[str, dict[str, tuple[bool, bool]]] = {}
        # 统筹区 -> where a patient's wallet pays (WALLET_ORDERS), by region policy; none: the default.
        self.wallet_orders: dict[str, str] = {}
        # The 医保钱包: the model's clock (the server's follows it), the open wallets, and every transfer
        # sent, by (sender, request id), in the order sent.
        self.now = dt.datetime(2032, 1, 1, 10, tzinfo=CHINA_TIME)
        self.wallets: dict[str, Wallet] = {}
        self.transfers: dict[tuple[str, str], Transfer] = {}
        self.holds: dict[tuple[str, str], Hold] = {}  # (institution, the holding Quote's request id)

    # ---- people and accounts ---------------------------------------------------------------------
    def enroll(self, pid: str, scheme: str, status: str, region: str, birth: dt.date) -> int:
        """Create or change a person; answer how many grants ended by the change."""
        person = self.people.get(pid)
        if person is None:
            self.people[pid] = Person(pid, scheme, status, region, birth, has_account=scheme == EMPLOYEE)
            return 0
        person.scheme, person.status, person.region = scheme, status, region
        person.has_account |= scheme == EMPLOYEE
        ended = 0
        for g in self._live_grants_of(pid):
            a, b = self.people[g.authorizer], self.people[g.beneficiary]
            # A grant ends by itself when either side stops being ACTIVE, the authorizer stops being
            # employee-insured, or the two leave the grant's scope (the default: the same province).
            if a.status != ACTIVE or b.status != ACTIVE or a.scheme != EMPLOYEE or a.region[:2] != b.region[:2]:
                g.live = False
                ended += 1
        return ended

    def _live_grants_of(self, pid: str) -> list[Grant]:
        return [g for g in self.grants if g.live and pid in (g.authorizer, g.beneficiary)]

    def account(self, pid: str) -> tuple[str, str, bool, int, int]:
        """GetAccount: scheme, status, has_personal_account, balance_fen (0 when it has none), and held_fen:
        what pending holds took from the account, as the patient's own or as the authorizer's."""
        p = self.people[pid]
        shown = p.scheme == EMPLOYEE
        held = sum(h.paid.acct_pay_fen for h in self._pending_holds() if h.patient == pid) + sum(
            h.paid.acct_mulaid_pay_fen for h in self._pending_holds() if h.quoted.authorizer == pid
        )
        return p.scheme, p.status, shown, p.balance_fen if shown else 0, held

    def credit(self, request_id: str, pid: str, amount_fen: int) -> Refused | tuple[int, bool]:
        """(balance after, replayed). A replay answers the balance right after the original."""
        person = self.people.get(pid)
        if person is None:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        known = self.credits.get(request_id)
        if known is not None:
            if known[0] != (pid, amount_fen):
                return Refused("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
            return known[1], True
        if not person.has_account:
            return Refused("FAILED_PRECONDITION", "NOT_EMPLOYEE_INSURED")
        person.balance_fen += amount_fen
        self.credits[request_id] = ((pid, amount_fen), person.balance_fen)
        return person.balance_fen, False

    # ---- family mutual aid -----------------------------------------------------------------------
    def grant(self, authorizer: str, beneficiary: str, relationship: str) -> Refused | bool:
        """Whether the pair already had a live grant (it is kept as it was)."""
        if authorizer == beneficiary:
            return Refused("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        a, b = self.people.get(authorizer), self.people.get(beneficiary)
        if a is None:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        if b is None:
            return Refused("FAILED_PRECONDITION", "BENEFICIARY_NOT_INSURED")  # not enrolled: not insured
        refusal = self._grant_refusal(a, b, relationship)
        if refusal is not None:
            return refusal
        if any(g.live and (g.authorizer, g.beneficiary) == (authorizer, beneficiary) for g in self.grants):
            return True
        self.grants.append(Grant(authorizer, beneficiary, relationship))
        return False

    @staticmethod
    def _grant_refusal(a: Person, b: Person, relationship: str) -> Refused | None:
        def no(reason: str) -> Refused:
            return Refused("FAILED_PRECONDITION", reason)

        if a.status != ACTIVE:
            return no("PERSON_NOT_ACTIVE")
        if a.scheme != EMPLOYEE:
            return no("NOT_EMPLOYEE_INSURED")
        if b.status == TERMINATED:
            return no("BENEFICIARY_NOT_INSURED")
        if b.status != ACTIVE:
            return no("PERSON_NOT_ACTIVE")
        if relationship not in CLOSE_RELATIVES:  # the default region policy
            return no("RELATIONSHIP_NOT_ALLOWED")
        if not plausible(a, b, relationship):
            return no("RELATIONSHIP_IMPLAUSIBLE")
        if a.region[:2] != b.region[:2]:
            return no("REGION_OUT_OF_SCOPE")
        return None

    def set_grant_cap(self, authorizer: str, beneficiary: str, cap: int | None, requester: str) -> Refused | Grant:
        if requester != authorizer:
            return Refused("PERMISSION_DENIED", "NOT_ALLOWED")
        for g in self.grants:
            if g.live and (g.authorizer, g.beneficiary) == (authorizer, beneficiary):
                g.cap = cap
                return g
        return Refused("FAILED_PRECONDITION", "GRANT_NOT_FOUND")

    def revoke(self, authorizer: str, beneficiary: str, requester: str) -> Refused | None:
        if requester not in (authorizer, beneficiary):
            return Refused("PERMISSION_DENIED", "NOT_ALLOWED")
        for g in self.grants:
            if g.live and (g.authorizer, g.beneficiary) == (authorizer, beneficiary):
                g.live = False
                return None
        return Refused("FAILED_PRECONDITION", "GRANT_NOT_FOUND")

    # ---- kinship binding and vouchers ------------------------------------------------------------
    def _live_binding(self, holder: str, member: str) -> Binding | None:
        return next((b for b in self.bindings if b.live and (b.holder, b.member) == (holder, member)), None)

    def bind(self, holder: str, member: str, *, face_verified: bool, identity_matches: bool) -> Refused | None:
        if holder == member:
            return Refused("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        h, m = self.people.get(holder), self.people.get(member)
        if h is None or m is None:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        if h.status != ACTIVE:
            return Refused("FAILED_PRECONDITION", "PERSON_NOT_ACTIVE")
        if not identity_matches:
            return Refused("FAILED_PRECONDITION", "IDENTITY_MISMATCH")
        if m.status == TERMINATED:
            return Refused("FAILED_PRECONDITION", "PERSON_NOT_ACTIVE")
        if age_on(m.birth, self.today) > FACE_VERIFICATION_AGE_OVER and not face_verified:
            return Refused("FAILED_PRECONDITION", "FACE_VERIFICATION_REQUIRED")
        if self._live_binding(holder, member) is not None:
            return None  # binding again is idempotent
        if sum(b.live and b.holder == holder for b in self.bindings) >= FAMILY_BOUND_MEMBERS_MAX:
            return Refused("RESOURCE_EXHAUSTED", "FAMILY_LIMIT_REACHED")
        self.bindings.append(Binding(holder, member))
        return None

    def unbind(self, holder: str, member: str) -> Refused | None:
        if not any((b.holder, b.member) == (holder, member) for b in self.bindings):
            return Refused("NOT_FOUND", "BINDING_NOT_FOUND")
        live = self._live_binding(holder, member)
        if live is not None:
            live.live = False
        return None

    def _live_grant(self, authorizer: str, beneficiary: str) -> Grant | None:
        return next(
            (g for g in self.grants if g.live and (g.authorizer, g.beneficiary) == (authorizer, beneficiary)), None
        )

    def issue_voucher(self, person: str, requester: str, picked: str | None = None) -> Refused | None:
        if picked == person:
            return Refused("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        p = self.people.get(person)
        if p is None:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        if requester != person:
            if self._live_binding(requester, person) is None:
                return Refused("PERMISSION_DENIED", "NOT_ALLOWED")
            if self.people[requester].status != ACTIVE:
                return Refused("FAILED_PRECONDITION", "PERSON_NOT_ACTIVE")
        if p.status != ACTIVE:
            return Refused("FAILED_PRECONDITION", "PERSON_NOT_ACTIVE")
        if picked is not None and self._live_grant(picked, person) is None:
            return Refused("FAILED_PRECONDITION", "GRANT_NOT_FOUND")
        return None

    def card(self, holder: str) -> str:
        """The key under which an ID card of `holder` read at the counter is judged like a voucher."""
        key = f"card:{holder}"
        self.vouchers.setdefault(key, Voucher(holder, holder, None, card=True))
        return key

    def issued(
        self, token: str, person: str, requester: str, *, expired: bool = False, picked: str | None = None
    ) -> None:
        binding = None if requester == person else self._live_binding(requester, person)
        grant = None if picked is None else self._live_grant(picked, person)
        assert picked is None or grant is not None
        self.vouchers[token] = Voucher(person, requester, binding, expired=expired, picked=grant)

    def _voucher_refusal(self, token: str, patient: str) -> Refused | None:
        v = self.vouchers.get(token)
        if v is None:
            return Refused("FAILED_PRECONDITION", "VOUCHER_INVALID")
        if v.person != patient:
            return Refused("PERMISSION_DENIED", "VOUCHER_PATIENT_MISMATCH")  # the real-name rule
        if v.used:
            return Refused("FAILED_PRECONDITION", "VOUCHER_ALREADY_USED")
        if v.expired:
            return Refused("FAILED_PRECONDITION", "VOUCHER_EXPIRED")
        if v.binding is not None and not v.binding.live:
            return Refused("FAILED_PRECONDITION", "VOUCHER_INVALID")  # a holder's voucher dies with the binding
        return None

    # ---- region policy on wholly self-paid items -------------------------------------------------
    def set_wholly_self_paid_rules(
        self, region: str, rules: list[tuple[str, bool, bool]], wallet_order: str = DEFAULT_WALLET_ORDER
    ) -> Refused | None:
        """A region's rules (med_type, account pays, mutual aid pays), replacing its old ones: one per
        med_type, and mutual aid pays only where the account does (it is personal-account money too). The
        policy set with them says where its patients' wallets pay (WALLET_ORDERS); a refused policy
        changes neither."""
        med_types = [m for m, _, _ in rules]
        if len(set(med_types)) < len(med_types) or any(mutual and not account for _, account, mutual in rules):
            return Refused("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        assert wallet_order in WALLET_ORDERS, wallet_order
        self.wholly[region] = {m: (account, mutual) for m, account, mutual in rules}
        self.wallet_orders[region] = wallet_order
        return None

    def _who_pays_wholly(self, region: str, med_type: str | None) -> WhollySelfPaid:
        account, mutual = self.wholly.get(region, {}).get(med_type or "", (True, True))
        return WhollySelfPaid(account, mutual)

    # ---- settlement ------------------------------------------------------------------------------
    def _split(
        self, patient: str, bill: Bill, authorizer: str | None, use_account: bool, picked: Grant | None
    ) -> Refused | Quoted:
        """The waterfall: own account, the patient's wallet and the picked (in the app), else the named,
        else the oldest live grant's authorizer, no more than the grant's yearly cap, the beneficiary's
        region's yearly cap and the authorizer's region's floor leave (the tightest named, on a tie the
        grant's, the beneficiary's, the floor), in the order the patient's region says
        (WALLET_ORDERS), then cash. Without the personal account, neither the wallet nor mutual aid pays:
        both are personal-account money."""
        p = self.people[patient]
        own = p.balance_fen if p.scheme == EMPLOYEE else None
        wallet = self.wallets[patient].balance_fen if patient in self.wallets and use_account else None
        order = self.wallet_orders.get(p.region, DEFAULT_WALLET_ORDER)
        grant: Grant | None = None
        if use_account:
            held = [g for g in self.grants if g.live and g.beneficiary == patient]
            held = [g for g in held if authorizer is None or g.authorizer == authorizer]
            held = [g for g in held if picked is None or g is picked]
            if (authorizer is not None or picked is not None) and not held:
                return Refused("FAILED_PRECONDITION", "GRANT_NOT_FOUND")
            grant = held[0] if held else None
        mulaid = self.people[grant.authorizer].balance_fen if grant else None
        limit: str | None = None
        if grant is not None and mulaid is not None:
            ben_cap = self.caps.get(p.region, (None, None))[0]
            floor = self.caps.get(self.people[grant.authorizer].region, (None, None))[1]
            limits = [
                ("GRANT_CAP", None if grant.cap is None else max(grant.cap - grant.used, 0)),
                ("BENEFICIARY_CAP", None if ben_cap is None else max(ben_cap - self.ben_used.get(patient, 0), 0)),
                ("AUTHORIZER_FLOOR", max(mulaid - floor, 0) if floor else None),
            ]
            room = min([mulaid, *(v for _, v in limits if v is not None)])
            limit = next((name for name, v in limits if v is not None and v == room < mulaid), None)
            mulaid = room
        wholly = self._who_pays_wholly(p.region, bill.med_type)
        parts = split_bill(
            bill.read,
            own if use_account else None,
            mulaid,
            use_personal_account=use_account,
            wholly=wholly,
            wallet_balance_fen=wallet,
            wallet_order=WalletOrder(order),
        )
        balances = {OWN: own if use_account else None, WALLET: wallet, MUTUAL_AID: mulaid}
        self._check_split(bill.read, parts, balances, WALLET_ORDERS[order], wholly)
        paid = parts.totals
        # balc is the patient's own balance after the settlement, used or not (0 without an account).
        balc = (own or 0) - paid.acct_pay_fen
        wallet_balc = None if wallet is None else wallet - paid.wallet_pay_fen
        drawn = grant if paid.acct_mulaid_pay_fen else None
        # A limit held mutual aid back only when cash paid some of what mutual aid may pay.
        cash = parts.cash
        held_back = cash.in_scope_fen + cash.over_limit_fen + (cash.wholly_self_paid_fen if wholly.mutual_aid else 0)
        limited_by = limit if held_back else None
        return Quoted(
            paid,
            drawn.authorizer if drawn else None,
            balc,
            drawn,
            limited_by,
            parts,
            INSUTYPES[p.scheme],
            wallet_balc,
        )

    @staticmethod
    def _check_split(
        bill: Parts, paid: BillSplit, balances: dict[str, int | None], order: tuple[str, ...], wholly: WhollySelfPaid
    ) -> None:
        """The rules of the split, said simply, whatever order the waterfall takes the parts in: each
        source pays only what it may and has, the four add up to the bill part by part, and the sources
        pay, in `order`, as much as they may. The own account and the wallet (personal-account money
        both) may pay the same parts; mutual aid may pay no more of them, and so what either of them
        pays before mutual aid takes from what mutual aid may pay only beyond the wholly self-paid items
        they alone may pay, which they pay first."""
        by_source = {OWN: paid.own, WALLET: paid.wallet, MUTUAL_AID: paid.mutual_aid}
        fields = ("in_scope_fen", "over_limit_fen", "wholly_self_paid_fen")
        for part in fields:
            shares = [getattr(p, part) for p in (*by_source.values(), paid.cash)]
            assert min(shares) >= 0 and sum(shares) == getattr(bill, part), (part, bill, paid)
        assert wholly.account or paid.own.wholly_self_paid_fen == paid.wallet.wholly_self_paid_fen == 0
        assert wholly.mutual_aid or paid.mutual_aid.wholly_self_paid_fen == 0
        covered = bill.in_scope_fen + bill.over_limit_fen
        may = {
            OWN: covered + (bill.wholly_self_paid_fen if wholly.account else 0),
            WALLET: covered + (bill.wholly_self_paid_fen if wholly.account else 0),
            MUTUAL_AID: covered + (bill.wholly_self_paid_fen if wholly.mutual_aid else 0),
        }
        only_accounts = bill.wholly_self_paid_fen if wholly.account and not wholly.mutual_aid else 0
        for i, source in enumerate(order):
            # What the sources before it paid of what it may pay: all they paid (mutual aid pays only
            # what the accounts may), but for mutual aid the wholly self-paid items only the accounts may
            # pay, which they paid first.
            before = sum(by_source[s].fen for s in order[:i])
            if source == MUTUAL_AID:
                before -= min(before, only_accounts)
            assert by_source[source].fen == min(balances[source] or 0, max(may[source] - before, 0)), (
                source,
                order,
                bill,
                paid,
                balances,
            )

    def _payment_refusal(
        self, voucher: str | None, patient: str, bill: Bill, authorizer: str | None, hold_seconds: int = 0
    ) -> Refused | None:
        """What is refused before the database: malformed fields (INVALID_AMOUNT when the amount, or the
        parts that must add up to it, is all that is wrong; a hold longer than allowed is not about the
        amount), then a voucher that is not genuine."""
        amount_only = []  # per malformed field: whether it is about the amount
        if authorizer == patient:
            amount_only.append(False)
        if not 0 <= hold_seconds <= HOLD_SECONDS_MAX:
            amount_only.append(False)
        if not 0 < bill.amount_fen <= AMOUNT_FEN_MAX:
            amount_only.append(True)
        if bill.parts is not None:
            parts = (bill.parts.in_scope_fen, bill.parts.over_limit_fen, bill.parts.wholly_self_paid_fen)
            amount_only += [True for part in parts if not 0 <= part <= AMOUNT_FEN_MAX]
            if sum(parts) != bill.amount_fen:
                amount_only.append(True)
            if bill.med_type is None:
                amount_only.append(False)  # the region's rules are per med_type
        if amount_only:
            return Refused("INVALID_ARGUMENT", "INVALID_AMOUNT" if all(amount_only) else "INVALID_ARGUMENT")
        if voucher is None:
            return Refused("FAILED_PRECONDITION", "VOUCHER_INVALID")  # its signature does not verify
        return None

    def quote(
        self, voucher: str | None, patient: str, bill: Bill, authorizer: str | None, use_account: bool
    ) -> Refused | Quoted:
        refusal = self._payment_refusal(voucher, patient, bill, authorizer)
        if refusal is not None:
            return refusal
        assert voucher is not None
        refusal = self._presented_refusal(voucher, patient, bill, authorizer)
        if refusal is not None:
            return refusal
        return self._split(patient, bill, authorizer, use_account, self.vouchers[voucher].picked)

    def _presented_refusal(self, voucher: str, patient: str, bill: Bill, authorizer: str | None) -> Refused | None:
        """The patient and what they presented, in the contract's order: enrolled, the voucher (the
        real-name rule first), ACTIVE, the terminal's authorizer against the patient's pick in the app,
        and the insutype the terminal said."""
        if patient not in self.people:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        refusal = self._voucher_refusal(voucher, patient)
        if refusal is not None:
            return refusal
        if self.people[patient].status != ACTIVE:
            return Refused("FAILED_PRECONDITION", "PERSON_NOT_ACTIVE")
        picked = self.vouchers[voucher].picked
        if picked is not None and authorizer is not None and authorizer != picked.authorizer:
            return Refused("FAILED_PRECONDITION", "VOUCHER_AUTHORIZER_MISMATCH")  # the patient's pick wins
        if bill.insutype is not None and bill.insutype != INSUTYPES[self.people[patient].scheme]:
            return Refused("FAILED_PRECONDITION", "INSUTYPE_MISMATCH")
        return None

    def settle(
        self,
        institution: str,
        request_id: str,
        voucher: str | None,
        patient: str,
        bill: Bill,
        authorizer: str | None,
        use_account: bool,
        hold_id: str | None = None,
    ) -> Refused | tuple[Settlement, bool]:
        """(settlement, replayed). With `hold_id`, the settlement captures that hold (_capture)."""
        refusal = self._payment_refusal(voucher, patient, bill, authorizer)
        if refusal is not None:
            return refusal
        assert voucher is not None
        key = (institution, request_id)
        if key in self.reversals:
            return Refused("FAILED_PRECONDITION", "ALREADY_REVERSED")
        # A capture's request is its content and the hold it names.
        content: tuple[object, ...] = (patient, authorizer, use_account, bill)
        if hold_id is not None:
            content += (hold_id,)
        known = self.settlements.get(key)
        if known is not None:
            if known.content != content:
                return Refused("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
            return known, True
        if hold_id is not None:
            return self._capture(institution, request_id, voucher, content, hold_id)
        quoted = self.quote(voucher, patient, bill, authorizer, use_account)
        if isinstance(quoted, Refused):
            return quoted
        paid, drawn_on = quoted.paid, quoted.authorizer
        self.people[patient].balance_fen -= paid.acct_pay_fen
        if paid.wallet_pay_fen:
            self.wallets[patient].balance_fen -= paid.wallet_pay_fen
        if quoted.grant is not None and drawn_on is not None:
            self.people[drawn_on].balance_fen -= paid.acct_mulaid_pay_fen
            quoted.grant.used += paid.acct_mulaid_pay_fen
            self.ben_used[patient] = self.ben_used.get(patient, 0) + paid.acct_mulaid_pay_fen
        self.vouchers[voucher].used = not self.vouchers[voucher].card
        s = Settlement(
            institution,
            request_id,
            content,
            patient,
            drawn_on,
            paid,
            quoted.balc_fen,
            bill,
            quoted.parts,
            quoted.insutype,
            grant=quoted.grant,
            limited_by=quoted.limited_by,
            wallet_balc_fen=quoted.wallet_balc_fen,
        )
        self.settlements[key] = s
        return s, False

    # ---- holds at the till ----------------------------------------------------------------------
    def _pending_holds(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.state == PENDING]

    def by_hold_id(self, hold_id: str) -> Hold | None:
        return next((h for h in self.holds.values() if h.hold_id == hold_id), None)

    def hold(
        self,
        institution: str,
        request_id: str,
        voucher: str | None,
        patient: str,
        bill: Bill,
        authorizer: str | None,
        use_account: bool,
        seconds: int,
    ) -> Refused | tuple[Hold, bool]:
        """A Quote that holds its split for `seconds`: (the hold as it is now, replayed). The checks and
        the split of a settlement, the request's fields first; a retry (same institution, request id and
        content, whatever it presents now) answers the hold again, other content is refused. The money
        leaves the own account, the wallet and the authorizer's account at once, and the mutual aid held
        counts towards the caps; the voucher is not used up."""
        refusal = self._payment_refusal(voucher, patient, bill, authorizer, seconds)
        if refusal is not None:
            return refusal
        assert voucher is not None
        key = (institution, request_id)
        content = (patient, authorizer, use_account, bill)
        known = self.holds.get(key)
        if known is not None:
            if known.content != content:
                return Refused("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
            return known, True
        quoted = self.quote(voucher, patient, bill, authorizer, use_account)
        if isinstance(quoted, Refused):
            return quoted
        h = Hold(institution, request_id, content, quoted, self.now, self.now + dt.timedelta(seconds=seconds))
        self._move_held(h, -1)
        self.holds[key] = h
        return h, False

    def _move_held(self, h: Hold, sign: int) -> None:
        """A hold's money out of (sign -1) or back into (1) the wallet and the accounts, and its mutual
        aid counted in the caps, or no longer."""
        paid = h.paid
        self.people[h.patient].balance_fen += sign * paid.acct_pay_fen
        if paid.wallet_pay_fen:
            self.wallets[h.patient].balance_fen += sign * paid.wallet_pay_fen
        if h.quoted.grant is not None and h.quoted.authorizer is not None:
            self.people[h.quoted.authorizer].balance_fen += sign * paid.acct_mulaid_pay_fen
            h.quoted.grant.used -= sign * paid.acct_mulaid_pay_fen
            self.ben_used[h.patient] = self.ben_used.get(h.patient, 0) - sign * paid.acct_mulaid_pay_fen

    def _end_hold(self, h: Hold, state: str) -> None:
        assert h.state == PENDING and state in (RELEASED, EXPIRED)
        h.state, h.resolved_at = state, self.now
        self._move_held(h, 1)

    def held_answer(self, h: Hold) -> tuple[int, int | None, str]:
        """What a holding Quote answers beside the hold, now: the patient's balance after (as a Quote
        answers it: 0 without an account of the employee scheme), the wallet's (None without one, or
        when the account is not to be used), and the patient's insutype."""
        p = self.people[h.patient]
        use_account = h.content[2]
        balc = p.balance_fen if p.scheme == EMPLOYEE else 0
        wallet = self.wallets.get(h.patient)
        return balc, wallet.balance_fen if wallet is not None and use_account else None, INSUTYPES[p.scheme]

    def _capture(
        self, institution: str, request_id: str, voucher: str, content: tuple[object, ...], hold_id: str
    ) -> Refused | tuple[Settlement, bool]:
        """The Settle naming a hold settles exactly the split held, whatever the balances did since,
        after what the patient presented passed; the refusals in the order of
        gongji.domain.holds.capture_refusal (a hold past its time gives its money back as it is refused),
        then a grant no longer live. The patient's voucher is used up."""
        patient, authorizer, use_account, bill, _ = content
        assert isinstance(patient, str) and isinstance(bill, Bill) and isinstance(use_account, bool)
        assert authorizer is None or isinstance(authorizer, str)
        refusal = self._presented_refusal(voucher, patient, bill, authorizer)
        if refusal is not None:
            return refusal
        h = self.by_hold_id(hold_id)
        if h is None or h.institution != institution:
            return Refused("NOT_FOUND", "HOLD_NOT_FOUND")
        if h.state != PENDING:
            return Refused("FAILED_PRECONDITION", "HOLD_RESOLVED")
        if self.now >= h.expires_at:
            self._end_hold(h, EXPIRED)
            return Refused("FAILED_PRECONDITION", "HOLD_EXPIRED")
        picked, grant = self.vouchers[voucher].picked, h.quoted.grant
        if h.content != content[:4] or (picked is not None and grant is not None and picked is not grant):
            return Refused("FAILED_PRECONDITION", "HOLD_MISMATCH")
        if grant is not None and not grant.live:
            return Refused("FAILED_PRECONDITION", "GRANT_NOT_FOUND")  # revocation takes effect at once
        # The money comes back and the settlement takes it again: balances and caps stay as held.
        p = self.people[patient]
        wallet = self.wallets.get(patient)
        self.vouchers[voucher].used = not self.vouchers[voucher].card
        s = Settlement(
            institution,
            request_id,
            content,
            patient,
            h.quoted.authorizer,
            h.paid,
            # The balance after, of the account the hold took from (also after a change of scheme).
            p.balance_fen if p.scheme == EMPLOYEE or h.paid.acct_pay_fen else 0,
            bill,
            h.quoted.parts,
            INSUTYPES[p.scheme],
            grant=grant,
            limited_by=h.quoted.limited_by,
            wallet_balc_fen=wallet.balance_fen if wallet is not None and use_account else None,
        )
        self.settlements[(institution, request_id)] = s
        h.state, h.resolved_at, h.settlement = CAPTURED, self.now, s
        return s, False

    def release(self, institution: str, hold_id: str) -> Refused | tuple[Hold, bool]:
        """Its terminal gives a hold back: (the hold as it is now, replayed). Pending past its time, it
        ends EXPIRED; released or expired already, it is answered again; captured, refused."""
        h = self.by_hold_id(hold_id)
        if h is None or h.institution != institution:
            return Refused("NOT_FOUND", "HOLD_NOT_FOUND")
        if h.state == CAPTURED:
            return Refused("FAILED_PRECONDITION", "HOLD_RESOLVED")
        if h.state != PENDING:
            return h, True
        self._end_hold(h, EXPIRED if self.now >= h.expires_at else RELEASED)
        return h, False

    def expire_holds(self) -> int:
        """The expiry work: every pending hold past its time gives its money back; how many."""
        due = [h for h in self._pending_holds() if h.expires_at <= self.now]
        for h in due:
            self._end_hold(h, EXPIRED)
        return len(due)

    def by_id(self, settlement_id: str) -> Settlement | None:
        return next((s for s in self.settlements.values() if s.settlement_id == settlement_id), None)

    def _refund(self, s: Settlement, amount_fen: int) -> Split:
        back = refund_split(amount_fen, s.left)
        # Money goes back where it came from, even to an account whose grant ended or whose person is
        # no longer ACTIVE.
        self.people[s.patient].balance_fen += back.acct_pay_fen
        if back.wallet_pay_fen:
            self.wallets[s.patient].balance_fen += back.wallet_pay_fen  # a wallet that paid is open for good
        if s.authorizer is not None:
            self.people[s.authorizer].balance_fen += back.acct_mulaid_pay_fen
        if s.grant is not None:
            s.grant.used -= back.acct_mulaid_pay_fen  # the caps are given back
            self.ben_used[s.patient] -= back.acct_mulaid_pay_fen
        s.refunded = _plus(s.refunded, back)
        return back

    def cancel(
        self, institution: str, request_id: str, settlement_id: str, amount_fen: int
    ) -> Refused | tuple[Split, Settlement | None, bool]:
        """(refund, the settlement now, replayed). amount 0 refunds all that is left."""
        key = (institution, request_id)
        if key in self.cancel_reversals:
            return Refused("FAILED_PRECONDITION", "ALREADY_REVERSED")
        known = self.cancels.get(key)
        if known is not None:
            if known.content != (settlement_id, amount_fen):
                return Refused("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
            return known.refund, self.by_id(settlement_id), True
        s = self.by_id(settlement_id)
        if s is None:
            return Refused("NOT_FOUND", "SETTLEMENT_NOT_FOUND")
        if s.institution != institution:
            return Refused("PERMISSION_DENIED", "INSTITUTION_MISMATCH")
        if s.reversed:
            return Refused("FAILED_PRECONDITION", "ALREADY_REVERSED")
        amount = amount_fen or s.left.amount_fen
        if not 0 < amount <= s.left.amount_fen:
            return Refused("FAILED_PRECONDITION", "REFUND_EXCEEDS_SETTLEMENT")
        back = self._refund(s, amount)
        self.cancels[key] = Cancel((settlement_id, amount_fen), back)
        return back, s, False

    def reverse(self, institution: str, request_id: str) -> Settlement | None:
        """The settlement undone, or None when nothing had been settled under that id (a late original
        is then refused). Reversing twice answers the same."""
        key = (institution, request_id)
        if key in self.reversals:
            return self.reversals[key]
        s = self.settlements.get(key)
        if s is not None:
            if s.left.amount_fen:
                s.reversal = self._refund(s, s.left.amount_fen)
            s.reversed = True
        self.reversals[key] = s
        return s

    def reverse_cancel(self, institution: str, request_id: str) -> Refused | tuple[Cancel, Settlement] | None:
        """(the Cancel taken back, its settlement now), or None when no Cancel had been committed under
        that id (a late Cancel is then refused). Refused, moving nothing, when the settlement was
        reversed since or an account (or the patient's wallet) no longer holds its part of the refund.
        Reversing twice answers the same."""
        key = (institution, request_id)
        if key in self.cancel_reversals:
            done = self.cancel_reversals[key]
            return None if done is None else (done, self._settlement_of(done))
        c = self.cancels.get(key)
        if c is None:
            self.cancel_reversals[key] = None
            return None
        s = self._settlement_of(c)
        back = c.refund
        if s.reversed:
            return Refused("FAILED_PRECONDITION", "ALREADY_REVERSED")
        patient = self.people[s.patient]
        authorizer = self.people[s.authorizer] if s.authorizer is not None else None
        wallet = self.wallets.get(s.patient)
        if (
            back.acct_pay_fen > patient.balance_fen
            or (
                back.acct_mulaid_pay_fen > 0
                and (authorizer is None or back.acct_mulaid_pay_fen > authorizer.balance_fen)
            )
            or (back.wallet_pay_fen > 0 and (wallet is None or back.wallet_pay_fen > wallet.balance_fen))
        ):
            return Refused("FAILED_PRECONDITION", "REFUND_ALREADY_SPENT")
        patient.balance_fen -= back.acct_pay_fen
        if wallet is not None:
            wallet.balance_fen -= back.wallet_pay_fen
        if authorizer is not None:
            authorizer.balance_fen -= back.acct_mulaid_pay_fen
        if s.grant is not None:
            s.grant.used += back.acct_mulaid_pay_fen  # the caps count it again
            self.ben_used[s.patient] += back.acct_mulaid_pay_fen
        s.refunded = _minus(s.refunded, back)
        c.reversed = True
        self.cancel_reversals[key] = c
        return c, s

    def _settlement_of(self, c: Cancel) -> Settlement:
        s = self.by_id(c.content[0])
        assert s is not None, "a committed Cancel refunded a settlement"
        return s

    # ---- resident premiums paid from a relative's account -----------------------------------------
    def set_premium_rate(self, region_key: str, year: int, amount_fen: int, opens: dt.date, closes: dt.date) -> None:
        self.premium_rates[(region_key, year)] = (amount_fen, opens, closes)

    def pay_premium(self, request_id: str, payer: str, beneficiary: str, year: int) -> Refused | tuple[Premium, bool]:
        """(payment, replayed), or the first rule broken. The whole premium from the payer's account."""
        if payer == beneficiary or not PREMIUM_YEAR_MIN <= year <= self.today.year + 1:
            return Refused("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        known = self.premiums.get(request_id)
        if known is not None:
            if known.content != (payer, beneficiary, year):
                return Refused("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
            return known, True
        p, b = self.people.get(payer), self.people.get(beneficiary)

        def no(reason: str) -> Refused:
            return Refused("FAILED_PRECONDITION", reason)

        if p is None or b is None:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        if p.status != ACTIVE:
            return no("PERSON_NOT_ACTIVE")
        if p.scheme != EMPLOYEE or not p.has_account:
            return no("NOT_EMPLOYEE_INSURED")
        if b.scheme != RESIDENT:
            return no("BENEFICIARY_NOT_RESIDENT")
        if not any(g.live and (g.authorizer, g.beneficiary) == (payer, beneficiary) for g in self.grants):
            return no("GRANT_NOT_FOUND")
        rate = self.premium_rates.get((b.region, year)) or self.premium_rates.get((b.region[:2], year))
        if rate is None:
            return no("PREMIUM_NOT_SET")
        amount_fen, opens, closes = rate
        if not opens <= self.today <= closes:
            return no("PREMIUM_WINDOW_CLOSED")
        if any(x.content[1:] == (beneficiary, year) and not x.refunded for x in self.premiums.values()):
            return Refused("ALREADY_EXISTS", "PREMIUM_ALREADY_PAID")
        if p.balance_fen < amount_fen:
            return no("INSUFFICIENT_BALANCE")
        p.balance_fen -= amount_fen
        paid = Premium((payer, beneficiary, year), amount_fen, p.balance_fen)
        self.premiums[request_id] = paid
        return paid, False

    def refund_premium(self, payment_id: str) -> Refused | tuple[Premium, bool]:
        """(payment, replayed). The money goes back whole to the payer, whatever became of anyone since."""
        paid = next((x for x in self.premiums.values() if x.payment_id == payment_id), None)
        if paid is None:
            return Refused("NOT_FOUND", "PREMIUM_PAYMENT_NOT_FOUND")
        if paid.refunded:
            return paid, True
        payer = self.people[paid.content[0]]
        payer.balance_fen += paid.amount_fen
        paid.refund_balance_fen = payer.balance_fen
        return paid, False

    # ---- the 医保钱包: wallets and two-phase transfers into them -------------------------------------
    def open_wallet(self, pid: str) -> Refused | tuple[Wallet, bool]:
        """(wallet, replayed): an ACTIVE person opens one; an open wallet is answered as it is, whatever
        became of its holder."""
        p = self.people.get(pid)
        if p is None:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        known = self.wallets.get(pid)
        if known is not None:
            return known, True
        if p.status != ACTIVE:
            return Refused("FAILED_PRECONDITION", "PERSON_NOT_ACTIVE")
        self.wallets[pid] = Wallet(self.now)
        return self.wallets[pid], False

    def wallet(self, pid: str) -> Refused | tuple[int, int, int]:
        """GetWallet: the balance, what PENDING transfers to it carry (past due too, until returned), and
        what its owner's pending holds at the till took from it (held_fen)."""
        w = self.wallets.get(pid)
        if w is None:
            return Refused("FAILED_PRECONDITION", "WALLET_NOT_OPEN")
        return (
            w.balance_fen,
            sum(t.amount_fen for t in self.transfers.values() if t.recipient == pid and t.state == PENDING),
            sum(h.paid.wallet_pay_fen for h in self._pending_holds() if h.patient == pid),
        )

    def send(
        self, request_id: str, sender: str, recipient: str, relationship: str, amount_fen: int
    ) -> Refused | tuple[Transfer, bool]:
        """(transfer as it is now, replayed), or the first rule broken, in the contract's order: the
        request's fields, the people, the request id, their relationship, then money and time."""
        if sender == recipient:
            return Refused("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        if not 0 < amount_fen <= AMOUNT_FEN_MAX:
            return Refused("INVALID_ARGUMENT", "INVALID_AMOUNT")
        a, b = self.people.get(sender), self.people.get(recipient)
        if a is None or b is None:
            return Refused("NOT_FOUND", "PERSON_NOT_FOUND")
        # A retry is answered by what the request id made, whatever the relationship rules say now.
        known = self.transfers.get((sender, request_id))
        if known is not None:
            if known.content != (recipient, amount_fen, relationship):
                return Refused("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
            return known, True
        refusal = self._relative_refusal(a, b, relationship)
        if refusal is not None:
            return refusal
        refusal = self._send_refusal(a, b, amount_fen)
        if refusal is not None:
            return refusal
        # The sender's pending transfer past its due time goes back first: it holds nothing back.
        for due in [t for t in self.transfers.values() if t.sender == sender and self._overdue(t)]:
            self._end(due, EXPIRED)
        a.balance_fen -= amount_fen
        t = Transfer(request_id, sender, recipient, relationship, amount_fen, self.now)
        self.transfers[(sender, request_id)] = t
        return t, False

    @staticmethod
    def _relative_refusal(a: Person, b: Person, relationship: str) -> Refused | None:
        """The default region policy: the close relatives, their birth dates agreeing, anywhere in China."""
        if relationship not in CLOSE_RELATIVES:
            return Refused("FAILED_PRECONDITION", "RELATIONSHIP_NOT_ALLOWED")
        if not plausible(a, b, relationship):
            return Refused("FAILED_PRECONDITION", "RELATIONSHIP_IMPLAUSIBLE")
        return None

    def _send_refusal(self, a: Person, b: Person, amount_fen: int) -> Refused | None:
        def no(reason: str) -> Refused:
            return Refused("FAILED_PRECONDITION", reason)

        mine = [t for t in self.transfers.values() if t.sender == a.person_id]
        if a.status != ACTIVE:
            return no("PERSON_NOT_ACTIVE")
        if a.scheme != EMPLOYEE or not a.has_account:
            return no("NOT_EMPLOYEE_INSURED")
        if b.status != ACTIVE:
            return no("PERSON_NOT_ACTIVE")
        if b.person_id not in self.wallets:
            return no("WALLET_NOT_OPEN")
        if quiet(self.now):
            return no("TRANSFER_QUIET_HOURS")
        if amount_fen > SEND_MAX_FEN:
            return no("TRANSFER_OVER_LIMIT")
        # Past its due time a transfer holds its sender's next send back no more: a send that may go
        # ahead returns it first, and its money counts towards the balance.
        if any(t.state == PENDING and not self._overdue(t) for t in mine):
            return no("TRANSFER_PENDING")
        if sum(china_day(t.sent_at) == china_day(self.now) for t in mine) >= SENDS_PER_DAY:
            return no("TRANSFER_DAILY_LIMIT")
        if a.balance_fen + sum(t.amount_fen for t in mine if self._overdue(t)) < amount_fen:
            return no("INSUFFICIENT_BALANCE")
        return None

    def _overdue(self, t: Transfer) -> bool:
        return t.state == PENDING and t.due_at <= self.now

    def by_transfer_id(self, transfer_id: str) -> Transfer | None:
        return next((t for t in self.transfers.values() if t.transfer_id == transfer_id), None)

    def resolve(self, transfer_id: str, person: str, *, accept: bool) -> Refused | tuple[Transfer, bool]:
        """The recipient accepts (or declines): (transfer as it is now, replayed). Past its due time a
        PENDING transfer goes back to its sender now, whatever the call, and an accept is refused."""
        t = self.by_transfer_id(transfer_id)
        if t is None or t.recipient != person:
            return Refused("NOT_FOUND", "TRANSFER_NOT_FOUND")
        resolved = Refused("FAILED_PRECONDITION", "TRANSFER_RESOLVED")
        if t.state == PENDING:
            if self.now >= t.due_at:
                self._end(t, EXPIRED)
                return resolved if accept else (t, False)
            self._end(t, POSTED if accept else VOIDED)
            return t, False
        if t.state == (POSTED if accept else VOIDED) or (not accept and t.state == EXPIRED):
            return t, True
        return resolved

    def expire(self) -> int:
        """The expiry work: every PENDING transfer due by now goes back; how many."""
        due = [t for t in self.transfers.values() if t.state == PENDING and t.due_at <= self.now]
        for t in due:
            self._end(t, EXPIRED)
        return len(due)

    def _end(self, t: Transfer, state: str) -> None:
        t.state, t.resolved_at = state, self.now
        if state == POSTED:
            self.wallets[t.recipient].balance_fen += t.amount_fen
        else:  # back to the sender's account, whatever became of the sender
            self.people[t.sender].balance_fen += t.amount_fen
