"""WalletService: the 医保钱包 and two-phase transfers into it, for the insured person's app backend."""

from __future__ import annotations

import datetime as dt
import uuid

from gongji import errors, limits, metrics
from gongji.api import convert, pages
from gongji.api.app import App, Context, timestamp
from gongji.api.auth import current_principal
from gongji.api.validate import Fields
from gongji.domain.people import Relationship
from gongji.domain.wallet import TransferState
from gongji.store import wallets
from gongji.v1 import wallet_pb2, wallet_pb2_grpc

# The event each end state is counted as.
_EVENT = {TransferState.POSTED: "ACCEPTED", TransferState.VOIDED: "DECLINED", TransferState.EXPIRED: "EXPIRED"}


def transfer(t: wallets.TransferRow) -> wallet_pb2.Transfer:
    return wallet_pb2.Transfer(
        transfer_id=str(t.transfer_id),
        request_id=t.request_id,
        sender_id=t.sender_id,
        recipient_id=t.recipient_id,
        relationship=convert.relationship(t.relationship),
        amount_fen=t.amount_fen,
        state=wallet_pb2.TransferState.Value(f"TRANSFER_STATE_{t.state}"),
        sent_at=timestamp(t.sent_at),
        due_at=timestamp(t.due_at),
        resolved_at=timestamp(t.resolved_at),
    )


def _wallet(w: wallets.WalletRow) -> wallet_pb2.Wallet:
    return wallet_pb2.Wallet(
        person_id=w.person_id,
        balance_fen=w.balance_fen,
        opened_at=timestamp(w.opened_at),
        pending_in_fen=w.pending_in_fen,
        held_fen=w.held_fen,
    )


def count_ended(t: wallets.TransferRow) -> None:
    """Count a transfer that has just ended (the expiry work counts its own too)."""
    metrics.WALLET_TRANSFERS.labels(_EVENT[t.state]).inc()
    metrics.WALLET_TRANSFERRED_FEN.labels(_EVENT[t.state]).inc(t.amount_fen)


class WalletService(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    def _person(self, request_person_id: str, field: str = "person_id") -> str:
        fields = Fields()
        person_id = fields.person_id(field, request_person_id)
        fields.done()
        return person_id

    async def OpenWallet(
        self, request: wallet_pb2.OpenWalletRequest, context: Context
    ) -> wallet_pb2.OpenWalletResponse:
        person_id = self._person(request.person_id)
        wallet, opened = await wallets.open_wallet(self._app.pool, person_id, self._app.clock.now())
        return wallet_pb2.OpenWalletResponse(wallet=_wallet(wallet), replayed=not opened)

    async def GetWallet(self, request: wallet_pb2.GetWalletRequest, context: Context) -> wallet_pb2.GetWalletResponse:
        person_id = self._person(request.person_id)
        wallet = await wallets.get_wallet(self._app.pool, person_id)
        if wallet is None:
            raise errors.WalletNotOpen("this person has no wallet")
        return wallet_pb2.GetWalletResponse(wallet=_wallet(wallet))

    async def SendTransfer(
        self, request: wallet_pb2.SendTransferRequest, context: Context
    ) -> wallet_pb2.SendTransferResponse:
        now = self._app.clock.now()  # once: every limit of the send is judged at this instant
        fields = Fields()
        request_id = fields.request_id("request_id", request.request_id)
        sender_id = fields.person_id("sender_id", request.sender_id)
        recipient_id = fields.person_id("recipient_id", request.recipient_id)
        if sender_id and sender_id == recipient_id:
            fields.bad("recipient_id", "must be another person than the sender")
        relationship = fields.enum(
            "relationship", request.relationship, convert.RELATIONSHIP_NAMES, Relationship, convert.RELATIONSHIP
        )
        amount_fen = fields.amount("amount_fen", request.amount_fen, limits.AMOUNT_FEN_MAX)
        fields.done()
        assert relationship is not None
        try:
            if not await wallets.sent_before(self._app.pool, sender_id, request_id):
                await wallets.check_relationship(self._app.pool, sender_id, recipient_id, relationship)
            sent, replayed = await wallets.send(
                self._app.pool,
                credential_id=current_principal.get().credential_id,
                now=now,
                request_id=request_id,
                sender_id=sender_id,
                recipient_id=recipient_id,
                relationship=relationship,
                amount_fen=amount_fen,
            )
        except errors.GongjiError as exc:
            metrics.WALLET_TRANSFERS.labels(exc.reason).inc()
            raise
        if not replayed:
            metrics.WALLET_TRANSFERS.labels("SENT").inc()
            metrics.WALLET_TRANSFERRED_FEN.labels("SENT").inc(sent.amount_fen)
        return wallet_pb2.SendTransferResponse(transfer=transfer(sent), replayed=replayed)

    async def _resolve(self, transfer_id_text: str, recipient_text: str, *, accept: bool) -> wallets.Resolved:
        now = self._app.clock.now()
        fields = Fields()
        transfer_id = fields.uuid_id("transfer_id", transfer_id_text)
        recipient_id = fields.person_id("recipient_id", recipient_text)
        fields.done()
        assert transfer_id is not None
        resolved = await wallets.resolve(
            self._app.pool,
            credential_id=current_principal.get().credential_id,
            now=now,
            transfer_id=transfer_id,
            person_id=recipient_id,
            accept=accept,
        )
        if resolved.moved:
            count_ended(resolved.transfer)
        if resolved.refusal is not None:
            metrics.WALLET_TRANSFERS.labels(resolved.refusal.reason).inc()
            raise resolved.refusal(f"the transfer is {resolved.transfer.state.lower()}")
        return resolved

    async def AcceptTransfer(
        self, request: wallet_pb2.AcceptTransferRequest, context: Context
    ) -> wallet_pb2.AcceptTransferResponse:
        resolved = await self._resolve(request.transfer_id, request.recipient_id, accept=True)
        return wallet_pb2.AcceptTransferResponse(transfer=transfer(resolved.transfer), replayed=not resolved.moved)

    async def DeclineTransfer(
        self, request: wallet_pb2.DeclineTransferRequest, context: Context
    ) -> wallet_pb2.DeclineTransferResponse:
        resolved = await self._resolve(request.transfer_id, request.recipient_id, accept=False)
        return wallet_pb2.DeclineTransferResponse(transfer=transfer(resolved.transfer), replayed=not resolved.moved)

    async def ListTransfers(
        self, request: wallet_pb2.ListTransfersRequest, context: Context
    ) -> wallet_pb2.ListTransfersResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        page_size = fields.page_size(
            "page_size", request.page_size, limits.LEDGER_PAGE_SIZE_DEFAULT, limits.LEDGER_PAGE_SIZE_MAX
        )
        before = _transfer_cursor(fields, request.page_token)
        fields.done()
        rows = await wallets.list_transfers(self._app.pool, person_id, before, page_size)
        reply = wallet_pb2.ListTransfersResponse(transfers=[transfer(t) for t in rows])
        if len(rows) == page_size:
            last = rows[-1]
            reply.next_page_token = pages.encode(last.sent_at.isoformat(), str(last.transfer_id))
        return reply


# The instants a transfer list's cursor may hold: wallets began in 2025; the tests' clocks run to the 2030s.
_CURSOR_FIRST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_CURSOR_LAST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def _transfer_cursor(fields: Fields, token: str) -> tuple[dt.datetime, uuid.UUID] | None:
    if not token:
        return None
    try:
        at_text, id_text = pages.decode(token, 2)
        at = dt.datetime.fromisoformat(at_text)
        # A cursor from a page only: an instant far out of range (year 1 at +14:00) overflows the driver.
        if at.utcoffset() is None or not _CURSOR_FIRST <= at <= _CURSOR_LAST:
            raise ValueError(at_text)
        return at, uuid.UUID(id_text)
    except (errors.InvalidArgument, ValueError, OverflowError):
        fields.bad("page_token", "is not a token from a previous answer")
        return None
