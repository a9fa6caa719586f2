"""Every refusal gongji can answer, as one tree. Each leaf carries the stable `reason` of its
`google.rpc.ErrorInfo` and the gRPC status code name from API.md; `gongji.api.interceptor` turns them
into statuses in one place. Nothing here imports grpc, so the domain can raise them freely.

    GongjiError
    ├── InvalidArgument                 INVALID_ARGUMENT   INVALID_ARGUMENT (with field violations)
    │   └── InvalidAmount               INVALID_ARGUMENT   INVALID_AMOUNT
    ├── Unauthenticated                 UNAUTHENTICATED    CREDENTIALS_MISSING, CREDENTIALS_INVALID
    ├── PermissionDenied                PERMISSION_DENIED  NOT_ALLOWED, VOUCHER_PATIENT_MISMATCH,
    │                                                      INSTITUTION_MISMATCH
    ├── NotFound                        NOT_FOUND          PERSON_NOT_FOUND, SETTLEMENT_NOT_FOUND,
    │                                                      BINDING_NOT_FOUND, INSTITUTION_NOT_FOUND,
    │                                                      PREMIUM_PAYMENT_NOT_FOUND
    ├── FailedPrecondition              FAILED_PRECONDITION
    │   ├── eligibility                 PERSON_NOT_ACTIVE, NOT_EMPLOYEE_INSURED, BENEFICIARY_NOT_INSURED,
    │   │                               RELATIONSHIP_NOT_ALLOWED, RELATIONSHIP_IMPLAUSIBLE,
    │   │                               REGION_OUT_OF_SCOPE, GRANT_NOT_FOUND
    │   ├── binding                     IDENTITY_MISMATCH, FACE_VERIFICATION_REQUIRED
    │   ├── VoucherRefused              VOUCHER_INVALID, VOUCHER_EXPIRED, VOUCHER_ALREADY_USED
    │   ├── money lifecycle             REFUND_EXCEEDS_SETTLEMENT, ALREADY_REVERSED
    │   └── premium                     BENEFICIARY_NOT_RESIDENT, PREMIUM_NOT_SET, PREMIUM_WINDOW_CLOSED,
    │                                   INSUFFICIENT_BALANCE
    ├── ResourceExhausted               RESOURCE_EXHAUSTED FAMILY_LIMIT_REACHED, REGION_POLICY_LIMIT_REACHED,
    │                                                      PREMIUM_RATE_LIMIT_REACHED
    │   └── Overloaded                  (the edge)         SERVER_BUSY, CALLER_BUSY, REQUEST_MESSAGE_TIMEOUT
    ├── AlreadyExists                   ALREADY_EXISTS     IDEMPOTENCY_KEY_REUSED, PREMIUM_ALREADY_PAID
    ├── TransactionAborted              ABORTED            TRANSACTION_ABORTED (deadlock, serialization)
    ├── Unavailable                     UNAVAILABLE        DATABASE_UNAVAILABLE
    └── Internal                        INTERNAL           INTERNAL (a defect of ours, never the client's)

Voucher refusals answer FAILED_PRECONDITION, not UNAUTHENTICATED: UNAUTHENTICATED is kept for the
terminal's own credentials, so that a POS never mistakes a stale e-voucher for a lost login.

ALREADY_EXISTS answers a request whose result exists already under its identity: a request id that
did something else (IDEMPOTENCY_KEY_REUSED), a beneficiary's premium of that year paid by someone
(PREMIUM_ALREADY_PAID). No change of the request makes it succeed; the caller shows what exists. The
other premium refusals are FAILED_PRECONDITION: a state that may change (a rate set, a window opening,
money credited) lets the same request succeed later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class GongjiError(Exception):
    code: ClassVar[str] = "UNKNOWN"
    reason: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str = "", *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason
        self.metadata = metadata or {}


# ---- INVALID_ARGUMENT -------------------------------------------------------------------------------
class InvalidArgument(GongjiError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], message: str = "") -> None:
        assert violations, "an InvalidArgument names at least one field"
        text = message or "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(text)
        self.violations = violations

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class InvalidAmount(InvalidArgument):
    reason = "INVALID_AMOUNT"


# ---- UNAUTHENTICATED / PERMISSION_DENIED ------------------------------------------------------------
class Unauthenticated(GongjiError):
    code = "UNAUTHENTICATED"


class CredentialsMissing(Unauthenticated):
    reason = "CREDENTIALS_MISSING"


class CredentialsInvalid(Unauthenticated):
    reason = "CREDENTIALS_INVALID"


class PermissionDenied(GongjiError):
    code = "PERMISSION_DENIED"


class NotAllowed(PermissionDenied):
    reason = "NOT_ALLOWED"


class VoucherPatientMismatch(PermissionDenied):
    """The real-name rule: the e-voucher must name the patient being settled (欺诈骗保 otherwise)."""

    reason = "VOUCHER_PATIENT_MISMATCH"


class InstitutionMismatch(PermissionDenied):
    reason = "INSTITUTION_MISMATCH"


# ---- NOT_FOUND --------------------------------------------------------------------------------------
class NotFound(GongjiError):
    code = "NOT_FOUND"


class PersonNotFound(NotFound):
    reason = "PERSON_NOT_FOUND"


class SettlementNotFound(NotFound):
    reason = "SETTLEMENT_NOT_FOUND"


class InstitutionNotFound(NotFound):
    reason = "INSTITUTION_NOT_FOUND"


class BindingNotFound(NotFound):
    reason = "BINDING_NOT_FOUND"


class PremiumPaymentNotFound(NotFound):
    reason = "PREMIUM_PAYMENT_NOT_FOUND"


# ---- FAILED_PRECONDITION ----------------------------------------------------------------------------
class FailedPrecondition(GongjiError):
    code = "FAILED_PRECONDITION"


class PersonNotActive(FailedPrecondition):
    reason = "PERSON_NOT_ACTIVE"


class NotEmployeeInsured(FailedPrecondition):
    reason = "NOT_EMPLOYEE_INSURED"


class BeneficiaryNotInsured(FailedPrecondition):
    reason = "BENEFICIARY_NOT_INSURED"


class RelationshipNotAllowed(FailedPrecondition):
    reason = "RELATIONSHIP_NOT_ALLOWED"


class RelationshipImplausible(FailedPrecondition):
    reason = "RELATIONSHIP_IMPLAUSIBLE"


class RegionOutOfScope(FailedPrecondition):
    reason = "REGION_OUT_OF_SCOPE"


class GrantNotFound(FailedPrecondition):
    reason = "GRANT_NOT_FOUND"


class BeneficiaryNotResident(FailedPrecondition):
    """A premium is paid only for a resident-insured person (居民医保): an employee pays their own."""

    reason = "BENEFICIARY_NOT_RESIDENT"


class PremiumNotSet(FailedPrecondition):
    """No premium rate for the beneficiary's 统筹区 or province and the year asked."""

    reason = "PREMIUM_NOT_SET"


class PremiumWindowClosed(FailedPrecondition):
    """Today (China's calendar day) is outside the year's collection window."""

    reason = "PREMIUM_WINDOW_CLOSED"


class InsufficientBalance(FailedPrecondition):
    """The payer's account holds less than the premium, which is paid whole from it or not at all."""

    reason = "INSUFFICIENT_BALANCE"


class IdentityMismatch(FailedPrecondition):
    """Binding: the name, document or birth date given do not match the member's enrolment record."""

    reason = "IDENTITY_MISMATCH"


class FaceVerificationRequired(FailedPrecondition):
    reason = "FACE_VERIFICATION_REQUIRED"


class RefundExceedsSettlement(FailedPrecondition):
    reason = "REFUND_EXCEEDS_SETTLEMENT"


class AlreadyReversed(FailedPrecondition):
    reason = "ALREADY_REVERSED"


class VoucherRefused(FailedPrecondition):
    """An e-voucher that cannot be used: forged or unknown, expired, or used before."""


class VoucherInvalid(VoucherRefused):
    reason = "VOUCHER_INVALID"


class VoucherExpired(VoucherRefused):
    reason = "VOUCHER_EXPIRED"


class VoucherAlreadyUsed(VoucherRefused):
    reason = "VOUCHER_ALREADY_USED"


# ---- the rest ---------------------------------------------------------------------------------------
class FamilyLimitReached(GongjiError):
    code = "RESOURCE_EXHAUSTED"
    reason = "FAMILY_LIMIT_REACHED"


class RegionPolicyLimitReached(GongjiError):
    code = "RESOURCE_EXHAUSTED"
    reason = "REGION_POLICY_LIMIT_REACHED"


class PremiumRateLimitReached(GongjiError):
    code = "RESOURCE_EXHAUSTED"
    reason = "PREMIUM_RATE_LIMIT_REACHED"


class Overloaded(GongjiError):
    """Refused at the edge so that no caller takes the service from the others (gongji.api.admission).
    Nothing was read or written; the client may retry after a pause."""

    code = "RESOURCE_EXHAUSTED"


class ServerBusy(Overloaded):
    """The server has as many calls in flight as it takes (GONGJI_MAX_CONCURRENT_RPCS)."""

    reason = "SERVER_BUSY"


class CallerBusy(Overloaded):
    """This credential (or its institution) already has its fair share of calls in flight."""

    reason = "CALLER_BUSY"


class RequestMessageTimeout(Overloaded):
    """The call's headers came but its request message did not within the wait (a slow or hostile
    client holding a stream open)."""

    reason = "REQUEST_MESSAGE_TIMEOUT"


class IdempotencyKeyReused(GongjiError):
    """The same request id came back with different content."""

    code = "ALREADY_EXISTS"
    reason = "IDEMPOTENCY_KEY_REUSED"


class PremiumAlreadyPaid(GongjiError):
    """The beneficiary's premium of that year is paid already (by this payer or another) and not refunded."""

    code = "ALREADY_EXISTS"
    reason = "PREMIUM_ALREADY_PAID"


class TransactionAborted(GongjiError):
    code = "ABORTED"
    reason = "TRANSACTION_ABORTED"


class Internal(GongjiError):
    """A defect of ours. The message the client sees is generic; the log has the class and frames."""

    code = "INTERNAL"
    reason = "INTERNAL"


class DatabaseUnavailable(GongjiError):
    code = "UNAVAILABLE"
    reason = "DATABASE_UNAVAILABLE"


def _leaves(cls: type[GongjiError]) -> list[type[GongjiError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_leaves(sub))
    return found


# The refusal reasons that the store's SQL functions answer with, mapped back to their classes.
BY_REASON: dict[str, type[GongjiError]] = {
    c.reason: c for c in _leaves(GongjiError) if c.reason != "UNKNOWN" and not issubclass(c, InvalidArgument)
}
