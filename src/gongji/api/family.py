"""FamilyService: mutual-aid grants and e-vouchers for the insured person's app backend."""

from __future__ import annotations

import datetime as dt
import uuid
from functools import partial
from typing import Any

from gongji import errors, limits
from gongji.api.app import App, Context, timestamp
from gongji.api.validate import Fields
from gongji.domain import eligibility
from gongji.domain.people import Person, PersonStatus, Relationship
from gongji.store import grants, people, vouchers
from gongji.v1 import family_pb2, family_pb2_grpc, types_pb2

_LATER = "arrives with the kinship-binding work"


def _grant(g: grants.GrantRow) -> family_pb2.MutualAidGrant:
    return family_pb2.MutualAidGrant(
        grant_id=str(g.grant_id),
        authorizer_id=g.authorizer_id,
        beneficiary_id=g.beneficiary_id,
        relationship=types_pb2.Relationship.Value(f"RELATIONSHIP_{g.relationship}"),
        status=types_pb2.GrantStatus.Value(f"GRANT_STATUS_{g.status}"),
        created_at=timestamp(g.created_at),
        ended_at=timestamp(g.ended_at),
        end_reason=g.end_reason or "",
    )


def _check_grant(relationship: Relationship, authorizer: Person | None, beneficiary: Person | None) -> None:
    if authorizer is None:
        raise errors.PersonNotFound("the authorizer is not enrolled")
    if beneficiary is None:
        raise errors.BeneficiaryNotInsured("the beneficiary is not an insured person")
    eligibility.check_grant(authorizer, beneficiary, relationship)


class FamilyService(family_pb2_grpc.FamilyServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def Grant(self, request: family_pb2.GrantRequest, context: Context) -> family_pb2.GrantResponse:
        fields = Fields()
        authorizer_id = fields.person_id("authorizer_id", request.authorizer_id)
        beneficiary_id = fields.person_id("beneficiary_id", request.beneficiary_id)
        relationship = fields.enum(
            "relationship", request.relationship, _RELATIONSHIP_NAMES, Relationship, "RELATIONSHIP_"
        )
        if authorizer_id and authorizer_id == beneficiary_id:
            fields.bad("beneficiary_id", "must be another person than the authorizer")
        fields.done()
        assert relationship is not None
        grant, existed = await grants.create(
            self._app.pool, authorizer_id, beneficiary_id, relationship, partial(_check_grant, relationship)
        )
        return family_pb2.GrantResponse(grant=_grant(grant), already_granted=existed)

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
        return family_pb2.RevokeResponse(grant=_grant(grant))

    async def IssueVoucher(
        self, request: family_pb2.IssueVoucherRequest, context: Context
    ) -> family_pb2.IssueVoucherResponse:
        fields = Fields()
        person_id = fields.person_id("person_id", request.person_id)
        requester_id = fields.optional_person_id("requester_id", request.requester_id) or person_id
        if not 0 <= request.ttl_seconds <= limits.VOUCHER_TTL_S_MAX:
            fields.bad("ttl_seconds", f"must be 0 (the default) to {limits.VOUCHER_TTL_S_MAX}")
        fields.done()
        if requester_id != person_id:
            raise errors.NotAllowed("an e-voucher is issued to the person themself")
        person = await people.get_person(self._app.pool, person_id)
        if person is None:
            raise errors.PersonNotFound("no insured person with this id")
        if person.status is not PersonStatus.ACTIVE:
            raise errors.PersonNotActive("the person's insurance is not active")
        ttl_s = request.ttl_seconds or self._app.settings.voucher_ttl_s
        # Whole seconds, because the token carries its expiry in unix seconds.
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        expires_at = now + dt.timedelta(seconds=ttl_s)
        voucher_id = uuid.uuid4()
        await vouchers.record(self._app.pool, voucher_id, person_id, requester_id, expires_at)
        token = self._app.vouchers.issue(voucher_id, int(expires_at.timestamp()))
        return family_pb2.IssueVoucherResponse(voucher=token, expires_at=timestamp(expires_at), person_id=person_id)

    async def Bind(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet(f"Bind {_LATER}")

    async def Unbind(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet(f"Unbind {_LATER}")

    async def ListFamily(self, request: Any, context: Context) -> Any:
        raise errors.NotImplementedYet(f"ListFamily {_LATER}")


_RELATIONSHIP_NAMES: dict[int, str] = {v.number: v.name for v in types_pb2.Relationship.DESCRIPTOR.values}
