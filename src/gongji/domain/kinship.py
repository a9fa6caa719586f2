"""Kinship-account binding (亲情账户): who may show whose e-voucher. Binding moves no money."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gongji import errors, limits
from gongji.domain.people import DocumentType, Person, PersonStatus, age_on, normalize_name


@dataclass(frozen=True, slots=True)
class MemberClaim:
    """What the holder typed about the member; it must match the enrolment record."""

    name: str
    document_type: DocumentType
    document_number: str
    birth_date: dt.date


def identity_matches(member: Person, claim: MemberClaim) -> bool:
    return (
        normalize_name(member.name) == normalize_name(claim.name)
        and member.birth_date == claim.birth_date
        and member.document == (claim.document_type, claim.document_number.strip().upper())
    )


def face_verification_needed(birth_date: dt.date, today: dt.date) -> bool:
    """A member older than 16 on the day of binding must pass face verification; 16 or younger need
    not. `today` is the calendar day in China (Asia/Shanghai), and a birthday today counts."""
    return age_on(birth_date, today) > limits.FACE_VERIFICATION_AGE_OVER


def check_bind(
    holder: Person,
    member: Person,
    claim: MemberClaim,
    *,
    face_verification_ref: str,
    live_bindings: int,
    already_bound: bool,
    today: dt.date,
) -> None:
    """Raise the refusal for binding `member` to `holder`, or return when it is allowed.

    Identity is checked before age, so a refusal says nothing about a member the holder could not
    identify. Binding the same member again is allowed (idempotent) and does not count twice.
    """
    if holder.status is not PersonStatus.ACTIVE:
        raise errors.PersonNotActive("the holder's insurance is not active")
    if not identity_matches(member, claim):
        raise errors.IdentityMismatch("name, document or birth date do not match the enrolment record")
    if member.status is PersonStatus.TERMINATED:
        raise errors.PersonNotActive("the member's insurance has ended")
    if face_verification_needed(member.birth_date, today) and not face_verification_ref:
        raise errors.FaceVerificationRequired("the member is over 16: complete face verification (刷脸认证) first")
    if not already_bound and live_bindings >= limits.FAMILY_BOUND_MEMBERS_MAX:
        raise errors.FamilyLimitReached(f"at most {limits.FAMILY_BOUND_MEMBERS_MAX} bound family members")
