"""AccountService: enrolment, monthly credits and balances, for insurer operators."""

from __future__ import annotations

import hashlib
from typing import Any

from gongji import errors, limits, metrics
from gongji.api.app import App, Context
from gongji.api.validate import Fields
from gongji.domain.people import Person, PersonStatus, Scheme
from gongji.store import credits, people
from gongji.v1 import account_pb2, account_pb2_grpc, types_pb2

_SCHEME_NAMES = {v.number: v.name for v in types_pb2.Scheme.DESCRIPTOR.values}
_STATUS_NAMES = {v.number: v.name for v in types_pb2.PersonStatus.DESCRIPTOR.values}


def _account(view: people.AccountView) -> account_pb2.Account:
    p = view.person
    return account_pb2.Account(
        person_id=p.person_id,
        scheme=types_pb2.Scheme.Value(f"SCHEME_{p.scheme}"),
        status=types_pb2.PersonStatus.Value(f"PERSON_STATUS_{p.status}"),
        region_code=p.region_code,
        balance_fen=view.balance_fen or 0,
        has_personal_account=view.balance_fen is not None,
    )


class AccountService(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def Enroll(self, request: account_pb2.EnrollRequest, context: Context) -> account_pb2.EnrollResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        name = fields.text("name", request.name, limits.NAME_LEN_MAX)
        birth_date = fields.date("birth_date", request.birth_date)
        region_code = fields.region_code("region_code", request.region_code)
        scheme = fields.enum("scheme", request.scheme, _SCHEME_NAMES, Scheme, "SCHEME_")
        status = fields.enum("status", request.status, _STATUS_NAMES, PersonStatus, "PERSON_STATUS_")
        fields.done()
        assert scheme is not None and status is not None
        person = Person(person_id, name, birth_date, region_code, scheme, status)
        created, ended = await people.enroll(self._app.pool, person)
        view = await people.get_account(self._app.pool, person_id)
        assert view is not None
        return account_pb2.EnrollResponse(account=_account(view), created=created, grants_ended=ended)

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

    async def ListLedger(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet("ListLedger arrives with the money-lifecycle work")
