"""Who may grant family mutual aid to whom (docs/domain.md)."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from gongji import errors, limits
from gongji.domain.bill import ACCOUNTS_PAY, MedType, WhollySelfPaid
from gongji.domain.people import CLOSE_RELATIVES, Person, PersonStatus, Relationship, Scheme, age_on
from gongji.domain.vouchers import CARDS, CertType
from gongji.domain.wallet import DEFAULT_WALLET_POLICY, WalletPolicy
from gongji.domain.waterfall import DEFAULT_WALLET_ORDER, WalletOrder


class Scope(enum.StrEnum):
    """How far apart authorizer and beneficiary may live."""

    REGION = "REGION"  # the same 统筹区
    PROVINCE = "PROVINCE"
    NATIONAL = "NATIONAL"


# Never allowed for a grant, whatever the region's policy says.
ALWAYS_REFUSED = frozenset({Relationship.PARENT_IN_LAW, Relationship.OTHER})

# The set of the 2023 rules (spouse, parents, children), which a region may keep with SetRegionPolicy.
IMMEDIATE_FAMILY = frozenset({Relationship.SPOUSE, Relationship.PARENT, Relationship.CHILD})

# Relationships whose direction can be checked against birth dates: the other person is older (+1)
# or younger (-1) than the requester.
_OLDER_OR_YOUNGER = {
    Relationship.PARENT: +1,
    Relationship.GRANDPARENT: +1,
    Relationship.CHILD: -1,
    Relationship.GRANDCHILD: -1,
}


@dataclass(frozen=True, slots=True)
class RegionPolicy:
    scope: Scope = Scope.PROVINCE
    allowed: frozenset[Relationship] = field(default_factory=lambda: CLOSE_RELATIVES)
    # What all grants together may pay for one beneficiary of the region in a calendar year (China's
    # time zone); None: no cap. Applies by the beneficiary's region.
    beneficiary_yearly_cap_fen: int | None = None
    # The balance mutual aid never takes an authorizer of the region below; None: no floor. Applies by
    # the authorizer's region.
    authorizer_floor_fen: int | None = None
    # The cards a patient insured in the region may present at the counter besides the e-voucher, which
    # is always accepted. The national platform accepts both, and so does a region that says nothing.
    accepted_cards: frozenset[CertType] = CARDS
    # Whether mutual aid pays for a patient of the region with care elsewhere in the province, and in
    # another province (异地就医). The national rules let the account pay such care; so does the default.
    mutual_aid_out_of_region: bool = True
    mutual_aid_out_of_province: bool = True
    # The kinds of care whose wholly self-paid items (全自费) the personal account may not pay for a
    # patient of the region (cash does), and those mutual aid may not pay them for (the own account may).
    # Empty: the accounts pay them, as they pay a bill sent as its amount only.
    wholly_self_paid_no_account: frozenset[MedType] = frozenset()
    wholly_self_paid_no_mutual_aid: frozenset[MedType] = frozenset()
    # The limits on 医保钱包 transfers the region's insured send (domain.wallet); the published ones by
    # default.
    wallet: WalletPolicy = DEFAULT_WALLET_POLICY
    # Where the wallet of a patient insured in the region pays at settlement (domain.waterfall).
    wallet_order: WalletOrder = DEFAULT_WALLET_ORDER


DEFAULT_POLICY = RegionPolicy()


class CareScope(enum.StrEnum):
    """Where care happens against where the patient is insured."""

    LOCAL = "LOCAL"
    OUT_OF_REGION = "OUT_OF_REGION"  # 省内异地
    OUT_OF_PROVINCE = "OUT_OF_PROVINCE"  # 跨省异地


def care_scope(insured_region: str, care_region: str | None) -> CareScope:
    """Local care when the institution is in the patient's 统筹区, counted as the same prefecture (the
    first four digits: pooling is at least city-wide), or when its region is unknown.

    The twin of `gongji_care_scope` in store/sql/settle.sql (tests/integration/test_twins.py)."""
    if care_region is None or care_region[:4] == insured_region[:4]:
        return CareScope.LOCAL
    return CareScope.OUT_OF_REGION if care_region[:2] == insured_region[:2] else CareScope.OUT_OF_PROVINCE


def mutual_aid_for_care(scope: CareScope, policy: RegionPolicy) -> bool:
    """Whether mutual aid may pay for care of `scope` under the patient's region `policy`.

    The twin of `gongji_mutual_aid_care_allowed` in store/sql/settle.sql."""
    if scope is CareScope.LOCAL:
        return True
    if scope is CareScope.OUT_OF_REGION:
        return policy.mutual_aid_out_of_region
    return policy.mutual_aid_out_of_province


def wholly_self_paid(policy: RegionPolicy, med_type: MedType | None) -> WhollySelfPaid:
    """What may pay the wholly self-paid items of care of `med_type` for a patient under `policy` (their
    region's); a bill without a med_type has none to judge. The twin of `gongji_wholly_self_paid` in
    store/sql/settle.sql."""
    if med_type is None:
        return ACCOUNTS_PAY
    account = med_type not in policy.wholly_self_paid_no_account
    return WhollySelfPaid(account, account and med_type not in policy.wholly_self_paid_no_mutual_aid)


def certificate_refusal(cert_type: CertType, policy: RegionPolicy) -> type[errors.CertificateTypeNotAllowed] | None:
    """Why a patient under `policy` (their region's) may not present `cert_type`, or None.

    The twin of `gongji_certificate_refusal` in store/sql/settle.sql (tests/integration/test_twins.py).
    """
    if cert_type is not CertType.E_VOUCHER and cert_type not in policy.accepted_cards:
        return errors.CertificateTypeNotAllowed
    return None


def in_scope(a_region: str, b_region: str, scope: Scope) -> bool:
    if scope is Scope.NATIONAL:
        return True
    if scope is Scope.PROVINCE:
        return a_region[:2] == b_region[:2]
    return a_region == b_region


def check_plausible(authorizer: Person, beneficiary: Person, relationship: Relationship) -> None:
    """Raise RelationshipImplausible when the birth dates contradict `relationship`: a parent or
    grandparent is older than the authorizer, a child or grandchild younger, and a grandparent and
    grandchild are at least limits.GRANDPARENT_AGE_GAP_YEARS_MIN full years apart."""
    direction = _OLDER_OR_YOUNGER.get(relationship)
    if direction is None:
        return
    older = beneficiary.birth_date < authorizer.birth_date
    younger = beneficiary.birth_date > authorizer.birth_date
    if (direction > 0 and not older) or (direction < 0 and not younger):
        raise errors.RelationshipImplausible(f"birth dates contradict {relationship}")
    if relationship in (Relationship.GRANDPARENT, Relationship.GRANDCHILD):
        elder, junior = (beneficiary, authorizer) if direction > 0 else (authorizer, beneficiary)
        gap = limits.GRANDPARENT_AGE_GAP_YEARS_MIN
        if age_on(elder.birth_date, junior.birth_date) < gap:
            raise errors.RelationshipImplausible(
                f"birth dates contradict {relationship}: a grandparent is at least {gap} years older than a grandchild"
            )


def check_grant(
    authorizer: Person,
    beneficiary: Person,
    relationship: Relationship,
    policy: RegionPolicy = DEFAULT_POLICY,
) -> None:
    """Raise the refusal for a grant from `authorizer` to `beneficiary`, or return when it is allowed.

    `relationship` is the beneficiary's relation to the authorizer.
    """
    if authorizer.status is not PersonStatus.ACTIVE:
        raise errors.PersonNotActive("the authorizer's insurance is not active")
    if authorizer.scheme is not Scheme.EMPLOYEE:
        raise errors.NotEmployeeInsured("only an employee-insured person with a personal account can grant")
    if beneficiary.status is PersonStatus.TERMINATED:
        raise errors.BeneficiaryNotInsured("the beneficiary's insurance has ended")
    if beneficiary.status is not PersonStatus.ACTIVE:
        raise errors.PersonNotActive("the beneficiary's insurance is not active")
    if relationship in ALWAYS_REFUSED or relationship not in policy.allowed:
        raise errors.RelationshipNotAllowed(f"{relationship} may not receive mutual aid in this region")
    check_plausible(authorizer, beneficiary, relationship)
    if not in_scope(authorizer.region_code, beneficiary.region_code, policy.scope):
        raise errors.RegionOutOfScope(f"authorizer and beneficiary must be in the same {policy.scope.lower()}")


@dataclass(frozen=True, slots=True)
class HeldGrant:
    """A grant as settlement reads it: the `mutual_aid_grant` row and its authorizer's `person` row."""

    grant_id: int
    authorizer_id: str
    status: str  # 'LIVE', 'REVOKED' or 'ENDED'
    created_at: dt.datetime
    authorizer_status: PersonStatus
    authorizer_scheme: Scheme


def live_grant(held: Iterable[HeldGrant], authorizer_id: str | None = None, grant_id: int | None = None) -> int | None:
    """The id of the grant a settlement of the beneficiary would draw on, or None.

    The twin of `gongji_live_grant` in store/sql/settle.sql, held to it by the property test in
    tests/integration/test_twins.py. `held` is every grant the beneficiary holds, live or not. Only a
    live grant whose authorizer is still an active employee-insured person counts: the one the patient
    picked in the app when the e-voucher carries it (`grant_id`), the named authorizer's when
    `authorizer_id` is given, else the oldest by (created_at, grant_id).
    """
    usable = [
        g
        for g in held
        if g.status == "LIVE"
        and (authorizer_id is None or g.authorizer_id == authorizer_id)
        and (grant_id is None or g.grant_id == grant_id)
        and g.authorizer_status is PersonStatus.ACTIVE
        and g.authorizer_scheme is Scheme.EMPLOYEE
    ]
    return min(usable, key=lambda g: (g.created_at, g.grant_id)).grant_id if usable else None


def voucher_choice_refusal(
    chosen_authorizer_id: str | None, authorizer_id: str | None
) -> type[errors.VoucherAuthorizerMismatch] | None:
    """Why a terminal's `authorizer_id` may not stand against the patient's choice, or None.

    `chosen_authorizer_id` is the authorizer of the grant the e-voucher carries (None: the patient
    picked none). The patient's choice wins: a terminal may repeat it or leave the authorizer out, and
    only a voucher without a choice lets the terminal choose. The twin of
    `gongji_voucher_choice_refusal` in store/sql/settle.sql (tests/integration/test_twins.py).
    """
    if chosen_authorizer_id is not None and authorizer_id is not None and authorizer_id != chosen_authorizer_id:
        return errors.VoucherAuthorizerMismatch
    return None
