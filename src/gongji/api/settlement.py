"""SettlementService: POS terminals settle a patient's personal burden (2206/2207)."""

from __future__ import annotations

import hashlib
from typing import Any

from gongji import errors, limits, metrics
from gongji.api.app import App, Context, timestamp
from gongji.api.auth import current_principal
from gongji.api.validate import Fields
from gongji.store import settlements
from gongji.v1 import settlement_pb2, settlement_pb2_grpc, types_pb2

_LATER = "arrives with the money-lifecycle work (refunds, reversals, reconciliation)"


def _digest(patient_id: str, amount_fen: int, authorizer_id: str | None, use_account: bool) -> bytes:
    """What makes two Settle requests 'the same content' for idempotency. The voucher is a credential,
    not content: a retry that rescanned a fresh voucher still replays the original."""
    canonical = f"{patient_id}\x1f{amount_fen}\x1f{authorizer_id or ''}\x1f{int(use_account)}"
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
    metrics.SETTLED_FEN.labels("cash").inc(s.psn_cash_pay_fen)


def _settlement(s: settlements.SettlementRow) -> types_pb2.Settlement:
    return types_pb2.Settlement(
        settlement_id=str(s.settlement_id),
        request_id=s.request_id,
        institution_id=s.institution_id,
        terminal_id=s.terminal_id,
        patient_id=s.patient_id,
        authorizer_id=s.authorizer_id or "",
        amount_fen=s.amount_fen,
        acct_pay_fen=s.acct_pay_fen,
        acct_mulaid_pay_fen=s.acct_mulaid_pay_fen,
        psn_cash_pay_fen=s.psn_cash_pay_fen,
        balc_fen=s.balc_fen,
        refunded_fen=s.refunded_fen,
        created_at=timestamp(s.created_at),
    )


class SettlementService(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    def _payment(self, request: Any, *, idempotent: bool) -> tuple[str, int, str | None, bool]:
        fields = Fields()
        patient_id = fields.person_id("patient_id", request.patient_id)
        amount_fen = fields.amount("amount_fen", request.amount_fen, limits.AMOUNT_FEN_MAX)
        authorizer_id = fields.optional_person_id(
            "authorizer_id", request.authorizer_id if request.HasField("authorizer_id") else None
        )
        if authorizer_id is not None and authorizer_id == patient_id:
            fields.bad("authorizer_id", "must be another person than the patient")
        if not request.voucher:
            fields.bad("voucher", "is required: scan the patient's own e-voucher")
        if idempotent:
            fields.request_id("request_id", request.request_id)
        fields.done()
        use_account = request.use_personal_account if request.HasField("use_personal_account") else True
        return patient_id, amount_fen, authorizer_id, use_account

    async def Quote(self, request: settlement_pb2.QuoteRequest, context: Context) -> settlement_pb2.QuoteResponse:
        patient_id, amount_fen, authorizer_id, use_account = self._payment(request, idempotent=False)
        try:
            claims = self._app.vouchers.authentic(request.voucher)
            q = await settlements.quote(
                self._app.pool,
                voucher_id=claims.voucher_id,
                patient_id=patient_id,
                amount_fen=amount_fen,
                authorizer_id=authorizer_id,
                use_personal_account=use_account,
            )
        except errors.GongjiError as exc:
            _count_voucher_refusal("Quote", exc)
            raise
        return settlement_pb2.QuoteResponse(
            amount_fen=amount_fen,
            acct_pay_fen=q.acct_pay_fen,
            acct_mulaid_pay_fen=q.acct_mulaid_pay_fen,
            psn_cash_pay_fen=q.psn_cash_pay_fen,
            authorizer_id=q.authorizer_id or "",
            balc_fen=q.balc_fen,
        )

    async def Settle(self, request: settlement_pb2.SettleRequest, context: Context) -> settlement_pb2.SettleResponse:
        principal = current_principal.get()
        assert principal.institution_id is not None and principal.terminal_id is not None
        patient_id, amount_fen, authorizer_id, use_account = self._payment(request, idempotent=True)
        try:
            claims = self._app.vouchers.authentic(request.voucher)
            s = await settlements.settle(
                self._app.pool,
                institution_id=principal.institution_id,
                terminal_id=principal.terminal_id,
                request_id=request.request_id,
                digest=_digest(patient_id, amount_fen, authorizer_id, use_account),
                voucher_id=claims.voucher_id,
                patient_id=patient_id,
                amount_fen=amount_fen,
                authorizer_id=authorizer_id,
                use_personal_account=use_account,
            )
        except errors.GongjiError as exc:
            metrics.SETTLEMENTS.labels(exc.reason).inc()
            _count_voucher_refusal("Settle", exc)
            raise
        _count_settlement(s)
        return settlement_pb2.SettleResponse(settlement=_settlement(s), replayed=s.replayed)

    async def Cancel(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet(f"Cancel {_LATER}")

    async def Reverse(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet(f"Reverse {_LATER}")

    async def GetSettlement(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet(f"GetSettlement {_LATER}")

    async def Reconcile(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet(f"Reconcile {_LATER}")
