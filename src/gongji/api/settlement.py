"""SettlementService: POS terminals settle a patient's personal burden (2206/2207)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from typing import Any, NamedTuple

from gongji import errors, limits, metrics
from gongji.api import convert, pages, reconcile
from gongji.api.app import App, Context
from gongji.api.auth import current_principal
from gongji.api.validate import CHINA, Fields
from gongji.domain.bill import Insutype, MedType, Parts, Reading
from gongji.domain.vouchers import CertType
from gongji.store import holds, lifecycle, settlements
from gongji.store.credentials import Kind
from gongji.v1 import settlement_pb2, settlement_pb2_grpc


def _digest(payment: _Payment) -> bytes:
    """What makes two Settle requests 'the same content' for idempotency. The voucher is a credential,
    not content: a retry that rescanned a fresh voucher still replays the original. A bill sent as its
    amount only digests as it always did, so a retry sent across an upgrade still replays."""
    p = payment
    canonical = f"{p.patient_id}\x1f{p.amount_fen}\x1f{p.authorizer_id or ''}\x1f{int(p.use_account)}"
    if p.bill != settlements.AMOUNT_ONLY:
        over, wholly, med_type, insutype = p.bill.sql_args()
        canonical += f"\x1f{over}\x1f{wholly}\x1f{med_type}\x1f{insutype}"
    return hashlib.sha256(canonical.encode()).digest()


def _count_voucher_refusal(method: str, exc: errors.GongjiError) -> None:
    """Count e-voucher refusals; a real-name mismatch also per institution, as the fraud signal."""
    if isinstance(exc, errors.VoucherRefused | errors.VoucherPatientMismatch):
        metrics.VOUCHER_REFUSALS.labels(method, exc.reason).inc()
    if isinstance(exc, errors.VoucherPatientMismatch):
        metrics.REAL_NAME_MISMATCHES.labels(current_principal.get().institution_id or "").inc()


def _count_settlement(s: settlements.SettlementRow) -> None:
    if s.replayed:
        metrics.SETTLEMENTS.labels("REPLAYED").inc()
        metrics.IDEMPOTENT_REPLAYS.labels("Settle").inc()
        return
    metrics.SETTLEMENTS.labels("OK").inc()
    metrics.SETTLED_FEN.labels("own").inc(s.acct_pay_fen)
    metrics.SETTLED_FEN.labels("mutual_aid").inc(s.acct_mulaid_pay_fen)
    metrics.SETTLED_FEN.labels("wallet").inc(s.wallet_pay_fen)
    metrics.SETTLED_FEN.labels("cash").inc(s.psn_cash_pay_fen)
    by_source = (
        ("own", s.own_parts),
        ("mutual_aid", s.mutual_aid_parts),
        ("wallet", s.wallet_parts),
        ("cash", s.cash_parts),
    )
    for source, paid in by_source:
        metrics.SETTLED_FEN_BY_PART.labels(source, "in_scope").inc(paid.in_scope_fen)
        metrics.SETTLED_FEN_BY_PART.labels(source, "over_limit").inc(paid.over_limit_fen)
        metrics.SETTLED_FEN_BY_PART.labels(source, "wholly_self_paid").inc(paid.wholly_self_paid_fen)
    if s.care_scope is not None:
        metrics.SETTLEMENTS_BY_CARE.labels(s.care_scope.value).inc()
        metrics.SETTLED_FEN_BY_CARE.labels(s.care_scope.value).inc(
            s.acct_pay_fen + s.acct_mulaid_pay_fen + s.wallet_pay_fen
        )
    if s.mulaid_limited_by is not None:
        metrics.MUTUAL_AID_LIMITED.labels(s.mulaid_limited_by.value).inc()


def _observe_settle_timing(timing: settlements.SettleTiming) -> None:
    """Record what the store measured for one Settle, also when it raised: the connection wait once
    one was had, every retry (those of a call that finally raised too), the transaction once it
    returned, and each lock wait the settlement reached (a null wait is a lock not reached)."""
    if timing.pool_wait_s is not None:
        metrics.POOL_ACQUIRE_SECONDS.observe(timing.pool_wait_s)
    if timing.retries:
        metrics.SETTLE_RETRIES.inc(timing.retries)
    if timing.transaction_s is not None:
        metrics.SETTLE_TRANSACTION_SECONDS.observe(timing.transaction_s)
    if not timing.lock_wait_s:
        return  # no row came back
    for lock in metrics.LOCK_KINDS:
        wait_s = timing.lock_wait_s[lock]
        if wait_s is not None:
            metrics.SETTLE_LOCK_WAIT_SECONDS.labels(lock).observe(wait_s)


def _count_refunded(refund: lifecycle.RefundRow) -> None:
    metrics.REFUNDED_FEN.labels("own").inc(refund.acct_pay_fen)
    metrics.REFUNDED_FEN.labels("mutual_aid").inc(refund.acct_mulaid_pay_fen)
    metrics.REFUNDED_FEN.labels("wallet").inc(refund.wallet_pay_fen)
    metrics.REFUNDED_FEN.labels("cash").inc(refund.psn_cash_pay_fen)


_CARD_SERIAL = re.compile(rf"[A-Za-z0-9]{{1,{limits.CARD_SERIAL_LEN_MAX}}}")


class _Payment(NamedTuple):
    """A Quote's or Settle's fields, validated."""

    patient_id: str
    amount_fen: int
    authorizer_id: str | None
    use_account: bool
    cert_type: CertType
    card_number: str | None  # a card's; None for an e-voucher
    bill: settlements.BillArgs
    hold_seconds: int = 0  # a Quote's: hold its split this long (0: a plain quote)
    hold_id: uuid.UUID | None = None  # a Settle's: the hold it captures


def _settle_digest(payment: _Payment) -> bytes:
    """A Settle's digest for idempotency: its content (_digest, which a hold it captures must have been
    asked with), and the hold it captures, if any."""
    content = _digest(payment)
    if payment.hold_id is None:
        return content
    return hashlib.sha256(content + payment.hold_id.bytes).digest()


def _bill(fields: Fields, request: Any, amount_fen: int) -> settlements.BillArgs:
    """The bill beyond its amount: its parts (which add up to the amount), med_type and insutype."""
    med_type = (
        fields.enum("med_type", request.med_type, convert.MED_TYPE_NAMES, MedType, convert.MED_TYPE)
        if request.med_type
        else None
    )
    insutype = (
        fields.enum("insutype", request.insutype, convert.INSUTYPE_NAMES, Insutype, convert.INSUTYPE)
        if request.insutype
        else None
    )
    if not request.HasField("bill"):
        return settlements.BillArgs(None, med_type, insutype)
    b = request.bill
    parts = Parts(b.in_scope_fen, b.over_limit_fen, b.wholly_self_paid_fen)
    for name in ("in_scope_fen", "over_limit_fen", "wholly_self_paid_fen"):
        if not 0 <= getattr(b, name) <= limits.AMOUNT_FEN_MAX:
            fields.bad(f"bill.{name}", f"must be a whole number of fen from 0 to {limits.AMOUNT_FEN_MAX}", amount=True)
    if parts.fen != amount_fen:
        fields.bad("bill", "its parts must add up to amount_fen", amount=True)
    if not request.med_type:
        fields.bad("med_type", "is required with bill: the region's policy on wholly self-paid items is per med_type")
    return settlements.BillArgs(parts, med_type, insutype)


def _presented(fields: Fields, request: Any) -> tuple[CertType, str | None]:
    """What the patient presented (certificate_type): an e-voucher in `voucher`, or a card's fields."""
    cert_type = (
        fields.enum(
            "certificate_type",
            request.certificate_type,
            convert.CERTIFICATE_TYPE_NAMES,
            CertType,
            convert.CERTIFICATE_TYPE,
        )
        if request.certificate_type
        else CertType.E_VOUCHER
    )
    if cert_type in (None, CertType.E_VOUCHER):
        if not request.voucher:
            fields.bad("voucher", "is required: scan the patient's own e-voucher")
        for name in ("card_number", "card_serial"):
            if getattr(request, name):
                fields.bad(name, "is for a card only: set certificate_type")
        return CertType.E_VOUCHER, None
    if request.voucher:
        fields.bad("voucher", "must be empty when a card is presented")
    card_number = fields.person_id("card_number", request.card_number)
    if cert_type is CertType.SOCIAL_SECURITY_CARD:
        if not _CARD_SERIAL.fullmatch(request.card_serial):
            fields.bad("card_serial", f"is required: 1 to {limits.CARD_SERIAL_LEN_MAX} ASCII letters and digits")
    elif request.card_serial:
        fields.bad("card_serial", "is for a social-security card only")
    return cert_type, card_number


def _quote_reply(payment: _Payment, q: settlements.QuoteResult) -> settlement_pb2.QuoteResponse:
    """What a Quote answers: the split it would make, or the one it held."""
    return settlement_pb2.QuoteResponse(
        amount_fen=payment.amount_fen,
        acct_pay_fen=q.acct_pay_fen,
        acct_mulaid_pay_fen=q.acct_mulaid_pay_fen,
        psn_cash_pay_fen=q.psn_cash_pay_fen,
        authorizer_id=q.authorizer_id or "",
        balc_fen=q.balc_fen,
        mutual_aid_limited_by=convert.mutual_aid_limit(q.mulaid_limited_by),
        grant_cap_left_fen=q.grant_cap_left_fen,
        beneficiary_cap_left_fen=q.beneficiary_cap_left_fen,
        care_region=q.care_region or "",
        care_scope=convert.care_scope(q.care_scope),
        psn_acct_pay_fen=q.acct_pay_fen + q.acct_mulaid_pay_fen,
        bill_reading=convert.bill_reading(Reading.AMOUNT if payment.bill.parts is None else Reading.PARTS),
        bill=convert.parts(payment.bill.parts or Parts(payment.amount_fen)),
        own_parts=convert.parts(q.own_parts),
        mutual_aid_parts=convert.parts(q.mutual_aid_parts),
        cash_parts=convert.parts(q.cash_parts),
        med_type=convert.med_type(payment.bill.med_type),
        insutype=convert.insutype(q.insutype),
        wallet_pay_fen=q.wallet_pay_fen,
        wallet_parts=convert.parts(q.wallet_parts),
        wallet_balc_fen=q.wallet_balc_fen,
    )


class SettlementService(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    def _payment(self, request: Any, *, idempotent: bool) -> _Payment:
        fields = Fields()
        patient_id = fields.person_id("patient_id", request.patient_id)
        amount_fen = fields.amount("amount_fen", request.amount_fen, limits.AMOUNT_FEN_MAX)
        authorizer_id = fields.optional_person_id(
            "authorizer_id", request.authorizer_id if request.HasField("authorizer_id") else None
        )
        if authorizer_id is not None and authorizer_id == patient_id:
            fields.bad("authorizer_id", "must be another person than the patient")
        cert_type, card_number = _presented(fields, request)
        bill = _bill(fields, request, amount_fen)
        hold_seconds = getattr(request, "hold_seconds", 0)
        if hold_seconds > limits.HOLD_SECONDS_MAX:
            fields.bad("hold_seconds", f"must be 1 to {limits.HOLD_SECONDS_MAX}, or 0 for no hold")
        if idempotent or hold_seconds:
            fields.request_id("request_id", request.request_id)
        hold_id = fields.uuid_id("hold_id", request.hold_id) if getattr(request, "hold_id", "") else None
        fields.done()
        use_account = request.use_personal_account if request.HasField("use_personal_account") else True
        return _Payment(
            patient_id, amount_fen, authorizer_id, use_account, cert_type, card_number, bill, hold_seconds, hold_id
        )

    def _voucher(self, request: Any, payment: _Payment) -> settlements.VoucherArgs:
        """What the patient presented, judged against the patient where only the server can: whether a
        genuine e-voucher names them (the key's tag), or a card (its number). Use, expiry, the binding
        and whether the region accepts the card are judged in the settlement's transaction."""
        if payment.card_number is not None:
            return settlements.VoucherArgs.card(payment.cert_type, payment.card_number == payment.patient_id)
        patient_id = payment.patient_id
        claims = self._app.vouchers.authentic(request.voucher)
        return settlements.VoucherArgs(
            claims.voucher_id,
            self._app.vouchers.names(claims, patient_id),
            dt.datetime.fromtimestamp(claims.expires_at_s, dt.UTC),
            claims.binding_id,
            claims.grant_id,
        )

    async def Quote(self, request: settlement_pb2.QuoteRequest, context: Context) -> settlement_pb2.QuoteResponse:
        payment = self._payment(request, idempotent=False)
        patient_id, amount_fen, authorizer_id, use_account, *_ = payment
        if payment.hold_seconds:
            return await self._hold(request, payment)
        try:
            q = await settlements.quote(
                self._app.pool,
                institution_id=_institution(),
                voucher=self._voucher(request, payment),
                patient_id=patient_id,
                amount_fen=amount_fen,
                authorizer_id=authorizer_id,
                use_personal_account=use_account,
                bill=payment.bill,
            )
        except errors.GongjiError as exc:
            _count_voucher_refusal("Quote", exc)
            raise
        return _quote_reply(payment, q)

    async def _hold(self, request: settlement_pb2.QuoteRequest, payment: _Payment) -> settlement_pb2.QuoteResponse:
        """A Quote that holds its split (hold_seconds): the answer of a Quote, from the hold."""
        try:
            held = await holds.hold(
                self._app.pool,
                credential_id=current_principal.get().credential_id,
                now=self._app.clock.now(),
                hold_seconds=payment.hold_seconds,
                request_id=request.request_id,
                digest=_digest(payment),
                voucher=self._voucher(request, payment),
                patient_id=payment.patient_id,
                amount_fen=payment.amount_fen,
                authorizer_id=payment.authorizer_id,
                use_personal_account=payment.use_account,
                bill=payment.bill,
            )
        except errors.GongjiError as exc:
            _count_voucher_refusal("Quote", exc)
            raise
        h = held.hold
        if not held.replayed:
            metrics.HOLDS.labels("HELD").inc()
        reply = _quote_reply(payment, held.as_quote())
        reply.hold.CopyFrom(convert.hold(h))
        return reply

    async def ReleaseHold(
        self, request: settlement_pb2.ReleaseHoldRequest, context: Context
    ) -> settlement_pb2.ReleaseHoldResponse:
        fields = Fields()
        hold_id = fields.uuid_id("hold_id", request.hold_id)
        fields.done()
        assert hold_id is not None
        h, replayed = await holds.release(
            self._app.pool,
            credential_id=current_principal.get().credential_id,
            now=self._app.clock.now(),
            hold_id=hold_id,
        )
        if not replayed:
            metrics.HOLDS.labels(h.state.value).inc()
        return settlement_pb2.ReleaseHoldResponse(hold=convert.hold(h), replayed=replayed)

    async def Settle(self, request: settlement_pb2.SettleRequest, context: Context) -> settlement_pb2.SettleResponse:
        principal = current_principal.get()
        metrics.REAL_NAME_MISMATCHES.labels(principal.institution_id or "")  # the series exists before its first
        timing = settlements.SettleTiming()
        try:
            payment = self._payment(request, idempotent=True)
            patient_id, amount_fen, authorizer_id, use_account, *_ = payment
            voucher = self._voucher(request, payment)
            s = await settlements.settle(
                self._app.pool,
                credential_id=principal.credential_id,
                request_id=request.request_id,
                digest=_settle_digest(payment),
                voucher=voucher,
                patient_id=patient_id,
                amount_fen=amount_fen,
                authorizer_id=authorizer_id,
                use_personal_account=use_account,
                timing=timing,
                bill=payment.bill,
                capture=None
                if payment.hold_id is None
                else settlements.Capture(payment.hold_id, _digest(payment), self._app.clock.now()),
            )
        except errors.GongjiError as exc:
            metrics.SETTLEMENTS.labels(exc.reason).inc()
            _count_voucher_refusal("Settle", exc)
            if isinstance(exc, errors.HoldExpired):
                metrics.HOLDS.labels("EXPIRED").inc()  # the refusal gave the hold's money back
            raise
        finally:
            _observe_settle_timing(timing)
        _count_settlement(s)
        if payment.hold_id is not None and not s.replayed:
            metrics.HOLDS.labels("CAPTURED").inc()
        return settlement_pb2.SettleResponse(settlement=convert.settlement(s), replayed=s.replayed)

    async def Cancel(self, request: settlement_pb2.CancelRequest, context: Context) -> settlement_pb2.CancelResponse:
        fields = Fields()
        request_id = fields.request_id("request_id", request.request_id)
        settlement_id = fields.uuid_id("settlement_id", request.settlement_id)
        if not 0 <= request.amount_fen <= limits.AMOUNT_FEN_MAX:
            fields.bad("amount_fen", f"must be 0 (all that is left) to {limits.AMOUNT_FEN_MAX} fen", amount=True)
        fields.done()
        assert settlement_id is not None
        digest = hashlib.sha256(f"{settlement_id}\x1f{request.amount_fen}".encode()).digest()
        refund_id, replayed = await lifecycle.cancel(
            self._app.pool,
            credential_id=current_principal.get().credential_id,
            request_id=request_id,
            digest=digest,
            settlement_id=settlement_id,
            amount_fen=request.amount_fen,
        )
        view = await lifecycle.get_by_id(self._app.pool, settlement_id)
        assert view is not None
        refund = next(r for r in view.refunds if r.refund_id == refund_id)
        if replayed:
            metrics.IDEMPOTENT_REPLAYS.labels("Cancel").inc()
        else:
            metrics.REFUNDS.inc()
            _count_refunded(refund)
        return settlement_pb2.CancelResponse(
            refund=convert.refund(refund), settlement=convert.settlement(view.settlement, view), replayed=replayed
        )

    async def Reverse(self, request: settlement_pb2.ReverseRequest, context: Context) -> settlement_pb2.ReverseResponse:
        fields = Fields()
        request_id = fields.request_id("original_request_id", request.original_request_id)
        if request.original_kind not in _ORIGINAL_KINDS:
            fields.bad("original_kind", "must be unset, ORIGINAL_KIND_SETTLE or ORIGINAL_KIND_CANCEL")
        fields.done()
        if request.original_kind == settlement_pb2.ORIGINAL_KIND_CANCEL:
            return await self._reverse_refund(request_id)
        settlement_id, replayed = await lifecycle.reverse(
            self._app.pool, credential_id=current_principal.get().credential_id, request_id=request_id
        )
        if settlement_id is None:
            return settlement_pb2.ReverseResponse(undone=False)
        view = await lifecycle.get_by_id(self._app.pool, settlement_id)
        assert view is not None
        if not replayed:
            metrics.REVERSALS.inc()
            for refund in view.refunds:
                if refund.kind == "REVERSAL":
                    _count_refunded(refund)
        return settlement_pb2.ReverseResponse(undone=True, settlement=convert.settlement(view.settlement, view))

    async def _reverse_refund(self, request_id: str) -> settlement_pb2.ReverseResponse:
        """2601 of a Cancel: its refund's money back where the settlement had put it."""
        settlement_id, refund_id, replayed = await lifecycle.reverse_refund(
            self._app.pool, credential_id=current_principal.get().credential_id, request_id=request_id
        )
        if settlement_id is None:
            return settlement_pb2.ReverseResponse(undone=False)
        view = await lifecycle.get_by_id(self._app.pool, settlement_id)
        assert view is not None
        refund = next(r for r in view.refunds if r.refund_id == refund_id)
        assert refund.reversed_at is not None
        if not replayed:
            metrics.REFUND_REVERSALS.inc()
            metrics.REFUND_REVERSED_FEN.labels("own").inc(refund.acct_pay_fen)
            metrics.REFUND_REVERSED_FEN.labels("mutual_aid").inc(refund.acct_mulaid_pay_fen)
            metrics.REFUND_REVERSED_FEN.labels("wallet").inc(refund.wallet_pay_fen)
            metrics.REFUND_REVERSED_FEN.labels("cash").inc(refund.psn_cash_pay_fen)
        return settlement_pb2.ReverseResponse(
            undone=True, settlement=convert.settlement(view.settlement, view), refund=convert.refund(refund)
        )

    async def GetSettlement(
        self, request: settlement_pb2.GetSettlementRequest, context: Context
    ) -> settlement_pb2.GetSettlementResponse:
        institution_id = _institution()
        fields = Fields()
        key = request.WhichOneof("key")
        if key == "settlement_id":
            settlement_id = fields.uuid_id("settlement_id", request.settlement_id)
            fields.done()
            assert settlement_id is not None
            view = await lifecycle.get_by_id(self._app.pool, settlement_id)
        elif key == "request_id":
            request_id = fields.request_id("request_id", request.request_id)
            fields.done()
            view = await lifecycle.get_by_request(self._app.pool, institution_id, request_id)
        else:
            raise errors.InvalidArgument.one("key", "set settlement_id or request_id")
        # Another institution's settlement is answered as not found, whichever key was asked: a
        # terminal learns nothing of other institutions' settlements.
        if view is None or view.settlement.institution_id != institution_id:
            raise errors.SettlementNotFound("no settlement of this institution with this key")
        return settlement_pb2.GetSettlementResponse(settlement=convert.settlement(view.settlement, view))

    async def Reconcile(
        self, request: settlement_pb2.ReconcileRequest, context: Context
    ) -> settlement_pb2.ReconcileResponse:
        fields = Fields()
        institution_id = self._reconciled_institution(fields, request.institution_id)
        day = fields.date("date", request.date)
        page_size = fields.page_size(
            "page_size", request.page_size, limits.RECONCILE_PAGE_SIZE_DEFAULT, limits.RECONCILE_PAGE_SIZE_MAX
        )
        after = fields.day_cursor("page_token", request.page_token, day)
        fields.done()
        # An operator reads "no activity" only for an institution that exists; a wrong id is an error.
        if current_principal.get().kind is Kind.OPERATOR and not await lifecycle.institution_exists(
            self._app.pool, institution_id
        ):
            raise errors.InstitutionNotFound("no institution with this id")
        start = dt.datetime(day.year, day.month, day.day, tzinfo=CHINA)
        end = start + dt.timedelta(days=1)  # China keeps no daylight saving time
        reply = settlement_pb2.ReconcileResponse(institution_id=institution_id, date=day.isoformat())
        if after is None:
            for name, value in (await lifecycle.day_totals(self._app.pool, institution_id, start, end)).items():
                setattr(reply, name, value)
            for scope, totals in await lifecycle.day_care_totals(self._app.pool, institution_id, start, end):
                reply.care_totals.add(care_scope=convert.care_scope(scope), **totals)
        if request.detail:
            page = await lifecycle.day_page(self._app.pool, institution_id, start, end, after, page_size)
            reply.settlements.extend(convert.settlement(v.settlement, v) for v in page)
            if len(page) == page_size:
                last = page[-1].settlement
                reply.next_page_token = pages.encode(last.created_at.isoformat(), str(last.settlement_id))
        return reply

    @staticmethod
    def _reconciled_institution(fields: Fields, asked: str) -> str:
        """A terminal reconciles its own institution; an operator names one."""
        principal = current_principal.get()
        if asked:
            fields.institution_id("institution_id", asked)
            fields.done()  # a malformed id is bad input before it is anyone's institution
        if principal.kind is Kind.OPERATOR:
            if not asked:
                fields.bad("institution_id", "is required for an operator")
            return asked
        assert principal.institution_id is not None
        if asked and asked != principal.institution_id:
            raise errors.InstitutionMismatch("a terminal reconciles its own institution only")
        return principal.institution_id

    async def CheckTotals(
        self, request: settlement_pb2.CheckTotalsRequest, context: Context
    ) -> settlement_pb2.CheckTotalsResponse:
        fields = Fields()
        institution_id = self._reconciled_institution(fields, request.institution_id)
        return await reconcile.check_totals(self._app.pool, fields, institution_id, request)

    async def CheckDetail(
        self, request: settlement_pb2.CheckDetailRequest, context: Context
    ) -> settlement_pb2.CheckDetailResponse:
        fields = Fields()
        institution_id = self._reconciled_institution(fields, request.institution_id)
        return await reconcile.check_detail(self._app.pool, fields, institution_id, request)


# A proto3 enum carries any number: only these are kinds of an original (unset is a Settle, as before).
_ORIGINAL_KINDS = frozenset(
    (settlement_pb2.ORIGINAL_KIND_UNSPECIFIED, settlement_pb2.ORIGINAL_KIND_SETTLE, settlement_pb2.ORIGINAL_KIND_CANCEL)
)


def _institution() -> str:
    """The calling terminal's institution: never a request field."""
    institution_id = current_principal.get().institution_id
    assert institution_id is not None, "SettlementService is for terminals"
    return institution_id
