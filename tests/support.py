"""Helpers for tests that drive the real gRPC server: typed calls per credential, refusal checks."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gongji.config import Settings
from gongji.domain.people import resident_id_check_char
from gongji.v1 import (
    account_pb2,
    account_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    family_pb2,
    family_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
    types_pb2,
    wallet_pb2_grpc,
)

# asyncpg's statement cache for the suite's pools, as the server would set it: 0 when the suite runs
# through PgBouncer < 1.21 (scripts/pgbouncer_run.py sets GONGJI_DB_STATEMENT_CACHE_SIZE).
STATEMENT_CACHE_SIZE = Settings().db_statement_cache_size

EMPLOYEE = types_pb2.SCHEME_EMPLOYEE
RESIDENT = types_pb2.SCHEME_RESIDENT
ACTIVE = types_pb2.PERSON_STATUS_ACTIVE
SUSPENDED = types_pb2.PERSON_STATUS_SUSPENDED
TERMINATED = types_pb2.PERSON_STATUS_TERMINATED
SPOUSE = types_pb2.RELATIONSHIP_SPOUSE
PARENT = types_pb2.RELATIONSHIP_PARENT
CHILD = types_pb2.RELATIONSHIP_CHILD

_used_ids: set[str] = set()
_rng = random.Random()


def new_person_id(birth: dt.date = dt.date(1985, 6, 1)) -> str:
    """A fresh, valid 18-character ID number, unique within the test session."""
    while True:
        first17 = f"{_rng.randint(110000, 659999)}{birth:%Y%m%d}{_rng.randint(0, 999):03d}"
        person_id = first17 + resident_id_check_char(first17)
        if person_id not in _used_ids:
            _used_ids.add(person_id)
            return person_id


def used_person_ids() -> set[str]:
    return set(_used_ids)


def with_database(server_url: str, name: str) -> str:
    """`server_url` pointing at database `name` (works for TCP and Unix-socket URLs)."""
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


@dataclass(frozen=True)
class Tokens:
    terminal_a: str
    terminal_b: str
    app: str
    operator: str
    consumer: str = ""  # a downstream system's: EventService, ID numbers masked


INSTITUTION_A = "H61010300101"
INSTITUTION_B = "H61010300202"


@asynccontextmanager
async def account_row_held(pool: asyncpg.Pool, person_id: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction of its own holding `person_id`'s account row FOR UPDATE, as a concurrent
    settlement would, until the block ends (then it commits); yields its connection."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select 1 from account where person_id = $1 for update", person_id)
        yield conn


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Api:
    """The four services, each called with the credential it expects (overridable per call)."""

    def __init__(self, channel: grpc.aio.Channel, tokens: Tokens) -> None:
        self.tokens = tokens
        # What enroll() recorded of each person, so bind() can present matching identity data.
        self.people: dict[str, tuple[str, dt.date]] = {}
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
        self.family = family_pb2_grpc.FamilyServiceStub(channel)
        self.account = account_pb2_grpc.AccountServiceStub(channel)
        self.wallet = wallet_pb2_grpc.WalletServiceStub(channel)
        self.events = events_pb2_grpc.EventServiceStub(channel)

    async def read_events(self, after: int = 0, *, token: str | None = None, **request: Any) -> list[events_pb2.Event]:
        """The events after position `after` up to the newest (an operator's view unless `token`)."""
        call = self.events.StreamEvents(
            events_pb2.StreamEventsRequest(after_position=after, **request),
            metadata=bearer(token or self.tokens.operator),
            timeout=30,
        )
        return [r.event async for r in call]

    async def enroll(
        self,
        *,
        scheme: int = EMPLOYEE,
        status: int = ACTIVE,
        region: str = "610100",
        birth: dt.date = dt.date(1985, 6, 1),
        balance_fen: int = 0,
        person_id: str | None = None,
        name: str = "测试人",
        document_type: int = 0,
        document_number: str = "",
    ) -> str:
        person_id = person_id or new_person_id(birth)
        await self.account.Enroll(
            account_pb2.EnrollRequest(
                person_id=person_id,
                name=name,
                birth_date=birth.isoformat(),
                region_code=region,
                scheme=scheme,
                status=status,
                document_type=document_type,
                document_number=document_number,
            ),
            metadata=bearer(self.tokens.operator),
        )
        self.people[person_id] = (name, birth)
        if balance_fen:
            await self.credit(person_id, balance_fen)
        return person_id

    async def set_status(self, person_id: str, status: int, *, scheme: int = EMPLOYEE, region: str = "610100") -> Any:
        name, birth = self.people[person_id]
        return await self.account.Enroll(
            account_pb2.EnrollRequest(
                person_id=person_id,
                name=name,
                birth_date=birth.isoformat(),
                region_code=region,
                scheme=scheme,
                status=status,
            ),
            metadata=bearer(self.tokens.operator),
        )

    async def credit(self, person_id: str, amount_fen: int, request_id: str | None = None) -> Any:
        return await self.account.Credit(
            account_pb2.CreditRequest(
                request_id=request_id or f"credit-{uuid.uuid4()}", person_id=person_id, amount_fen=amount_fen
            ),
            metadata=bearer(self.tokens.operator),
        )

    async def balance(self, person_id: str) -> int:
        reply = await self.account.GetAccount(
            account_pb2.GetAccountRequest(person_id=person_id), metadata=bearer(self.tokens.operator)
        )
        return int(reply.account.balance_fen)

    async def grant(self, authorizer_id: str, beneficiary_id: str, relationship: int = SPOUSE) -> Any:
        return await self.family.Grant(
            family_pb2.GrantRequest(
                authorizer_id=authorizer_id, beneficiary_id=beneficiary_id, relationship=relationship
            ),
            metadata=bearer(self.tokens.app),
        )

    async def revoke(self, authorizer_id: str, beneficiary_id: str, requester_id: str = "") -> Any:
        return await self.family.Revoke(
            family_pb2.RevokeRequest(
                authorizer_id=authorizer_id, beneficiary_id=beneficiary_id, requester_id=requester_id
            ),
            metadata=bearer(self.tokens.app),
        )

    async def voucher(
        self,
        person_id: str,
        ttl_seconds: int = 0,
        *,
        requester_id: str | None = None,
        authorizer_id: str | None = None,
    ) -> str:
        """An e-voucher naming `person_id`, carrying the grant of `authorizer_id` when given (the
        patient's pick in the app)."""
        reply = await self.family.IssueVoucher(
            family_pb2.IssueVoucherRequest(
                person_id=person_id,
                requester_id=requester_id or person_id,
                ttl_seconds=ttl_seconds,
                authorizer_id=authorizer_id,
            ),
            metadata=bearer(self.tokens.app),
        )
        return str(reply.voucher)

    async def bind(self, holder_id: str, member_id: str, **overrides: Any) -> family_pb2.BindResponse:
        """Bind with the member's enrolment data; `overrides` replace BindRequest fields."""
        name, birth = self.people[member_id]
        fields: dict[str, Any] = {
            "holder_id": holder_id,
            "member_id": member_id,
            "relationship": CHILD,
            "member_name": name,
            "document_type": types_pb2.DOCUMENT_TYPE_RESIDENT_ID_CARD,
            "document_number": member_id,
            "birth_date": birth.isoformat(),
            "phone": "13800138000",
            "reason": "代孩子出示医保码",
            "face_verification_ref": "face-ok-1",
        } | overrides
        reply: family_pb2.BindResponse = await self.family.Bind(
            family_pb2.BindRequest(**fields), metadata=bearer(self.tokens.app)
        )
        return reply

    async def unbind(self, holder_id: str, member_id: str) -> family_pb2.UnbindResponse:
        reply: family_pb2.UnbindResponse = await self.family.Unbind(
            family_pb2.UnbindRequest(holder_id=holder_id, member_id=member_id), metadata=bearer(self.tokens.app)
        )
        return reply

    async def list_family(self, person_id: str) -> family_pb2.ListFamilyResponse:
        reply: family_pb2.ListFamilyResponse = await self.family.ListFamily(
            family_pb2.ListFamilyRequest(person_id=person_id), metadata=bearer(self.tokens.app)
        )
        return reply

    async def set_policy(
        self, region_key: str, scope: int, allowed: list[int], **caps: Any
    ) -> account_pb2.SetRegionPolicyResponse:
        """`caps`: beneficiary_yearly_cap_fen, authorizer_floor_fen, accepted_certificate_types."""
        reply: account_pb2.SetRegionPolicyResponse = await self.account.SetRegionPolicy(
            account_pb2.SetRegionPolicyRequest(
                policy=account_pb2.RegionPolicy(
                    region_key=region_key, scope=scope, allowed_relationships=allowed, **caps
                )
            ),
            metadata=bearer(self.tokens.operator),
        )
        return reply

    async def set_grant_cap(
        self, authorizer_id: str, beneficiary_id: str, yearly_cap_fen: int | None, *, requester_id: str = ""
    ) -> family_pb2.SetGrantCapResponse:
        reply: family_pb2.SetGrantCapResponse = await self.family.SetGrantCap(
            family_pb2.SetGrantCapRequest(
                authorizer_id=authorizer_id,
                beneficiary_id=beneficiary_id,
                requester_id=requester_id,
                yearly_cap_fen=yearly_cap_fen,
            ),
            metadata=bearer(self.tokens.app),
        )
        return reply

    async def set_premium_rate(
        self, region_key: str, year: int, amount_fen: int, opens_on: dt.date, closes_on: dt.date
    ) -> account_pb2.SetPremiumRateResponse:
        rate = account_pb2.PremiumRate(
            region_key=region_key,
            year=year,
            amount_fen=amount_fen,
            opens_on=opens_on.isoformat(),
            closes_on=closes_on.isoformat(),
        )
        reply: account_pb2.SetPremiumRateResponse = await self.account.SetPremiumRate(
            account_pb2.SetPremiumRateRequest(rate=rate), metadata=bearer(self.tokens.operator)
        )
        return reply

    async def pay_premium(
        self,
        payer_id: str,
        beneficiary_id: str,
        year: int,
        *,
        request_id: str | None = None,
        token: str | None = None,
        deadline_s: float = 30,
    ) -> account_pb2.PayPremiumResponse:
        request = account_pb2.PayPremiumRequest(
            request_id=request_id or f"p-{uuid.uuid4()}", payer_id=payer_id, beneficiary_id=beneficiary_id, year=year
        )
        reply: account_pb2.PayPremiumResponse = await self.account.PayPremium(
            request, metadata=bearer(token or self.tokens.app), timeout=deadline_s
        )
        return reply

    async def refund_premium(
        self, payment_id: str, reason: str = "paid for the wrong person", *, token: str | None = None
    ) -> account_pb2.RefundPremiumResponse:
        reply: account_pb2.RefundPremiumResponse = await self.account.RefundPremium(
            account_pb2.RefundPremiumRequest(payment_id=payment_id, reason=reason),
            metadata=bearer(token or self.tokens.operator),
        )
        return reply

    async def ledger(self, person_id: str, page_size: int = 100) -> list[account_pb2.LedgerEntry]:
        reply = await self.account.ListLedger(
            account_pb2.ListLedgerRequest(person_id=person_id, page_size=page_size), metadata=bearer(self.tokens.app)
        )
        return list(reply.entries)

    async def settle(
        self,
        patient_id: str,
        amount_fen: int,
        *,
        voucher: str | None = None,
        request_id: str | None = None,
        authorizer_id: str | None = None,
        use_personal_account: bool | None = None,
        token: str | None = None,
        deadline_s: float = 30,
    ) -> settlement_pb2.SettleResponse:
        request = settlement_pb2.SettleRequest(
            request_id=request_id or f"r-{uuid.uuid4()}",
            voucher=voucher if voucher is not None else await self.voucher(patient_id),
            patient_id=patient_id,
            amount_fen=amount_fen,
        )
        if authorizer_id is not None:
            request.authorizer_id = authorizer_id
        if use_personal_account is not None:
            request.use_personal_account = use_personal_account
        reply: settlement_pb2.SettleResponse = await self.settlement.Settle(
            request, metadata=bearer(token or self.tokens.terminal_a), timeout=deadline_s
        )
        return reply

    async def quote(
        self, patient_id: str, amount_fen: int, *, authorizer_id: str | None = None, voucher: str | None = None
    ) -> settlement_pb2.QuoteResponse:
        request = settlement_pb2.QuoteRequest(
            voucher=voucher or await self.voucher(patient_id), patient_id=patient_id, amount_fen=amount_fen
        )
        if authorizer_id is not None:
            request.authorizer_id = authorizer_id
        reply: settlement_pb2.QuoteResponse = await self.settlement.Quote(
            request, metadata=bearer(self.tokens.terminal_a)
        )
        return reply


async def cancel(
    api: Api, settlement_id: str, amount_fen: int, *, request_id: str | None = None, token: str | None = None
) -> settlement_pb2.CancelResponse:
    reply: settlement_pb2.CancelResponse = await api.settlement.Cancel(
        settlement_pb2.CancelRequest(
            request_id=request_id or f"c-{uuid.uuid4()}", settlement_id=settlement_id, amount_fen=amount_fen
        ),
        metadata=bearer(token or api.tokens.terminal_a),
    )
    return reply


async def reverse(
    api: Api,
    original_request_id: str,
    *,
    token: str | None = None,
    kind: settlement_pb2.OriginalKind.ValueType = settlement_pb2.ORIGINAL_KIND_UNSPECIFIED,
) -> settlement_pb2.ReverseResponse:
    reply: settlement_pb2.ReverseResponse = await api.settlement.Reverse(
        settlement_pb2.ReverseRequest(original_request_id=original_request_id, original_kind=kind),
        metadata=bearer(token or api.tokens.terminal_a),
    )
    return reply


async def refused(awaitable: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    """Await a call that must fail with `code` and exactly one ErrorInfo carrying `reason`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    error = caught.value
    assert error.code() == code, (error.code(), error.details())
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries details"
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, infos
    assert infos[0].domain == "gongji"
    assert infos[0].reason == reason, (infos[0].reason, error.details())
    return error


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields
