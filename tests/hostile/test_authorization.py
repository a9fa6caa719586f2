"""The authorization matrix: every credential kind against every RPC, with the code expected in each
cell, and nothing written by a refused call.

Each cell sends a request that is valid for the RPC (fresh people, settlements, vouchers as needed),
so a refusal is the credential's doing and an allowed call shows what the credential may do: a
terminal of institution B may settle, but not refund, read or reconcile what institution A settled.
The rules are in src/gongji/api/auth.py: terminal -> SettlementService; app -> FamilyService and
AccountService GetAccount/ListLedger/PayPremium, and WalletService; operator -> AccountService but
PayPremium, and Reconcile, CheckTotals and CheckDetail for any institution.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.message import Message
from harness import fingerprint, reason_of
from support import CHILD, INSTITUTION_A, INSTITUTION_B, RESIDENT, Api, bearer, new_person_id, reverse

from gongji.api.family import china_today
from gongji.store import credentials
from gongji.store.credentials import Kind
from gongji.v1 import account_pb2, events_pb2, family_pb2, settlement_pb2, types_pb2, wallet_pb2

S = grpc.StatusCode
OLD, YOUNG = dt.date(1960, 1, 1), dt.date(1990, 1, 1)

CREDENTIALS = ("none", "wrong", "malformed", "revoked", "terminal_a", "terminal_b", "app", "operator", "consumer")

OK = (S.OK, "")
MISSING = (S.UNAUTHENTICATED, "CREDENTIALS_MISSING")
INVALID = (S.UNAUTHENTICATED, "CREDENTIALS_INVALID")
DENIED = (S.PERMISSION_DENIED, "NOT_ALLOWED")
MISMATCH = (S.PERMISSION_DENIED, "INSTITUTION_MISMATCH")

# No credential, an unknown token, a header that is not a bearer token, a revoked token: refused by
# every RPC, before anything else is looked at.
_NOBODY = {"none": MISSING, "wrong": INVALID, "malformed": INVALID, "revoked": INVALID}


def _row(
    *,
    terminal_a: Any = DENIED,
    terminal_b: Any = DENIED,
    app: Any = DENIED,
    operator: Any = DENIED,
    consumer: Any = DENIED,
) -> Any:
    return _NOBODY | {
        "terminal_a": terminal_a,
        "terminal_b": terminal_b,
        "app": app,
        "operator": operator,
        "consumer": consumer,
    }


# The matrix. Institution A's terminal owns the settlements the requests name.
EXPECTED: dict[str, dict[str, tuple[S, str]]] = {
    "SettlementService/Quote": _row(terminal_a=OK, terminal_b=OK),
    "SettlementService/Settle": _row(terminal_a=OK, terminal_b=OK),
    # A's hold: another institution's is answered as not found.
    "SettlementService/ReleaseHold": _row(terminal_a=OK, terminal_b=(S.NOT_FOUND, "HOLD_NOT_FOUND")),
    "SettlementService/Cancel": _row(terminal_a=OK, terminal_b=MISMATCH),
    # B reverses its own request id of that name: nothing of A's is undone (checked below).
    "SettlementService/Reverse": _row(terminal_a=OK, terminal_b=OK),
    # Another institution's settlement is answered as not found (nothing about it is revealed).
    "SettlementService/GetSettlement": _row(terminal_a=OK, terminal_b=(S.NOT_FOUND, "SETTLEMENT_NOT_FOUND")),
    "SettlementService/Reconcile": _row(terminal_a=OK, terminal_b=MISMATCH, operator=OK),
    "SettlementService/CheckTotals": _row(terminal_a=OK, terminal_b=MISMATCH, operator=OK),
    "SettlementService/CheckDetail": _row(terminal_a=OK, terminal_b=MISMATCH, operator=OK),
    "FamilyService/Bind": _row(app=OK),
    "FamilyService/Unbind": _row(app=OK),
    "FamilyService/ListFamily": _row(app=OK),
    "FamilyService/Grant": _row(app=OK),
    "FamilyService/Revoke": _row(app=OK),
    "FamilyService/SetGrantCap": _row(app=OK),
    "FamilyService/IssueVoucher": _row(app=OK),
    "AccountService/Enroll": _row(operator=OK),
    "AccountService/Credit": _row(operator=OK),
    "AccountService/GetAccount": _row(app=OK, operator=OK),
    "AccountService/ListLedger": _row(app=OK, operator=OK),
    "AccountService/SetRegionPolicy": _row(operator=OK),
    "AccountService/ListRegionPolicies": _row(operator=OK),
    # Operators set premium rates, refund and report; only the app backend pays (moves the person's
    # money at the person's request): neither an operator nor a terminal may.
    "AccountService/SetPremiumRate": _row(operator=OK),
    "AccountService/ListPremiumRates": _row(operator=OK),
    "AccountService/PayPremium": _row(app=OK),
    "AccountService/RefundPremium": _row(operator=OK),
    "AccountService/ReportPremiums": _row(operator=OK),
    # The 医保钱包 moves a person's money at the person's request: the app backend only.
    "WalletService/OpenWallet": _row(app=OK),
    "WalletService/GetWallet": _row(app=OK),
    "WalletService/SendTransfer": _row(app=OK),
    "WalletService/AcceptTransfer": _row(app=OK),
    "WalletService/DeclineTransfer": _row(app=OK),
    "WalletService/ListTransfers": _row(app=OK),
    # Events: a downstream system (ID numbers masked), the app backend and operators; no terminal.
    "EventService/StreamEvents": _row(app=OK, operator=OK, consumer=OK),
}


@dataclass
class Scene:
    """What the requests name, made with the right credentials before each cell."""

    api: Api
    authorizer: str
    patient: str
    settled: types_pb2.Settlement  # by institution A


async def _settled_at_a(scene: Scene, amount_fen: int = 300) -> types_pb2.Settlement:
    return (await scene.api.settle(scene.patient, amount_fen)).settlement


async def _bound(scene: Scene) -> tuple[str, str]:
    holder = await scene.api.enroll(birth=OLD)
    member = await scene.api.enroll(scheme=RESIDENT, birth=dt.date(2018, 1, 1))
    await scene.api.bind(holder, member, face_verification_ref="")
    return holder, member


async def _granted(scene: Scene, region: str = "610100") -> tuple[str, str]:
    authorizer = await scene.api.enroll(birth=OLD, region=region, balance_fen=1_000)
    beneficiary = await scene.api.enroll(scheme=RESIDENT, birth=YOUNG, region=region)
    await scene.api.grant(authorizer, beneficiary, CHILD)
    return authorizer, beneficiary


async def _make_request(rpc: str, scene: Scene) -> Message:
    """A valid request for `rpc`, with whatever it needs created first."""
    api, patient = scene.api, scene.patient
    match rpc:
        case "SettlementService/Quote":
            return settlement_pb2.QuoteRequest(voucher=await api.voucher(patient), patient_id=patient, amount_fen=100)
        case "SettlementService/Settle":
            voucher, rid = await api.voucher(patient), f"matrix-{uuid.uuid4()}"
            return settlement_pb2.SettleRequest(request_id=rid, voucher=voucher, patient_id=patient, amount_fen=100)
        case "SettlementService/ReleaseHold":
            held = await api.settlement.Quote(
                settlement_pb2.QuoteRequest(
                    voucher=await api.voucher(patient),
                    patient_id=patient,
                    amount_fen=100,
                    hold_seconds=60,
                    request_id=f"matrix-{uuid.uuid4()}",
                ),
                metadata=bearer(api.tokens.terminal_a),
            )
            return settlement_pb2.ReleaseHoldRequest(hold_id=held.hold.hold_id)
        case "SettlementService/Cancel":
            s = await _settled_at_a(scene)
            return settlement_pb2.CancelRequest(request_id=f"matrix-{uuid.uuid4()}", settlement_id=s.settlement_id)
        case "SettlementService/Reverse":
            return settlement_pb2.ReverseRequest(original_request_id=(await _settled_at_a(scene)).request_id)
        case "SettlementService/GetSettlement":
            return settlement_pb2.GetSettlementRequest(settlement_id=scene.settled.settlement_id)
        case "SettlementService/Reconcile":
            return settlement_pb2.ReconcileRequest(date=china_today().isoformat(), institution_id=INSTITUTION_A)
        case "SettlementService/CheckTotals":
            today = china_today().isoformat()
            return settlement_pb2.CheckTotalsRequest(institution_id=INSTITUTION_A, start_date=today, end_date=today)
        case "SettlementService/CheckDetail":
            today = china_today().isoformat()
            row = settlement_pb2.DetailRow(
                kind=settlement_pb2.DETAIL_KIND_SETTLEMENT,
                request_id=scene.settled.request_id,
                amounts=settlement_pb2.DetailAmounts(amount_fen=1, psn_cash_pay_fen=1),
            )
            return settlement_pb2.CheckDetailRequest(
                institution_id=INSTITUTION_A, start_date=today, end_date=today, rows=[row]
            )
        case "FamilyService/Bind":
            holder = await api.enroll(birth=OLD)
            member = await api.enroll(scheme=RESIDENT, birth=dt.date(2018, 1, 1), name="王小宝")
            return family_pb2.BindRequest(
                holder_id=holder,
                member_id=member,
                relationship=CHILD,
                member_name="王小宝",
                document_type=types_pb2.DOCUMENT_TYPE_RESIDENT_ID_CARD,
                document_number=member,
                birth_date="2018-01-01",
                phone="13800138000",
                reason="代孩子出示医保码",
            )
        case "FamilyService/Unbind":
            holder, member = await _bound(scene)
            return family_pb2.UnbindRequest(holder_id=holder, member_id=member)
        case "FamilyService/ListFamily":
            return family_pb2.ListFamilyRequest(person_id=scene.authorizer)
        case "FamilyService/Grant":
            authorizer = await api.enroll(birth=OLD)
            beneficiary = await api.enroll(scheme=RESIDENT, birth=YOUNG)
            return family_pb2.GrantRequest(authorizer_id=authorizer, beneficiary_id=beneficiary, relationship=CHILD)
        case "FamilyService/Revoke":
            authorizer, beneficiary = await _granted(scene)
            return family_pb2.RevokeRequest(authorizer_id=authorizer, beneficiary_id=beneficiary)
        case "FamilyService/SetGrantCap":
            authorizer, beneficiary = await _granted(scene)
            return family_pb2.SetGrantCapRequest(authorizer_id=authorizer, beneficiary_id=beneficiary, yearly_cap_fen=0)
        case "FamilyService/IssueVoucher":
            return family_pb2.IssueVoucherRequest(person_id=patient)
        case "AccountService/Enroll":
            return account_pb2.EnrollRequest(
                person_id=new_person_id(YOUNG),
                name="测试人",
                birth_date=YOUNG.isoformat(),
                region_code="610100",
                scheme=types_pb2.SCHEME_EMPLOYEE,
                status=types_pb2.PERSON_STATUS_ACTIVE,
            )
        case "AccountService/Credit":
            return account_pb2.CreditRequest(request_id=f"matrix-{uuid.uuid4()}", person_id=patient, amount_fen=100)
        case "AccountService/GetAccount":
            return account_pb2.GetAccountRequest(person_id=patient)
        case "AccountService/ListLedger":
            return account_pb2.ListLedgerRequest(person_id=patient)
        case "AccountService/SetRegionPolicy":
            # A region no other test uses, set to what the default already is: allowed calls change
            # nothing that the rest of the suite could notice.
            return account_pb2.SetRegionPolicyRequest(
                policy=account_pb2.RegionPolicy(
                    region_key="659001",
                    scope=types_pb2.GRANT_SCOPE_PROVINCE,
                    allowed_relationships=[types_pb2.RELATIONSHIP_SPOUSE, types_pb2.RELATIONSHIP_PARENT, CHILD],
                )
            )
        case "AccountService/ListRegionPolicies":
            return account_pb2.ListRegionPoliciesRequest()
        case "AccountService/SetPremiumRate":
            # The rate the scene set, set again: allowed calls change nothing the suite could notice.
            return account_pb2.SetPremiumRateRequest(rate=_premium_rate())
        case "AccountService/ListPremiumRates":
            return account_pb2.ListPremiumRatesRequest()
        case "AccountService/PayPremium":
            payer, beneficiary = await _granted(scene, PREMIUM_REGION)
            return _pay_request(payer, beneficiary)
        case "AccountService/RefundPremium":
            payer, beneficiary = await _granted(scene, PREMIUM_REGION)
            paid = await api.account.PayPremium(_pay_request(payer, beneficiary), metadata=bearer(api.tokens.app))
            return account_pb2.RefundPremiumRequest(payment_id=paid.payment.payment_id, reason="matrix")
        case "AccountService/ReportPremiums":
            today = china_today().isoformat()
            return account_pb2.ReportPremiumsRequest(from_date=today, to_date=today)
    if rpc.startswith("WalletService/"):
        return await _wallet_request(rpc, scene)
    if rpc == "EventService/StreamEvents":
        return events_pb2.StreamEventsRequest(max_events=1)
    raise AssertionError(f"no request for {rpc}")


# A 统筹区 of its own for the matrix's wallet senders, without quiet hours: the session server keeps
# the machine's clock, and a send must be allowed at whatever hour the suite runs.
WALLET_REGION = "659002"


async def _wallet_pair(scene: Scene) -> tuple[str, str]:
    """A parent able to send, and their child with an open wallet."""
    parent = await scene.api.enroll(birth=OLD, region=WALLET_REGION, balance_fen=1_000)
    child = await scene.api.enroll(scheme=RESIDENT, birth=YOUNG, region=WALLET_REGION)
    await scene.api.wallet.OpenWallet(
        wallet_pb2.OpenWalletRequest(person_id=child), metadata=bearer(scene.api.tokens.app)
    )
    return parent, child


def _send_request(parent: str, child: str) -> wallet_pb2.SendTransferRequest:
    return wallet_pb2.SendTransferRequest(
        request_id=f"matrix-{uuid.uuid4()}", sender_id=parent, recipient_id=child, relationship=CHILD, amount_fen=100
    )


async def _wallet_request(rpc: str, scene: Scene) -> Message:
    api = scene.api
    match rpc:
        case "WalletService/OpenWallet":
            return wallet_pb2.OpenWalletRequest(person_id=await api.enroll(scheme=RESIDENT, birth=YOUNG))
        case "WalletService/GetWallet" | "WalletService/ListTransfers":
            _, child = await _wallet_pair(scene)
            cls = wallet_pb2.GetWalletRequest if rpc.endswith("GetWallet") else wallet_pb2.ListTransfersRequest
            return cls(person_id=child)
        case "WalletService/SendTransfer":
            return _send_request(*await _wallet_pair(scene))
        case "WalletService/AcceptTransfer" | "WalletService/DeclineTransfer":
            sent = await api.wallet.SendTransfer(
                _send_request(*await _wallet_pair(scene)), metadata=bearer(api.tokens.app)
            )
            t = sent.transfer
            if rpc.endswith("AcceptTransfer"):
                return wallet_pb2.AcceptTransferRequest(transfer_id=t.transfer_id, recipient_id=t.recipient_id)
            return wallet_pb2.DeclineTransferRequest(transfer_id=t.transfer_id, recipient_id=t.recipient_id)
    raise AssertionError(f"no request for {rpc}")


# A 统筹区 of its own for the premiums the matrix pays (rates are shared by the session).
PREMIUM_REGION = "618801"


def _premium_rate() -> account_pb2.PremiumRate:
    today = china_today()
    return account_pb2.PremiumRate(
        region_key=PREMIUM_REGION,
        year=today.year + 1,
        amount_fen=100,
        opens_on=f"{today.year}-01-01",
        closes_on=f"{today.year + 1}-12-31",
    )


def _pay_request(payer: str, beneficiary: str) -> account_pb2.PayPremiumRequest:
    return account_pb2.PayPremiumRequest(
        request_id=f"matrix-{uuid.uuid4()}", payer_id=payer, beneficiary_id=beneficiary, year=china_today().year + 1
    )


@pytest.fixture(scope="module")
async def scene(api: Api, pool: asyncpg.Pool) -> AsyncIterator[Scene]:
    authorizer = await api.enroll(balance_fen=1_000_000, birth=OLD)
    patient = await api.enroll(balance_fen=1_000, birth=YOUNG)
    await api.grant(authorizer, patient, CHILD)
    scene = Scene(api, authorizer, patient, types_pb2.Settlement())
    scene.settled = await _settled_at_a(scene)
    await api.account.SetPremiumRate(
        account_pb2.SetPremiumRateRequest(rate=_premium_rate()), metadata=bearer(api.tokens.operator)
    )
    no_quiet_hours = account_pb2.WalletPolicy(quiet_from="00:00", quiet_until="00:00")
    await api.set_policy(WALLET_REGION, types_pb2.GRANT_SCOPE_PROVINCE, [CHILD], wallet=no_quiet_hours)
    try:
        yield scene
    finally:
        await pool.execute("delete from region_policy where region_key = $1", WALLET_REGION)


@pytest.fixture(scope="module")
async def metadata(api: Api, pool: asyncpg.Pool) -> dict[str, tuple[tuple[str, str], ...] | None]:
    revoked = await credentials.create(pool, Kind.OPERATOR, "matrix revoked")
    await pool.execute(
        "update credential set revoked_at = now() where token_sha256 = $1", credentials.token_hash(revoked)
    )
    t = api.tokens
    return {
        "none": None,
        "wrong": bearer(credentials.new_token()),
        "malformed": (("authorization", f"Basic {t.operator}"),),
        "revoked": bearer(revoked),
        "terminal_a": bearer(t.terminal_a),
        "terminal_b": bearer(t.terminal_b),
        "app": bearer(t.app),
        "operator": bearer(t.operator),
        "consumer": bearer(t.consumer),
    }


def _stub_call(api: Api, rpc: str) -> Callable[..., Awaitable[Any]]:
    service, method = rpc.split("/")
    if service == "EventService":  # a stream: read to its end

        async def drained(request: Message, **options: Any) -> list[Any]:
            return [reply async for reply in api.events.StreamEvents(request, **options)]

        return drained
    stubs = {"SettlementService": api.settlement, "FamilyService": api.family, "AccountService": api.account}
    stub = (stubs | {"WalletService": api.wallet})[service]
    call: Callable[..., Awaitable[Any]] = getattr(stub, method)
    return call


def test_the_matrix_names_every_rpc_and_every_credential() -> None:
    from gongji.api.server import SERVICE_NAMES
    from gongji.v1 import account_pb2 as a
    from gongji.v1 import events_pb2 as e
    from gongji.v1 import family_pb2 as f
    from gongji.v1 import settlement_pb2 as s
    from gongji.v1 import wallet_pb2 as w

    files = {
        "gongji.v1.SettlementService": s,
        "gongji.v1.FamilyService": f,
        "gongji.v1.AccountService": a,
        "gongji.v1.WalletService": w,
        "gongji.v1.EventService": e,
    }
    rpcs = {
        f"{name.split('.')[-1]}/{m.name}"
        for name in SERVICE_NAMES
        for m in files[name].DESCRIPTOR.services_by_name[name.split(".")[-1]].methods
    }
    assert set(EXPECTED) == rpcs
    assert all(set(row) == set(CREDENTIALS) for row in EXPECTED.values())


@pytest.mark.parametrize("rpc", sorted(EXPECTED))
async def test_authorization_matrix(
    rpc: str, scene: Scene, metadata: dict[str, Any], api: Api, pool: asyncpg.Pool
) -> None:
    wrong_cells = []
    for who in CREDENTIALS:
        request = await _make_request(rpc, scene)
        before = await fingerprint(pool)
        try:
            reply = await _stub_call(api, rpc)(request, metadata=metadata[who], timeout=30)
            got = OK
        except grpc.aio.AioRpcError as error:
            reply, got = None, (error.code(), reason_of(error))
        if got != EXPECTED[rpc][who]:
            wrong_cells.append((who, EXPECTED[rpc][who], got))
        if got != OK:
            assert await fingerprint(pool) == before, (rpc, who, "a refused call wrote")
        if rpc == "SettlementService/Reverse" and got == OK:
            # Reverse is scoped by the caller's institution: B's reversal of that id undoes nothing of A's.
            assert reply.undone == (who == "terminal_a"), (who, reply)
    assert wrong_cells == [], wrong_cells


async def test_another_institutions_settlement_is_neither_seen_nor_touched(scene: Scene, api: Api) -> None:
    """Terminal B names institution A's settlement every way it can: by id, by request id, to refund, to
    reverse, to reconcile. Nothing about it is revealed, nothing moves."""
    s = await _settled_at_a(scene, 500)
    b = bearer(api.tokens.terminal_b)
    balances = (await api.balance(scene.authorizer), await api.balance(scene.patient))
    by_request = settlement_pb2.GetSettlementRequest(request_id=s.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.settlement.GetSettlement(by_request, metadata=b)
    assert (caught.value.code(), reason_of(caught.value)) == (S.NOT_FOUND, "SETTLEMENT_NOT_FOUND")
    assert not (await reverse(api, s.request_id, token=api.tokens.terminal_b)).undone
    reconciled = await api.settlement.Reconcile(
        settlement_pb2.ReconcileRequest(date=china_today().isoformat(), detail=True, page_size=1_000), metadata=b
    )
    assert reconciled.institution_id == INSTITUTION_B
    assert s.settlement_id not in {x.settlement_id for x in reconciled.settlements}
    # B's detail check naming A's request id, with A's amounts: missing in gongji (B's books), no more.
    today = china_today().isoformat()
    amounts = settlement_pb2.DetailAmounts(
        amount_fen=s.amount_fen, acct_pay_fen=s.acct_pay_fen, acct_mulaid_pay_fen=s.acct_mulaid_pay_fen,
        psn_cash_pay_fen=s.psn_cash_pay_fen,
    )  # fmt: skip
    row = settlement_pb2.DetailRow(kind=settlement_pb2.DETAIL_KIND_SETTLEMENT, request_id=s.request_id, amounts=amounts)
    key = settlement_pb2.DetailKey(kind=row.kind, request_id=s.request_id)
    checked = await api.settlement.CheckDetail(
        settlement_pb2.CheckDetailRequest(start_date=today, end_date=today, after_key=key, rows=[]), metadata=b
    )
    assert s.request_id not in {d.key.request_id for d in checked.differences}
    checked = await api.settlement.CheckDetail(
        settlement_pb2.CheckDetailRequest(
            start_date=today, end_date=today, rows=[row], through_key=key,
        ), metadata=b,
    )  # fmt: skip
    [named] = [d for d in checked.differences if d.key.request_id == s.request_id]
    assert (named.difference, named.settlement_id, named.HasField("gongji")) == (
        settlement_pb2.DETAIL_DIFFERENCE_KIND_MISSING_IN_GONGJI, "", False,
    )  # fmt: skip
    assert s.settlement_id not in {d.settlement_id for d in checked.differences}
    mine = await api.settlement.GetSettlement(
        settlement_pb2.GetSettlementRequest(settlement_id=s.settlement_id), metadata=bearer(api.tokens.terminal_a)
    )
    assert (mine.settlement.refunded_fen, mine.settlement.HasField("reversed_at")) == (0, False)
    assert (await api.balance(scene.authorizer), await api.balance(scene.patient)) == balances
