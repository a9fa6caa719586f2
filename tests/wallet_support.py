"""The 医保钱包's test helpers: a server whose clock the test holds, and calls to it as the app backend.

The clock stands in 2031 and later, ahead of any real clock, so that the suite's other servers, whose
expiry work runs on the machine's clock, never reach these transfers; and every test takes a day of its
own (a_day), so that no test's transfers come due in another's. tests/conftest.py loads this module as
a plugin, so its fixtures (`wallet_server`, `w`) serve every test module.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from conftest import VOUCHER_KEY
from support import RESIDENT, Api, Tokens, bearer

from gongji.api import server
from gongji.api.app import App
from gongji.api.wallet_expiry import WalletExpiry
from gongji.clock import ManualClock
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.v1 import types_pb2, wallet_pb2, wallet_pb2_grpc

CHINA = dt.timezone(dt.timedelta(hours=8))
CHILD = types_pb2.RELATIONSHIP_CHILD
_DAYS = itertools.count()


def a_day() -> dt.date:
    """A China calendar day no other wallet test uses."""
    return dt.date(2031, 1, 1) + dt.timedelta(days=7 * next(_DAYS))


def at(day: dt.date, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=CHINA)


@dataclass
class Wallets:
    """This module's server, its clock, and calls to it as the app backend."""

    clock: ManualClock
    stub: wallet_pb2_grpc.WalletServiceStub
    api: Api
    pool: asyncpg.Pool
    server_pool: asyncpg.Pool

    def _md(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.api.tokens.app)

    async def family(self, *, sender_fen: int = 500_000, region: str = "610100", recipient_region: str = "610100"):
        """A parent with a personal account and their child with an open wallet."""
        parent = await self.api.enroll(region=region, birth=dt.date(1960, 1, 1), balance_fen=sender_fen)
        child = await self.api.enroll(region=recipient_region, birth=dt.date(1990, 1, 1), scheme=RESIDENT)
        await self.stub.OpenWallet(wallet_pb2.OpenWalletRequest(person_id=child), metadata=self._md())
        return parent, child

    async def send(
        self, sender: str, recipient: str, amount_fen: int, *, relationship: int = CHILD, request_id: str | None = None
    ) -> wallet_pb2.SendTransferResponse:
        reply: wallet_pb2.SendTransferResponse = await self.stub.SendTransfer(
            wallet_pb2.SendTransferRequest(
                request_id=request_id or f"t-{uuid.uuid4()}",
                sender_id=sender,
                recipient_id=recipient,
                relationship=relationship,
                amount_fen=amount_fen,
            ),
            metadata=self._md(),
        )
        return reply

    async def accept(self, t: wallet_pb2.Transfer) -> wallet_pb2.AcceptTransferResponse:
        reply: wallet_pb2.AcceptTransferResponse = await self.stub.AcceptTransfer(
            wallet_pb2.AcceptTransferRequest(transfer_id=t.transfer_id, recipient_id=t.recipient_id),
            metadata=self._md(),
        )
        return reply

    async def decline(self, t: wallet_pb2.Transfer) -> wallet_pb2.DeclineTransferResponse:
        reply: wallet_pb2.DeclineTransferResponse = await self.stub.DeclineTransfer(
            wallet_pb2.DeclineTransferRequest(transfer_id=t.transfer_id, recipient_id=t.recipient_id),
            metadata=self._md(),
        )
        return reply

    async def wallet(self, person_id: str) -> wallet_pb2.Wallet:
        reply = await self.stub.GetWallet(wallet_pb2.GetWalletRequest(person_id=person_id), metadata=self._md())
        return reply.wallet

    async def expire(self) -> int:
        return await WalletExpiry(self.server_pool, self.clock, 3600).run_once()


async def funded(
    w: Wallets, wallet_fen: int, *, scheme: int = RESIDENT, own_fen: int = 0, region: str = "610100"
) -> tuple[str, str]:
    """A patient whose wallet holds `wallet_fen` (sent by a parent, accepted), and the parent."""
    parent = await w.api.enroll(region=region, birth=dt.date(1960, 1, 1), balance_fen=wallet_fen + 100_000)
    patient = await w.api.enroll(region=region, birth=dt.date(1990, 1, 1), scheme=scheme, balance_fen=own_fen)
    await w.stub.OpenWallet(wallet_pb2.OpenWalletRequest(person_id=patient), metadata=bearer(w.api.tokens.app))
    left = wallet_fen
    while left:
        amount = min(left, 200_000)
        sent = await w.send(parent, patient, amount, relationship=CHILD)
        await w.accept(sent.transfer)
        left -= amount
    assert (await w.wallet(patient)).balance_fen == wallet_fen
    return patient, parent


@pytest.fixture(scope="module")
async def wallet_server(db_url: str, server_pool: asyncpg.Pool) -> AsyncIterator[tuple[server.Running, ManualClock]]:
    clock = ManualClock(at(dt.date(2031, 1, 1), 10))
    settings = Settings(
        database_url=db_url, voucher_key=VOUCHER_KEY.decode(), grpc_listen="127.0.0.1:0", wallet_expiry_interval_s=3600
    )
    app = App(settings, server_pool, VoucherCodec({"k1": VOUCHER_KEY}, "k1"), clock)
    running = await server.start(app, "127.0.0.1:0")
    try:
        yield running, clock
    finally:
        await running.stop(1.0)


@pytest.fixture
async def w(
    wallet_server: tuple[server.Running, ManualClock], tokens: Tokens, pool: asyncpg.Pool, server_pool: asyncpg.Pool
) -> AsyncIterator[Wallets]:
    running, clock = wallet_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        clock.set(at(a_day(), 10))
        yield Wallets(clock, wallet_pb2_grpc.WalletServiceStub(channel), Api(channel, tokens), pool, server_pool)
