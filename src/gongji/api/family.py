"""FamilyService: kinship binding, mutual-aid grants and e-vouchers, for the insured person's app backend."""

from __future__ import annotations

import datetime as dt
import uuid

from gongji import errors, limits
from gongji.api import convert
from gongji.api.app import App, Context, timestamp
from gongji.api.validate import Fields, china_today
from gongji.domain import eligibility, kinship
from gongji.domain.people import DocumentType, PersonStatus, Relationship
from gongji.store import bindings, grants, people, vouchers
from gongji.v1 import family_pb2, family_pb2_grpc


class FamilyService(family_pb2_grpc.FamilyServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def Bind(self, request: family_pb2.BindRequest, context: Context) -> family_pb2.BindResponse:
        fields = Fields()
        holder_id = fields.person_id("holder_id", request.holder_id)
        member_id = fields.person_id("member_id", request.member_id)
        if holder_id and holder_id == member_id:
            fields.bad("member_id", "a holder cannot bind themself")
        relationship = fields.enum(
            "relationship", request.relationship, convert.RELATIONSHIP_NAMES, Relationship, convert.RELATIONSHIP
        )
        document_type = fields.enum(
            "document_type", request.document_type, convert.DOCUMENT_TYPE_NAMES, DocumentType, convert.DOCUMENT_TYPE
        )
        claim_name = fields.text("member_name", request.member_name, limits.NAME_LEN_MAX)
        document_number = fields.document_number("document_number", request.document_number)
        birth_date = fields.date("birth_date", request.birth_date)
        phone = fields.phone("phone", request.phone)
        reason = fields.text("reason", request.reason, limits.REASON_LEN_MAX)
        face_ref = fields.reference("face_verification_ref", request.face_verification_ref)
        fields.done()
        assert relationship is not None
        assert document_type is not None
        claim = kinship.MemberClaim(claim_name, document_type, document_number, birth_date)
        today = china_today()

        async with bindings.pair_for_bind(self._app.pool, holder_id, member_id) as pair:
            if pair.holder is None:
                raise errors.PersonNotFound("the holder is not enrolled")
            if pair.member is None:
                raise errors.PersonNotFound("the member is not an insured person")
            kinship.check_bind(
                pair.holder,
                pair.member,
                claim,
                face_verification_ref=face_ref,
                live_bindings=pair.live_bindings,
                already_bound=pair.already_bound,
                today=today,
            )
            binding, _existed = await pair.insert(
                relationship=relationship, phone=phone, reason=reason, face_verification_ref=face_ref
            )
        return family_pb2.BindResponse(binding=convert.binding(binding))

    async def Unbind(self, request: family_pb2.UnbindRequest, context: Context) -> family_pb2.UnbindResponse:
        fields = Fields()
        holder_id = fields.person_id("holder_id", request.holder_id)
        member_id = fields.person_id("member_id", request.member_id)
        fields.done()
        binding = await bindings.unbind(self._app.pool, holder_id, member_id)
        if binding is None:
            raise errors.BindingNotFound("this holder never bound this member")
        return family_pb2.UnbindResponse(binding=convert.binding(binding))

    async def ListFamily(
        self, request: family_pb2.ListFamilyRequest, context: Context
    ) -> family_pb2.ListFamilyResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        fields.done()
        if await people.get_person(self._app.pool, person_id) is None:
            raise errors.PersonNotFound("no insured person with this id")
        entries = limits.FAMILY_LIST_ENTRIES_MAX
        bound, live_count = await bindings.of_holder(self._app.pool, person_id, entries)
        given = await grants.given_by(self._app.pool, person_id, entries)
        held = await grants.held_by(self._app.pool, person_id, entries)
        live_held = [g for g in held if g.status == "LIVE"]
        return family_pb2.ListFamilyResponse(
            bound_members=[convert.binding(b) for b in bound],
            grants_given=[convert.grant(g) for g in given],
            grants_held=[
                convert.grant(g, settlement_order=live_held.index(g) + 1 if g in live_held else 0) for g in held
            ],
            bound_member_limit=limits.FAMILY_BOUND_MEMBERS_MAX,
            bound_member_count=live_count,
            beneficiary_cap_left_fen=await grants.beneficiary_cap_left(self._app.pool, person_id),
        )

    async def Grant(self, request: family_pb2.GrantRequest, context: Context) -> family_pb2.GrantResponse:
        fields = Fields()
        authorizer_id = fields.person_id("authorizer_id", request.authorizer_id)
        beneficiary_id = fields.person_id("beneficiary_id", request.beneficiary_id)
        relationship = fields.enum(
            "relationship", request.relationship, convert.RELATIONSHIP_NAMES, Relationship, convert.RELATIONSHIP
        )
        if authorizer_id and authorizer_id == beneficiary_id:
            fields.bad("beneficiary_id", "must be another person than the authorizer")
        fields.done()
        assert relationship is not None

        async with grants.pair_for_grant(self._app.pool, authorizer_id, beneficiary_id) as pair:
            if pair.authorizer is None:
                raise errors.PersonNotFound("the authorizer is not enrolled")
            if pair.beneficiary is None:
                raise errors.BeneficiaryNotInsured("the beneficiary is not an insured person")
            eligibility.check_grant(pair.authorizer, pair.beneficiary, relationship, pair.policy)
            grant, existed = await pair.insert(relationship)
        return family_pb2.GrantResponse(grant=convert.grant(grant), already_granted=existed)

    async def Revoke(self, request: family_pb2.RevokeRequest, context: Context) -> family_pb2.RevokeResponse:
        fields = Fields()
        authorizer_id = fields.person_id("authorizer_id", request.authorizer_id)
        beneficiary_id = fields.person_id("beneficiary_id", request.beneficiary_id)
        requester_id = fields.optional_person_id("requester_id", request.requester_id) or authorizer_id
        fields.done()
        if requester_id not in (authorizer_id, beneficiary_id):
            raise errors.NotAllowed("only the authorizer or the beneficiary may revoke a grant")
        side = "AUTHORIZER" if requester_id == authorizer_id else "BENEFICIARY"
        grant = await grants.revoke(self._app.pool, authorizer_id, beneficiary_id, f"REVOKED_BY_{side}")
        if grant is None:
            raise errors.GrantNotFound("there is no live grant between these two people")
        return family_pb2.RevokeResponse(grant=convert.grant(grant))

    async def SetGrantCap(
        self, request: family_pb2.SetGrantCapRequest, context: Context
    ) -> family_pb2.SetGrantCapResponse:
        fields = Fields()
        authorizer_id = fields.person_id("authorizer_id", request.authorizer_id)
        beneficiary_id = fields.person_id("beneficiary_id", request.beneficiary_id)
        requester_id = fields.optional_person_id("requester_id", request.requester_id) or authorizer_id
        cap = request.yearly_cap_fen if request.HasField("yearly_cap_fen") else None
        if cap is not None and not 0 <= cap <= limits.MUTUAL_AID_LIMIT_FEN_MAX:
            fields.bad("yearly_cap_fen", f"must be 0 to {limits.MUTUAL_AID_LIMIT_FEN_MAX} fen, or unset to clear")
        fields.done()
        if requester_id != authorizer_id:
            raise errors.NotAllowed("only the authorizer sets the cap of a grant")
        grant = await grants.set_cap(self._app.pool, authorizer_id, beneficiary_id, cap)
        if grant is None:
            raise errors.GrantNotFound("there is no live grant between these two people")
        return family_pb2.SetGrantCapResponse(grant=convert.grant(grant))

    async def IssueVoucher(
        self, request: family_pb2.IssueVoucherRequest, context: Context
    ) -> family_pb2.IssueVoucherResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        requester_id = fields.optional_person_id("requester_id", request.requester_id) or person_id
        authorizer_id = fields.optional_person_id(
            "authorizer_id", request.authorizer_id if request.HasField("authorizer_id") else None
        )
        if authorizer_id is not None and authorizer_id == person_id:
            fields.bad("authorizer_id", "must be another person than the patient")
        if not 0 <= request.ttl_seconds <= limits.VOUCHER_TTL_S_MAX:
            fields.bad("ttl_seconds", f"must be 0 (the default) to {limits.VOUCHER_TTL_S_MAX}")
        fields.done()
        ttl_s = request.ttl_seconds or self._app.settings.voucher_ttl_s
        # Whole seconds, because the token carries its expiry in unix seconds.
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        expires_at = now + dt.timedelta(seconds=ttl_s)
        issuing = await vouchers.issuing(self._app.pool, person_id, requester_id, authorizer_id)
        if requester_id != person_id:
            # A holder shows a member's e-voucher only with a live binding and while insured themself.
            if issuing.binding_id is None:
                raise errors.NotAllowed("only the person, or a holder who has bound them, may show their e-voucher")
            if issuing.requester_status != PersonStatus.ACTIVE:
                raise errors.PersonNotActive("the holder's insurance is not active")
        if issuing.status is None:
            raise errors.PersonNotFound("no insured person with this id")
        if issuing.status != PersonStatus.ACTIVE:
            raise errors.PersonNotActive("the person's insurance is not active")
        if authorizer_id is not None and issuing.grant_id is None:
            raise errors.GrantNotFound("the family member picked has no live grant to this person")
        # The person's own voucher carries no binding: none joins a person to themself (a CHECK says so).
        token = self._app.vouchers.issue(
            uuid.uuid4(), int(expires_at.timestamp()), person_id, issuing.binding_id, issuing.grant_id
        )
        return family_pb2.IssueVoucherResponse(
            voucher=token,
            expires_at=timestamp(expires_at),
            person_id=person_id,
            requester_id=requester_id,
            authorizer_id=authorizer_id or "",
        )
