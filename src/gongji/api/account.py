"""AccountService: enrolment, monthly credits and balances, for insurer operators."""

from __future__ import annotations

import hashlib
import re

from gongji import errors, limits, metrics
from gongji.api import convert, pages
from gongji.api.app import App, Context
from gongji.api.auth import current_principal
from gongji.api.validate import Fields
from gongji.domain.eligibility import ALWAYS_REFUSED, DEFAULT_POLICY, RegionPolicy, Scope
from gongji.domain.people import DocumentType, Person, PersonStatus, Relationship, Scheme
from gongji.store import credits, ledger, people, policies
from gongji.v1 import account_pb2, account_pb2_grpc, types_pb2

_REGION_KEY = re.compile(r"[1-9][0-9]([0-9]{4})?")


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
        if not _REGION_KEY.fullmatch(p.region_key):
            fields.bad("policy.region_key", "must be a province ('61') or a 6-digit 统筹区 code ('610100')")
        if len(p.region_key) == 6 and p.region_key.endswith("0000"):
            fields.bad("policy.region_key", "for a whole province use its two digits ('61'), not '610000'")
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
        fields.done()
        assert scope is not None
        policy = RegionPolicy(scope, frozenset(r for r in allowed if r is not None), cap, floor)
        row = await policies.set_policy(self._app.pool, p.region_key, policy, limits.REGION_POLICIES_MAX)
        if row is None:
            raise errors.RegionPolicyLimitReached(f"at most {limits.REGION_POLICIES_MAX} region policies")
        return account_pb2.SetRegionPolicyResponse(policy=convert.region_policy(row.region_key, row.policy, row))

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
