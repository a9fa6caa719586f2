"""AccountService: enrolment, monthly credits and balances for insurer operators; resident premiums paid from
a relative's personal account (rates, refunds and the report for operators, the payment for the app backend)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from gongji import errors, limits, metrics
from gongji.api import convert, pages
from gongji.api.app import App, Context
from gongji.api.auth import current_principal
from gongji.api.validate import CHINA, Fields, china_today
from gongji.domain.bill import MedType
from gongji.domain.eligibility import ALWAYS_REFUSED, DEFAULT_POLICY, RegionPolicy, Scope
from gongji.domain.people import DocumentType, Person, PersonStatus, Relationship, Scheme
from gongji.domain.premium import PremiumRate
from gongji.domain.vouchers import CARDS, CertType
from gongji.domain.wallet import DEFAULT_WALLET_POLICY, WalletPolicy, WalletScope
from gongji.domain.waterfall import DEFAULT_WALLET_ORDER, WalletOrder
from gongji.store import credits, ledger, people, policies, premiums
from gongji.v1 import account_pb2, account_pb2_grpc, types_pb2


def _account(view: people.AccountView) -> account_pb2.Account:
    p = view.person
    return account_pb2.Account(
        person_id=p.person_id,
        scheme=types_pb2.Scheme.Value(f"SCHEME_{p.scheme}"),
        status=types_pb2.PersonStatus.Value(f"PERSON_STATUS_{p.status}"),
        region_code=p.region_code,
        balance_fen=view.balance_fen or 0,
        has_personal_account=view.balance_fen is not None,
        transfer_pending_out_fen=view.transfer_pending_out_fen,
        held_fen=view.held_fen,
    )


# Dates a request may name where no narrower range applies.
_ANY_DAY = (dt.date(1900, 1, 1), dt.date(2999, 12, 31))


def _count_premium(paid: premiums.Paid) -> None:
    if paid.replayed:
        metrics.PREMIUM_PAYMENTS.labels("REPLAYED").inc()
        metrics.IDEMPOTENT_REPLAYS.labels("PayPremium").inc()
        return
    metrics.PREMIUM_PAYMENTS.labels("OK").inc()
    metrics.PREMIUM_PAID_FEN.inc(paid.payment.amount_fen)


class AccountService(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def Enroll(self, request: account_pb2.EnrollRequest, context: Context) -> account_pb2.EnrollResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        name = fields.text("name", request.name, limits.NAME_LEN_MAX)
        birth_date = fields.date("birth_date", request.birth_date)
        region_code = fields.region_code("region_code", request.region_code)
        scheme = fields.enum("scheme", request.scheme, convert.SCHEME_NAMES, Scheme, convert.SCHEME)
        status = fields.enum("status", request.status, convert.STATUS_NAMES, PersonStatus, convert.STATUS)
        document_type, document_number = self._document(fields, request, person_id)
        fields.done()
        assert scheme is not None
        assert status is not None
        person = Person(
            person_id, name.strip(), birth_date, region_code, scheme, status, document_type, document_number
        )
        # No document in the request: keep the one on record (a status change need not repeat it).
        keep = request.document_type == types_pb2.DOCUMENT_TYPE_UNSPECIFIED and not request.document_number
        created, ended = await people.enroll(self._app.pool, person, keep_document=keep)
        view = await people.get_account(self._app.pool, person_id)
        assert view is not None
        return account_pb2.EnrollResponse(account=_account(view), created=created, grants_ended=ended)

    @staticmethod
    def _document(
        fields: Fields, request: account_pb2.EnrollRequest, person_id: str
    ) -> tuple[DocumentType, str | None]:
        """The identity document given; unset means the resident ID card numbered person_id for a new
        person, and the document on record for an update."""
        if request.document_type == types_pb2.DOCUMENT_TYPE_UNSPECIFIED:
            if request.document_number:
                fields.bad("document_type", "is required with a document_number")
            return DocumentType.RESIDENT_ID_CARD, None
        kind = fields.enum(
            "document_type", request.document_type, convert.DOCUMENT_TYPE_NAMES, DocumentType, convert.DOCUMENT_TYPE
        )
        number = fields.document_number("document_number", request.document_number, required=False)
        if kind is DocumentType.RESIDENT_ID_CARD:
            if number and number != person_id:
                fields.bad("document_number", "a resident ID card's number is the person_id")
            return DocumentType.RESIDENT_ID_CARD, None
        if not number:
            fields.bad("document_number", "is required for this document type")
        return kind or DocumentType.RESIDENT_ID_CARD, number or None

    async def SetRegionPolicy(
        self, request: account_pb2.SetRegionPolicyRequest, context: Context
    ) -> account_pb2.SetRegionPolicyResponse:
        fields = Fields()
        p = request.policy
        fields.region_key("policy.region_key", p.region_key)
        scope = fields.enum("policy.scope", p.scope, convert.SCOPE_NAMES, Scope, convert.SCOPE)
        if len(p.allowed_relationships) > limits.POLICY_RELATIONSHIPS_MAX:
            fields.bad("policy.allowed_relationships", f"at most {limits.POLICY_RELATIONSHIPS_MAX} relationships")
            del p.allowed_relationships[limits.POLICY_RELATIONSHIPS_MAX :]
        allowed = [
            fields.enum(
                "policy.allowed_relationships", r, convert.RELATIONSHIP_NAMES, Relationship, convert.RELATIONSHIP
            )
            for r in p.allowed_relationships
        ]
        if not allowed:
            fields.bad("policy.allowed_relationships", "must list at least one relationship")
        if any(r in ALWAYS_REFUSED for r in allowed):
            fields.bad("policy.allowed_relationships", "PARENT_IN_LAW and OTHER can never receive mutual aid")
        cap = p.beneficiary_yearly_cap_fen if p.HasField("beneficiary_yearly_cap_fen") else None
        floor = p.authorizer_floor_fen if p.HasField("authorizer_floor_fen") else None
        for name, value in (("beneficiary_yearly_cap_fen", cap), ("authorizer_floor_fen", floor)):
            if value is not None and not 0 <= value <= limits.MUTUAL_AID_LIMIT_FEN_MAX:
                fields.bad(f"policy.{name}", f"must be 0 to {limits.MUTUAL_AID_LIMIT_FEN_MAX} fen, or unset for none")
        accepted = self._accepted_cards(fields, p)
        no_account, no_mutual_aid = self._wholly_self_paid_rules(fields, p)
        wallet = _wallet_policy(fields, p.wallet)
        wallet_order = (
            fields.enum(
                "policy.wallet_order", p.wallet_order, convert.WALLET_ORDER_NAMES, WalletOrder, convert.WALLET_ORDER
            )
            if p.wallet_order
            else DEFAULT_WALLET_ORDER
        )
        fields.done()
        assert scope is not None
        policy = RegionPolicy(
            scope,
            frozenset(r for r in allowed if r is not None),
            cap,
            floor,
            accepted,
            p.mutual_aid_out_of_region if p.HasField("mutual_aid_out_of_region") else True,
            p.mutual_aid_out_of_province if p.HasField("mutual_aid_out_of_province") else True,
            no_account,
            no_mutual_aid,
            wallet,
            wallet_order or DEFAULT_WALLET_ORDER,
        )
        row = await policies.set_policy(self._app.pool, p.region_key, policy, limits.REGION_POLICIES_MAX)
        if row is None:
            raise errors.RegionPolicyLimitReached(f"at most {limits.REGION_POLICIES_MAX} region policies")
        return account_pb2.SetRegionPolicyResponse(policy=convert.region_policy(row.region_key, row.policy, row))

    @staticmethod
    def _accepted_cards(fields: Fields, p: account_pb2.RegionPolicy) -> frozenset[CertType]:
        """The cards a policy accepts: every card when it lists nothing; the e-voucher is always
        accepted, so listing it changes nothing."""
        name = "policy.accepted_certificate_types"
        if len(p.accepted_certificate_types) > len(CertType):
            fields.bad(name, f"at most {len(CertType)} types")
            return CARDS
        listed = [
            fields.enum(name, c, convert.CERTIFICATE_TYPE_NAMES, CertType, convert.CERTIFICATE_TYPE)
            for c in p.accepted_certificate_types
        ]
        return frozenset(c for c in listed if c in CARDS) if listed else CARDS

    @staticmethod
    def _wholly_self_paid_rules(
        fields: Fields, p: account_pb2.RegionPolicy
    ) -> tuple[frozenset[MedType], frozenset[MedType]]:
        """The kinds of care whose wholly self-paid items the personal account may not pay, and those
        mutual aid may not pay: one rule at most per kind of care, never mutual aid without the account."""
        name = "policy.wholly_self_paid_rules"
        if len(p.wholly_self_paid_rules) > len(MedType):
            fields.bad(name, f"at most {len(MedType)} rules, one per med_type")
            return frozenset(), frozenset()
        no_account: set[MedType] = set()
        no_mutual_aid: set[MedType] = set()
        seen: set[MedType] = set()
        for i, rule in enumerate(p.wholly_self_paid_rules):
            med_type = fields.enum(
                f"{name}[{i}].med_type", rule.med_type, convert.MED_TYPE_NAMES, MedType, convert.MED_TYPE
            )
            if med_type is None:
                continue
            if med_type in seen:
                fields.bad(f"{name}[{i}].med_type", "has a rule already: one rule per med_type")
            if rule.mutual_aid_pays and not rule.account_pays:
                fields.bad(f"{name}[{i}].mutual_aid_pays", "needs account_pays: mutual aid is personal-account money")
            seen.add(med_type)
            if not rule.account_pays:
                no_account.add(med_type)
            if not rule.mutual_aid_pays:
                no_mutual_aid.add(med_type)
        return frozenset(no_account), frozenset(no_mutual_aid)

    async def ListRegionPolicies(
        self, request: account_pb2.ListRegionPoliciesRequest, context: Context
    ) -> account_pb2.ListRegionPoliciesResponse:
        rows = await policies.list_all(self._app.pool, limits.REGION_POLICIES_MAX)
        return account_pb2.ListRegionPoliciesResponse(
            policies=[convert.region_policy(r.region_key, r.policy, r) for r in rows],
            default_policy=convert.region_policy("", DEFAULT_POLICY),
        )

    async def Credit(self, request: account_pb2.CreditRequest, context: Context) -> account_pb2.CreditResponse:
        fields = Fields()
        request_id = fields.request_id("request_id", request.request_id)
        person_id = fields.person_id("person_id", request.person_id)
        amount_fen = fields.amount("amount_fen", request.amount_fen, limits.CREDIT_FEN_MAX)
        memo = fields.text("memo", request.memo, limits.MEMO_LEN_MAX, required=False)
        fields.done()
        person = await people.get_person(self._app.pool, person_id)
        if person is None:
            raise errors.PersonNotFound("no insured person with this id")
        digest = hashlib.sha256(f"{person_id}\x1f{amount_fen}\x1f{memo}".encode()).digest()
        result = await credits.credit(
            self._app.pool,
            credential_id=current_principal.get().credential_id,
            request_id=request_id,
            digest=digest,
            person_id=person_id,
            amount_fen=amount_fen,
            memo=memo,
        )
        if result.replayed:
            metrics.IDEMPOTENT_REPLAYS.labels("Credit").inc()
        return account_pb2.CreditResponse(
            credit_id=str(result.credit_id), balance_fen=result.balance_fen, replayed=result.replayed
        )

    async def GetAccount(
        self, request: account_pb2.GetAccountRequest, context: Context
    ) -> account_pb2.GetAccountResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        fields.done()
        view = await people.get_account(self._app.pool, person_id)
        if view is None:
            raise errors.PersonNotFound("no insured person with this id")
        return account_pb2.GetAccountResponse(account=_account(view))

    async def ListLedger(
        self, request: account_pb2.ListLedgerRequest, context: Context
    ) -> account_pb2.ListLedgerResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        page_size = fields.page_size(
            "page_size", request.page_size, limits.LEDGER_PAGE_SIZE_DEFAULT, limits.LEDGER_PAGE_SIZE_MAX
        )
        before = fields.entry_cursor("page_token", request.page_token)
        fields.done()
        if await people.get_person(self._app.pool, person_id) is None:
            raise errors.PersonNotFound("no insured person with this id")
        entries = await ledger.page(self._app.pool, person_id, before, page_size)
        reply = account_pb2.ListLedgerResponse(entries=[convert.ledger_entry(e) for e in entries])
        if len(entries) == page_size:
            reply.next_page_token = pages.encode(str(entries[-1].entry_id))
        return reply

    async def SetPremiumRate(
        self, request: account_pb2.SetPremiumRateRequest, context: Context
    ) -> account_pb2.SetPremiumRateResponse:
        fields = Fields()
        r = request.rate
        region_key = fields.region_key("rate.region_key", r.region_key)
        year = fields.premium_year("rate.year", r.year, china_today())
        amount_fen = fields.amount("rate.amount_fen", r.amount_fen, limits.AMOUNT_FEN_MAX)
        # The window lies in the year before the contribution year (the usual autumn collection) or in
        # the year itself: a date outside is a typing error, not a policy. (With a bad year, only the
        # dates' spelling is checked.)
        years = range(limits.PREMIUM_YEAR_MIN, china_today().year + limits.PREMIUM_YEARS_AHEAD_MAX + 1)
        first, last = (dt.date(year - 1, 1, 1), dt.date(year, 12, 31)) if year in years else _ANY_DAY
        opens_on = fields.calendar_day("rate.opens_on", r.opens_on, first, last)
        closes_on = fields.calendar_day("rate.closes_on", r.closes_on, first, last)
        if opens_on and closes_on and closes_on < opens_on:
            fields.bad("rate.closes_on", "must not be before opens_on")
        fields.done()
        assert opens_on is not None and closes_on is not None
        rate = PremiumRate(region_key, year, amount_fen, opens_on, closes_on)
        row = await premiums.set_rate(self._app.pool, rate, limits.PREMIUM_RATES_MAX)
        if row is None:
            raise errors.PremiumRateLimitReached(f"at most {limits.PREMIUM_RATES_MAX} premium rates")
        return account_pb2.SetPremiumRateResponse(rate=convert.premium_rate(row))

    async def ListPremiumRates(
        self, request: account_pb2.ListPremiumRatesRequest, context: Context
    ) -> account_pb2.ListPremiumRatesResponse:
        fields = Fields()
        if request.year:
            fields.premium_year("year", request.year, china_today())
        fields.done()
        rows = await premiums.list_rates(self._app.pool, request.year or None, limits.PREMIUM_RATES_MAX)
        return account_pb2.ListPremiumRatesResponse(rates=[convert.premium_rate(r) for r in rows])

    async def PayPremium(
        self, request: account_pb2.PayPremiumRequest, context: Context
    ) -> account_pb2.PayPremiumResponse:
        today = china_today()  # once: the window is checked against this day, whatever the clock does next
        fields = Fields()
        request_id = fields.request_id("request_id", request.request_id)
        payer_id = fields.person_id("payer_id", request.payer_id)
        beneficiary_id = fields.person_id("beneficiary_id", request.beneficiary_id)
        if payer_id and payer_id == beneficiary_id:
            fields.bad("beneficiary_id", "must be another person than the payer")
        year = fields.premium_year("year", request.year, today)
        fields.done()
        digest = hashlib.sha256(f"{payer_id}\x1f{beneficiary_id}\x1f{year}".encode()).digest()
        try:
            paid = await premiums.pay(
                self._app.pool,
                credential_id=current_principal.get().credential_id,
                request_id=request_id,
                digest=digest,
                payer_id=payer_id,
                beneficiary_id=beneficiary_id,
                year=year,
                today=today,
            )
        except errors.GongjiError as exc:
            metrics.PREMIUM_PAYMENTS.labels(exc.reason).inc()
            raise
        _count_premium(paid)
        return account_pb2.PayPremiumResponse(
            payment=convert.premium_payment(paid.payment), balance_fen=paid.balance_fen, replayed=paid.replayed
        )

    async def RefundPremium(
        self, request: account_pb2.RefundPremiumRequest, context: Context
    ) -> account_pb2.RefundPremiumResponse:
        fields = Fields()
        payment_id = fields.uuid_id("payment_id", request.payment_id)
        reason = fields.text("reason", request.reason, limits.REASON_LEN_MAX)
        fields.done()
        assert payment_id is not None
        refunded = await premiums.refund(
            self._app.pool,
            credential_id=current_principal.get().credential_id,
            payment_id=payment_id,
            reason=reason.strip(),
        )
        if refunded.replayed:
            metrics.IDEMPOTENT_REPLAYS.labels("RefundPremium").inc()
        else:
            metrics.PREMIUM_REFUNDS.inc()
            metrics.PREMIUM_REFUNDED_FEN.inc(refunded.payment.amount_fen)
        return account_pb2.RefundPremiumResponse(
            payment=convert.premium_payment(refunded.payment),
            balance_fen=refunded.balance_fen,
            replayed=refunded.replayed,
        )

    async def ReportPremiums(
        self, request: account_pb2.ReportPremiumsRequest, context: Context
    ) -> account_pb2.ReportPremiumsResponse:
        fields = Fields()
        today = china_today()
        first = fields.calendar_day("from_date", request.from_date, _ANY_DAY[0], today)
        last = fields.calendar_day("to_date", request.to_date, _ANY_DAY[0], today)
        if first and last and last < first:
            fields.bad("to_date", "must not be before from_date")
        elif first and last and (last - first).days >= limits.PREMIUM_REPORT_DAYS_MAX:
            fields.bad("to_date", f"the range is at most {limits.PREMIUM_REPORT_DAYS_MAX} days")
        first, last = first or today, last or today
        region_key = fields.region_key("region_key", request.region_key, required=False)
        page_size = fields.page_size(
            "page_size",
            request.page_size,
            limits.PREMIUM_REPORT_PAGE_SIZE_DEFAULT,
            limits.PREMIUM_REPORT_PAGE_SIZE_MAX,
        )
        after = fields.region_day_cursor("page_token", request.page_token, first, last)
        fields.done()
        # China keeps no daylight saving time: a day is 24 hours from its midnight in Asia/Shanghai.
        start = dt.datetime(first.year, first.month, first.day, tzinfo=CHINA)
        if after is not None:  # the days before the cursor's are done
            start = dt.datetime(after[0].year, after[0].month, after[0].day, tzinfo=CHINA)
        end = dt.datetime(last.year, last.month, last.day, tzinfo=CHINA) + dt.timedelta(days=1)
        rows = await premiums.report(
            self._app.pool, start=start, end=end, region_prefix=region_key, after=after, limit=page_size
        )
        reply = account_pb2.ReportPremiumsResponse(days=[convert.premium_day(r) for r in rows])
        if len(rows) == page_size:
            reply.next_page_token = pages.encode(rows[-1].day.isoformat(), rows[-1].region_code)
        return reply


_HH_MM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


def _wallet_policy(fields: Fields, w: account_pb2.WalletPolicy) -> WalletPolicy:
    """The wallet limits a policy sets, each unset field at its published value. PARENT_IN_LAW and OTHER
    never receive transfers, as they never receive mutual aid: the wallet is for the close relatives of
    国办发〔2024〕38号, which a region may narrow but not widen."""
    d, name = DEFAULT_WALLET_POLICY, "policy.wallet"
    relationships = d.relationships
    if len(w.relationships) > len(Relationship):
        fields.bad(f"{name}.relationships", f"at most {len(Relationship)} relationships")
    elif w.relationships:
        listed = [
            fields.enum(f"{name}.relationships", r, convert.RELATIONSHIP_NAMES, Relationship, convert.RELATIONSHIP)
            for r in w.relationships
        ]
        if any(r in ALWAYS_REFUSED for r in listed):
            fields.bad(f"{name}.relationships", "PARENT_IN_LAW and OTHER can never receive transfers")
        relationships = frozenset(r for r in listed if r is not None)
    scope = d.scope
    if w.scope:
        scope = fields.enum(f"{name}.scope", w.scope, convert.SCOPE_NAMES, WalletScope, convert.SCOPE) or d.scope
    sends = w.sends_per_day if w.HasField("sends_per_day") else d.sends_per_day
    if not 0 <= sends <= limits.WALLET_SENDS_PER_DAY_MAX:
        fields.bad(f"{name}.sends_per_day", f"must be 0 to {limits.WALLET_SENDS_PER_DAY_MAX}, or unset for 3")
    most = w.send_max_fen if w.HasField("send_max_fen") else d.send_max_fen
    if not 1 <= most <= limits.WALLET_SEND_MAX_FEN_MAX:
        fields.bad(f"{name}.send_max_fen", f"must be 1 to {limits.WALLET_SEND_MAX_FEN_MAX} fen, or unset for 200000")
    times = {}
    for field, default in (("quiet_from", d.quiet_from), ("quiet_until", d.quiet_until), ("expires_at", d.expires_at)):
        text: str = getattr(w, field)
        times[field] = default
        if text and not _HH_MM.fullmatch(text):
            fields.bad(f"{name}.{field}", "must be a time of day written HH:MM, 00:00 to 23:59, or empty")
        elif text:
            times[field] = dt.time(int(text[:2]), int(text[3:]))
    return WalletPolicy(
        relationships, scope, sends, most, times["quiet_from"], times["quiet_until"], times["expires_at"]
    )
