"""Between proto messages and the domain/store types, in one place."""

from __future__ import annotations

from gongji.api.app import timestamp
from gongji.domain.eligibility import RegionPolicy
from gongji.domain.people import Relationship, mask_id, mask_name
from gongji.store.bindings import BindingRow
from gongji.store.grants import GrantRow
from gongji.store.policies import PolicyRow
from gongji.v1 import account_pb2, family_pb2, types_pb2


def names(enum_descriptor: object) -> dict[int, str]:
    """Proto enum number -> value name, for Fields.enum."""
    return {v.number: v.name for v in enum_descriptor.values}  # type: ignore[attr-defined]


RELATIONSHIP_NAMES = names(types_pb2.Relationship.DESCRIPTOR)
DOCUMENT_TYPE_NAMES = names(types_pb2.DocumentType.DESCRIPTOR)
SCHEME_NAMES = names(types_pb2.Scheme.DESCRIPTOR)
STATUS_NAMES = names(types_pb2.PersonStatus.DESCRIPTOR)
SCOPE_NAMES = names(types_pb2.GrantScope.DESCRIPTOR)

# Enum prefixes of the proto values, for Fields.enum.
RELATIONSHIP, DOCUMENT_TYPE, SCHEME, STATUS, SCOPE = (
    "RELATIONSHIP_",
    "DOCUMENT_TYPE_",
    "SCHEME_",
    "PERSON_STATUS_",
    "GRANT_SCOPE_",
)


def relationship(r: Relationship) -> types_pb2.Relationship.ValueType:
    return types_pb2.Relationship.Value(f"RELATIONSHIP_{r}")


def grant(g: GrantRow, *, settlement_order: int = 0) -> family_pb2.MutualAidGrant:
    return family_pb2.MutualAidGrant(
        grant_id=str(g.grant_id),
        authorizer_id=g.authorizer_id,
        beneficiary_id=g.beneficiary_id,
        authorizer_id_masked=mask_id(g.authorizer_id),
        beneficiary_id_masked=mask_id(g.beneficiary_id),
        relationship=relationship(g.relationship),
        status=types_pb2.GrantStatus.Value(f"GRANT_STATUS_{g.status}"),
        created_at=timestamp(g.created_at),
        ended_at=timestamp(g.ended_at),
        end_reason=g.end_reason or "",
        settlement_order=settlement_order,
    )


def binding(b: BindingRow) -> family_pb2.Binding:
    return family_pb2.Binding(
        binding_id=str(b.binding_id),
        holder_id=b.holder_id,
        member_id=b.member_id,
        member_id_masked=mask_id(b.member_id),
        member_name_masked=mask_name(b.member_name),
        relationship=relationship(b.relationship),
        created_at=timestamp(b.created_at),
        ended_at=timestamp(b.ended_at),
        active=b.ended_at is None,
    )


def region_policy(key: str, policy: RegionPolicy, row: PolicyRow | None = None) -> account_pb2.RegionPolicy:
    return account_pb2.RegionPolicy(
        region_key=key,
        scope=types_pb2.GrantScope.Value(f"GRANT_SCOPE_{policy.scope}"),
        allowed_relationships=sorted(relationship(r) for r in policy.allowed),
        updated_at=timestamp(row.updated_at) if row else None,
    )
