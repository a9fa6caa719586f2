"""Hostile input on the WalletService, case by case: every bad field of every RPC is INVALID_ARGUMENT
(INVALID_AMOUNT when only the amount is bad) with exactly one gongji ErrorInfo, writes nothing, and the
server keeps serving. A transfer named by someone it is not addressed to is TRANSFER_NOT_FOUND and stays
as it was. (test_hostile_input.py also sends generated values to every wallet RPC.)"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import fingerprint, reason_of
from support import CHILD, RESIDENT, Api, bearer, new_person_id

from gongji import limits
from gongji.api import pages
from gongji.domain.people import resident_id_check_char
from gongji.v1 import account_pb2, types_pb2, wallet_pb2

S = grpc.StatusCode
OLD, YOUNG = dt.date(1960, 1, 1), dt.date(1990, 1, 1)
# A 统筹区 of its own, without quiet hours: the session server keeps the machine's clock.
REGION = "659003"
AN_ID = str(uuid.uuid4())

# Person ids no one has or can have: empty, malformed, a bad check character, odd characters, huge.
_WRONG_CHECK = "0" if resident_id_check_char("61010219920315402") != "0" else "1"
BAD_PEOPLE = [
    "",
    "x",
    "61010219920315402" + _WRONG_CHECK,
    "610102199203154021\x00",
    "６１０１０２１９９２０３１５４０２Ｘ",
    "9" * 70_000,
]
BAD_TRANSFER_IDS = ["", "not-a-uuid", "{" + AN_ID[1:35] + "}", AN_ID + " ", "-" * 36, AN_ID.replace("-", "")]
BAD_TOKENS = [
    "p1",
    pages.encode("2024-01-01", AN_ID),  # no offset
    pages.encode("2024-01-01T00:00:00+08:00", "not-a-uuid"),
    pages.encode("2024-01-01T00:00:00+08:00"),
    pages.encode("x", "y", "z"),
    "x" * (limits.PAGE_TOKEN_LEN_MAX + 1),
    pages.encode("0001-01-01T00:00:00+14:00", AN_ID),  # an instant the driver cannot encode
    pages.encode("9999-12-31T23:59:59-14:00", AN_ID),
]


@pytest.fixture(scope="module")
async def people(api: Api, pool: asyncpg.Pool) -> AsyncIterator[tuple[str, str]]:
    """A parent able to send, at any hour, and their child with an open wallet."""
    wallet = account_pb2.WalletPolicy(quiet_from="00:00", quiet_until="00:00")
    await api.set_policy(REGION, types_pb2.GRANT_SCOPE_PROVINCE, [CHILD], wallet=wallet)
    parent = await api.enroll(birth=OLD, region=REGION, balance_fen=10_000)
    child = await api.enroll(scheme=RESIDENT, birth=YOUNG, region=REGION)
    await api.wallet.OpenWallet(wallet_pb2.OpenWalletRequest(person_id=child), metadata=bearer(api.tokens.app))
    try:
        yield parent, child
    finally:
        await pool.execute("delete from region_policy where region_key = $1", REGION)


def _send(sender: str, recipient: str, **change: Any) -> wallet_pb2.SendTransferRequest:
    fields = dict(request_id=f"h-{uuid.uuid4()}", sender_id=sender, recipient_id=recipient, relationship=CHILD)
    return wallet_pb2.SendTransferRequest(**(fields | {"amount_fen": 100} | change))


def _cases(parent: str, child: str) -> list[tuple[str, Message, str]]:
    """(method, request, reason) for each bad request."""
    w = wallet_pb2
    cases: list[tuple[str, Message, str]] = []
    for bad in BAD_PEOPLE:
        cases += [
            ("OpenWallet", w.OpenWalletRequest(person_id=bad), "INVALID_ARGUMENT"),
            ("GetWallet", w.GetWalletRequest(person_id=bad), "INVALID_ARGUMENT"),
            ("ListTransfers", w.ListTransfersRequest(person_id=bad), "INVALID_ARGUMENT"),
            ("SendTransfer", _send(bad, child), "INVALID_ARGUMENT"),
            ("SendTransfer", _send(parent, bad), "INVALID_ARGUMENT"),
            ("AcceptTransfer", w.AcceptTransferRequest(transfer_id=AN_ID, recipient_id=bad), "INVALID_ARGUMENT"),
            ("DeclineTransfer", w.DeclineTransferRequest(transfer_id=AN_ID, recipient_id=bad), "INVALID_ARGUMENT"),
        ]
    for amount in (0, -1, -(2**63), limits.AMOUNT_FEN_MAX + 1, 2**63 - 1):
        cases.append(("SendTransfer", _send(parent, child, amount_fen=amount), "INVALID_AMOUNT"))
    for relationship in (types_pb2.RELATIONSHIP_UNSPECIFIED, 9, 99, -1, 2**31 - 1):
        cases.append(("SendTransfer", _send(parent, child, relationship=relationship), "INVALID_ARGUMENT"))
    for request_id in ("", " ", "a b", "x" * (limits.REQUEST_ID_LEN_MAX + 1), "王"):
        cases.append(("SendTransfer", _send(parent, child, request_id=request_id), "INVALID_ARGUMENT"))
    cases += [
        ("SendTransfer", _send(parent, parent), "INVALID_ARGUMENT"),  # to oneself
        ("SendTransfer", _send(child, child, amount_fen=0), "INVALID_ARGUMENT"),  # and a bad amount
    ]
    for bad_id in BAD_TRANSFER_IDS:
        cases += [
            ("AcceptTransfer", w.AcceptTransferRequest(transfer_id=bad_id, recipient_id=child), "INVALID_ARGUMENT"),
            ("DeclineTransfer", w.DeclineTransferRequest(transfer_id=bad_id, recipient_id=child), "INVALID_ARGUMENT"),
        ]
    for token in BAD_TOKENS:
        cases.append(("ListTransfers", w.ListTransfersRequest(person_id=child, page_token=token), "INVALID_ARGUMENT"))
    for size in (-1, limits.LEDGER_PAGE_SIZE_MAX + 1, -(2**31)):
        cases.append(("ListTransfers", w.ListTransfersRequest(person_id=child, page_size=size), "INVALID_ARGUMENT"))
    return cases


async def test_bad_input_to_every_wallet_rpc_is_refused_and_writes_nothing(
    api: Api, pool: asyncpg.Pool, channel: grpc.aio.Channel, people: tuple[str, str]
) -> None:
    parent, child = people
    cases = _cases(parent, child)
    assert {m for m, _, _ in cases} == set(wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].methods_by_name)
    wrong = []
    for method, request, reason in cases:
        before = await fingerprint(pool)
        try:
            await getattr(api.wallet, method)(request, metadata=bearer(api.tokens.app), timeout=30)
            wrong.append((method, str(request)[:120], "OK"))
        except grpc.aio.AioRpcError as error:
            got = (error.code(), reason_of(error))
            if got != (S.INVALID_ARGUMENT, reason):
                wrong.append((method, str(request)[:120], got, error.details()))
        assert await fingerprint(pool) == before, (method, request)
    assert wrong == []
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    sent = await api.wallet.SendTransfer(_send(parent, child), metadata=bearer(api.tokens.app))
    assert sent.transfer.state == wallet_pb2.TRANSFER_STATE_PENDING
    await api.wallet.DeclineTransfer(
        wallet_pb2.DeclineTransferRequest(transfer_id=sent.transfer.transfer_id, recipient_id=child),
        metadata=bearer(api.tokens.app),
    )


async def test_another_persons_transfer_is_not_found_and_stays_pending(
    api: Api, pool: asyncpg.Pool, people: tuple[str, str]
) -> None:
    """The sender, a stranger with a wallet, someone not enrolled, and no transfer at all: none of them
    can accept or decline it, nor learn that it exists."""
    parent, child = people
    app = bearer(api.tokens.app)
    stranger = await api.enroll(scheme=RESIDENT, birth=YOUNG, region=REGION)
    await api.wallet.OpenWallet(wallet_pb2.OpenWalletRequest(person_id=stranger), metadata=app)
    t = (await api.wallet.SendTransfer(_send(parent, child, amount_fen=300), metadata=app)).transfer
    before = await fingerprint(pool)
    names = [(t.transfer_id, who) for who in (parent, stranger, new_person_id())] + [(str(uuid.uuid4()), child)]
    for transfer_id, who in names:
        for method, cls in (
            ("AcceptTransfer", wallet_pb2.AcceptTransferRequest),
            ("DeclineTransfer", wallet_pb2.DeclineTransferRequest),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(api.wallet, method)(cls(transfer_id=transfer_id, recipient_id=who), metadata=app)
            assert (caught.value.code(), reason_of(caught.value)) == (S.NOT_FOUND, "TRANSFER_NOT_FOUND")
            assert str(t.transfer_id) not in caught.value.details()
    assert await fingerprint(pool) == before
    listed = await api.wallet.ListTransfers(wallet_pb2.ListTransfersRequest(person_id=stranger), metadata=app)
    assert list(listed.transfers) == []
    # Its recipient still can: the money moves once.
    declined = await api.wallet.DeclineTransfer(
        wallet_pb2.DeclineTransferRequest(transfer_id=t.transfer_id, recipient_id=child), metadata=app
    )
    assert (declined.transfer.state, declined.replayed) == (wallet_pb2.TRANSFER_STATE_VOIDED, False)
