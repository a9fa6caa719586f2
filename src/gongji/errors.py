"""Every refusal gongji can answer, as one tree. Each leaf carries the stable `reason` of its
`google.rpc.ErrorInfo`, the gRPC status code name of the contract (docs/api.md) and a default sentence;
`gongji.api.interceptor` turns them into statuses in one place. Nothing here imports grpc, so the
domain can raise them freely.

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
    │   │                               REGION_OUT_OF_SCOPE, GRANT_NOT_FOUND, VOUCHER_AUTHORIZER_MISMATCH,
    │   │                               CERTIFICATE_TYPE_NOT_ALLOWED
    │   ├── binding                     IDENTITY_MISMATCH, FACE_VERIFICATION_REQUIRED
    │   ├── VoucherRefused              VOUCHER_INVALID, VOUCHER_EXPIRED, VOUCHER_ALREADY_USED
    │   ├── money lifecycle             REFUND_EXCEEDS_SETTLEMENT, ALREADY_REVERSED, REFUND_ALREADY_SPENT
    │   ├── premium                     BENEFICIARY_NOT_RESIDENT, PREMIUM_NOT_SET, PREMIUM_WINDOW_CLOSED,
    │   │                               INSUFFICIENT_BALANCE
    │   └── CursorExpired               CURSOR_EXPIRED (events after the cursor deleted by retention)
    ├── CursorAhead                     OUT_OF_RANGE       CURSOR_AHEAD
    ├── ResourceExhausted               RESOURCE_EXHAUSTED FAMILY_LIMIT_REACHED, REGION_POLICY_LIMIT_REACHED,
    │                                                      PREMIUM_RATE_LIMIT_REACHED
    │   ├── EventConsumersLimitReached                     EVENT_CONSUMERS_LIMIT_REACHED
    │   └── Overloaded                  (the edge)         SERVER_BUSY, CALLER_BUSY, REQUEST_MESSAGE_TIMEOUT,
    │                                                      EVENT_STREAMS_BUSY
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
    # What the status message says when the raiser has nothing more specific: a sentence for people,
    # beside the reason for programs (docs/api.md lists both).
    sentence: ClassVar[str] = ""

    def __init__(self, message: str = "", *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message or self.sentence or self.reason)
        self.message = message or self.sentence or self.reason
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
    sentence = "the amount is not a valid amount in fen"


# ---- UNAUTHENTICATED / PERMISSION_DENIED ------------------------------------------------------------
class Unauthenticated(GongjiError):
    code = "UNAUTHENTICATED"


class CredentialsMissing(Unauthenticated):
    reason = "CREDENTIALS_MISSING"
    sentence = "no bearer token was sent (authorization: Bearer <token>)"


class CredentialsInvalid(Unauthenticated):
    reason = "CREDENTIALS_INVALID"
    sentence = "the bearer token is unknown or revoked"


class PermissionDenied(GongjiError):
    code = "PERMISSION_DENIED"


class NotAllowed(PermissionDenied):
    reason = "NOT_ALLOWED"
    sentence = "this credential may not make this call for this person"


class VoucherPatientMismatch(PermissionDenied):
    """The real-name rule: the e-voucher must name the patient being settled (欺诈骗保 otherwise)."""

    reason = "VOUCHER_PATIENT_MISMATCH"
    sentence = "the e-voucher does not name the patient being settled"


class InstitutionMismatch(PermissionDenied):
    reason = "INSTITUTION_MISMATCH"
    sentence = "the settlement belongs to another institution"


# ---- NOT_FOUND --------------------------------------------------------------------------------------
class NotFound(GongjiError):
    code = "NOT_FOUND"


class PersonNotFound(NotFound):
    reason = "PERSON_NOT_FOUND"
    sentence = "no person is enrolled under this ID number"


class SettlementNotFound(NotFound):
    reason = "SETTLEMENT_NOT_FOUND"
    sentence = "no settlement with this id at this institution"


class InstitutionNotFound(NotFound):
    reason = "INSTITUTION_NOT_FOUND"
    sentence = "no institution with this id"


class BindingNotFound(NotFound):
    reason = "BINDING_NOT_FOUND"
    sentence = "the holder has no live binding of this member"


class TransferNotFound(NotFound):
    """No transfer with this id to (or from) this person."""

    reason = "TRANSFER_NOT_FOUND"
    sentence = "no transfer with this id for this person"


class HoldNotFound(NotFound):
    """No hold with this id of this institution."""

    reason = "HOLD_NOT_FOUND"
    sentence = "no hold with this id at this institution"


class PremiumPaymentNotFound(NotFound):
    reason = "PREMIUM_PAYMENT_NOT_FOUND"
    sentence = "no premium payment with this id"


# ---- FAILED_PRECONDITION ----------------------------------------------------------------------------
class FailedPrecondition(GongjiError):
    code = "FAILED_PRECONDITION"


class PersonNotActive(FailedPrecondition):
    reason = "PERSON_NOT_ACTIVE"
    sentence = "the person's insurance status is not active"


class NotEmployeeInsured(FailedPrecondition):
    reason = "NOT_EMPLOYEE_INSURED"
    sentence = "the authorizer is not an active employee-insured person with a personal account"


class BeneficiaryNotInsured(FailedPrecondition):
    reason = "BENEFICIARY_NOT_INSURED"
    sentence = "the beneficiary is not insured"


class RelationshipNotAllowed(FailedPrecondition):
    reason = "RELATIONSHIP_NOT_ALLOWED"
    sentence = "the authorizer's region policy does not allow this relationship"


class RelationshipImplausible(FailedPrecondition):
    reason = "RELATIONSHIP_IMPLAUSIBLE"
    sentence = "the birth dates do not fit the stated relationship"


class RegionOutOfScope(FailedPrecondition):
    reason = "REGION_OUT_OF_SCOPE"
    sentence = "the two people are not within the region policy's scope"


class GrantNotFound(FailedPrecondition):
    reason = "GRANT_NOT_FOUND"
    sentence = "there is no live mutual-aid grant from this authorizer to this beneficiary"


class VoucherAuthorizerMismatch(FailedPrecondition):
    """The terminal named an authorizer other than the one whose grant the patient picked in the app
    (the e-voucher carries the choice, and the patient's choice wins: docs/api.md)."""

    reason = "VOUCHER_AUTHORIZER_MISMATCH"
    sentence = "the e-voucher carries the patient's choice of another family member's grant"


class CertificateTypeNotAllowed(FailedPrecondition):
    """A card the patient's region does not accept at the counter (region policy)."""

    reason = "CERTIFICATE_TYPE_NOT_ALLOWED"
    sentence = "the patient's region does not accept this kind of card; ask for the e-voucher"


class InsutypeMismatch(FailedPrecondition):
    """The terminal settles under an insurance type (insutype) the patient is not insured under: the
    patient's scheme decides, 310 for the employee basic insurance, 390 for the resident basic."""

    reason = "INSUTYPE_MISMATCH"
    sentence = "the patient is not insured under this insutype; read the patient's insurance again"


class BeneficiaryNotResident(FailedPrecondition):
    """A premium is paid only for a resident-insured person (居民医保): an employee pays their own."""

    reason = "BENEFICIARY_NOT_RESIDENT"
    sentence = "a premium is paid only for a resident-insured person"


class PremiumNotSet(FailedPrecondition):
    """No premium rate for the beneficiary's 统筹区 or province and the year asked."""

    reason = "PREMIUM_NOT_SET"
    sentence = "no premium rate is set for the beneficiary's region and this year"


class PremiumWindowClosed(FailedPrecondition):
    """Today (China's calendar day) is outside the year's collection window."""

    reason = "PREMIUM_WINDOW_CLOSED"
    sentence = "today is outside the year's premium collection window"


class InsufficientBalance(FailedPrecondition):
    """The payer's account holds less than a premium or a transfer, which is paid whole from it or not
    at all."""

    reason = "INSUFFICIENT_BALANCE"
    sentence = "the payer's personal account holds less than the amount, which is paid whole or not at all"


class WalletNotOpen(FailedPrecondition):
    """A transfer's recipient has not opened a 医保钱包 (OpenWallet)."""

    reason = "WALLET_NOT_OPEN"
    sentence = "the recipient has not opened a medical-insurance wallet"


class TransferQuietHours(FailedPrecondition):
    """No transfer is sent between 22:00 and 06:00 China time (the sender's region policy may say other
    hours)."""

    reason = "TRANSFER_QUIET_HOURS"
    sentence = "no transfer is sent at this hour (China time); try again in the morning"


class TransferOverLimit(FailedPrecondition):
    """More than one transfer may carry (2,000 元 unless the sender's region policy says otherwise)."""

    reason = "TRANSFER_OVER_LIMIT"
    sentence = "the amount is more than one transfer may carry"


class TransferPending(FailedPrecondition):
    """The sender has a transfer the recipient has not accepted yet: no other until it resolves."""

    reason = "TRANSFER_PENDING"
    sentence = "the sender's last transfer is still waiting for its recipient"


class TransferDailyLimit(FailedPrecondition):
    """The sender has sent as many transfers today (China's calendar day) as a day allows (3 unless the
    sender's region policy says otherwise)."""

    reason = "TRANSFER_DAILY_LIMIT"
    sentence = "the sender has sent as many transfers today as a day allows"


class TransferResolved(FailedPrecondition):
    """The transfer was accepted, declined or returned already, in another way than this call asks."""

    reason = "TRANSFER_RESOLVED"
    sentence = "the transfer was resolved already: accepted, declined, or returned to its sender"


class HoldResolved(FailedPrecondition):
    """The hold was captured by a settlement, or released or expired, already."""

    reason = "HOLD_RESOLVED"
    sentence = "the hold was captured, released or expired already"


class HoldExpired(FailedPrecondition):
    """The hold's time is over: its money goes back; quote again."""

    reason = "HOLD_EXPIRED"
    sentence = "the hold's time is over: its money goes back; quote again"


class HoldMismatch(FailedPrecondition):
    """The Settle asks other content (patient, amount, bill, authorizer) than the Quote that held."""

    reason = "HOLD_MISMATCH"
    sentence = "the settlement does not ask what the hold holds: the same patient, amount, bill and authorizer"


class IdentityMismatch(FailedPrecondition):
    """Binding: the name, document or birth date given do not match the member's enrolment record."""

    reason = "IDENTITY_MISMATCH"
    sentence = "the name, document or birth date do not match the member's enrolment record"


class FaceVerificationRequired(FailedPrecondition):
    reason = "FACE_VERIFICATION_REQUIRED"
    sentence = "a member over 16 needs a face verification reference"


class RefundExceedsSettlement(FailedPrecondition):
    reason = "REFUND_EXCEEDS_SETTLEMENT"
    sentence = "the refund is more than what is left of the settlement"


class AlreadyReversed(FailedPrecondition):
    reason = "ALREADY_REVERSED"
    sentence = "the settlement, or the request itself, was reversed already"


class RefundAlreadySpent(FailedPrecondition):
    """A refund's reversal would take back money its account no longer holds. Refused rather than
    owed: gongji keeps no receivable, and a balance never goes below zero."""

    reason = "REFUND_ALREADY_SPENT"
    sentence = "an account the refund credited no longer holds that money: the refund stands"


class VoucherRefused(FailedPrecondition):
    """An e-voucher that cannot be used: forged or unknown, expired, or used before."""


class VoucherInvalid(VoucherRefused):
    reason = "VOUCHER_INVALID"
    sentence = "the e-voucher is not valid (forged, unknown, or its binding ended)"


class VoucherExpired(VoucherRefused):
    reason = "VOUCHER_EXPIRED"
    sentence = "the e-voucher has expired; ask the patient to show a fresh one"


class VoucherAlreadyUsed(VoucherRefused):
    reason = "VOUCHER_ALREADY_USED"
    sentence = "the e-voucher was used for another settlement already"


# ---- the rest ---------------------------------------------------------------------------------------
class FamilyLimitReached(GongjiError):
    code = "RESOURCE_EXHAUSTED"
    reason = "FAMILY_LIMIT_REACHED"
    sentence = "the holder has the most bound members allowed"


class RegionPolicyLimitReached(GongjiError):
    code = "RESOURCE_EXHAUSTED"
    reason = "REGION_POLICY_LIMIT_REACHED"
    sentence = "the table of region policies is full"


class PremiumRateLimitReached(GongjiError):
    code = "RESOURCE_EXHAUSTED"
    reason = "PREMIUM_RATE_LIMIT_REACHED"
    sentence = "the table of premium rates is full"


class EventConsumersLimitReached(GongjiError):
    """A credential names at most EVENT_CONSUMER_NAMES_MAX consumers (each is a series of the lag metric)."""

    code = "RESOURCE_EXHAUSTED"
    reason = "EVENT_CONSUMERS_LIMIT_REACHED"
    sentence = "this credential names as many event consumers as it may"


class CursorExpired(FailedPrecondition):
    """Retention deleted events after the cursor: reading on from it would skip them unseen."""

    reason = "CURSOR_EXPIRED"
    sentence = "events after this cursor were deleted by retention; read from the oldest kept, and reconcile"


class CursorAhead(GongjiError):
    """The cursor is past the last position given: not one of this server's streams."""

    code = "OUT_OF_RANGE"
    reason = "CURSOR_AHEAD"
    sentence = "the cursor is past the newest event: it is not a position of this event stream"


class Overloaded(GongjiError):
    """Refused at the edge so that no caller takes the service from the others (gongji.api.admission).
    Nothing was read or written; the client may retry after a pause."""

    code = "RESOURCE_EXHAUSTED"


class ServerBusy(Overloaded):
    """The server has as many calls in flight as it takes (GONGJI_MAX_CONCURRENT_RPCS)."""

    reason = "SERVER_BUSY"
    sentence = "the server has as many calls in flight as it takes; retry after a pause"


class CallerBusy(Overloaded):
    """This credential (or its institution) already has its fair share of calls in flight."""

    reason = "CALLER_BUSY"
    sentence = "this caller has its share of calls in flight; retry after a pause"


class RequestMessageTimeout(Overloaded):
    """The call's headers came but its request message did not within the wait (a slow or hostile
    client holding a stream open)."""

    reason = "REQUEST_MESSAGE_TIMEOUT"
    sentence = "the request message did not follow its headers in time"


class EventStreamsBusy(Overloaded):
    """As many event streams are open as the server, or this credential, may hold (EVENT_STREAMS_MAX,
    EVENT_STREAMS_PER_CREDENTIAL_MAX)."""

    reason = "EVENT_STREAMS_BUSY"
    sentence = "as many event streams are open as this server or this caller may hold; retry after a pause"


class IdempotencyKeyReused(GongjiError):
    """The same request id came back with different content."""

    code = "ALREADY_EXISTS"
    reason = "IDEMPOTENCY_KEY_REUSED"
    sentence = "this request id was used before for a different request"


class PremiumAlreadyPaid(GongjiError):
    """The beneficiary's premium of that year is paid already (by this payer or another) and not refunded."""

    code = "ALREADY_EXISTS"
    reason = "PREMIUM_ALREADY_PAID"
    sentence = "the beneficiary's premium for this year is paid already"


class TransactionAborted(GongjiError):
    code = "ABORTED"
    reason = "TRANSACTION_ABORTED"
    sentence = "the transaction was aborted by a conflict; retry with the same request id"


class Internal(GongjiError):
    """A defect of ours. The message the client sees is generic; the log has the class and frames."""

    code = "INTERNAL"
    reason = "INTERNAL"
    sentence = "an internal error; it is logged"


class DatabaseUnavailable(GongjiError):
    code = "UNAVAILABLE"
    reason = "DATABASE_UNAVAILABLE"
    sentence = "the database cannot be reached; retry later"


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
