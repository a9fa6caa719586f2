"""`gongji client`: one subcommand per RPC of the contract (RPC_COMMANDS), for people at a shell and for
scripts. Person arguments take ID numbers or demo aliases (`demo:xiaoli`); settle and quote first issue
the patient's e-voucher. Success prints the answer as JSON on stdout; anything else prints one line on
stderr and exits with a status that says what kind of failure it was (EXIT_* below, docs/cli.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from gongji.demo import ALIASES
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
    wallet_pb2,
    wallet_pb2_grpc,
)

DESCRIPTION = """\
Call a running gongji server: one subcommand per RPC. Success prints the answer as JSON on stdout;
a failure prints one line on stderr, `error: <sentence> (<REASON>)`, and exits with a status of its kind."""

# Exit statuses, by kind of outcome (docs/cli.md).
EXIT_OK = 0
EXIT_REFUSED = 1  # the server understood the request and refused it
EXIT_USAGE = 2  # the command line or the local configuration is wrong; nothing was sent
EXIT_UNREACHABLE = 3  # no answer: unreachable, unavailable, deadline exceeded, overloaded; retry later
EXIT_AUTH = 4  # no token, or the server does not know it
EXIT_SERVER = 5  # a fault of the server (INTERNAL, UNKNOWN, ...)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0
TOKEN_KINDS = ("terminal", "app", "operator", "consumer")
# The services of the contract, from the descriptors (tests/unit/test_client_args.py checks RPC_COMMANDS
# against every service of every proto file).
SERVICES = tuple(
    service
    for module in (settlement_pb2, family_pb2, wallet_pb2, account_pb2, events_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)

_UNREACHABLE_HINT = "is `make run` serving on {target}? set --target or GONGJI_TARGET"
_AUTH_HINT = "set --{kind}-token or GONGJI_{KIND}_TOKEN, or run `make run` once to write {file}"
_OVERLOADED = frozenset({"SERVER_BUSY", "CALLER_BUSY", "REQUEST_MESSAGE_TIMEOUT"})
_EXIT_BY_CODE = {
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
    grpc.StatusCode.ABORTED: EXIT_UNREACHABLE,
    grpc.StatusCode.CANCELLED: EXIT_UNREACHABLE,
    grpc.StatusCode.INTERNAL: EXIT_SERVER,
    grpc.StatusCode.UNKNOWN: EXIT_SERVER,
    grpc.StatusCode.UNIMPLEMENTED: EXIT_SERVER,
    grpc.StatusCode.DATA_LOSS: EXIT_SERVER,
}


class ClientError(Exception):
    """A failure before or around the call: one line for stderr and the exit status of its kind."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ---- arguments: enums, people, days -------------------------------------------------------------------
def enum_words(enum_type: Any) -> dict[str, Any]:
    """The values of a proto enum as lowercase words without the enum's prefix (`RELATIONSHIP_SPOUSE` is
    `spouse`), from its descriptor; the zero (UNSPECIFIED) value is left out."""
    values = enum_type.DESCRIPTOR.values
    prefix = enum_type.DESCRIPTOR.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return {v.name.removeprefix(prefix).lower(): v.number for v in values if v.number != 0}


RELATIONSHIPS = enum_words(types_pb2.Relationship)
DOCUMENT_TYPES = enum_words(types_pb2.DocumentType)
SCOPES = enum_words(types_pb2.GrantScope)
SCHEMES = enum_words(types_pb2.Scheme)
STATUSES = enum_words(types_pb2.PersonStatus)
GROUPINGS = enum_words(settlement_pb2.TotalsGrouping)
REFUND_TREATMENTS = enum_words(settlement_pb2.RefundTreatment)
CARDS = {w: n for w, n in enum_words(types_pb2.CertificateType).items() if w != "e_voucher"}
MED_TYPES = enum_words(types_pb2.MedType)
INSUTYPES = {str(n): n for n in enum_words(types_pb2.Insutype).values()}  # by the platform's code: 310, 390
# The bill's parts, as options of settle and quote and fields of BillParts.
BILL_PARTS = tuple(f.name for f in types_pb2.BillParts.DESCRIPTOR.fields)
# Where a patient's wallet pays at settlement (policy-set --wallet-order).
WALLET_ORDERS = {
    "before-account": account_pb2.WALLET_ORDER_BEFORE_ACCOUNT,
    "after-account": account_pb2.WALLET_ORDER_AFTER_ACCOUNT,
    "after-mutual-aid": account_pb2.WALLET_ORDER_AFTER_MUTUAL_AID,
}
# Who may pay a kind of care's wholly self-paid items (policy-set --wholly-self-paid MED_TYPE=WHO), as
# WhollySelfPaidRule's (account_pays, mutual_aid_pays).
WHOLLY_SELF_PAID_PAYERS = {"cash": (False, False), "own": (True, False), "accounts": (True, True)}


def person(text: str) -> str:
    """An argparse type: an ID number as given, or the ID number of a demo alias such as `demo:xiaoli`."""
    if text.strip().lower().startswith("demo:"):
        found = ALIASES.get(text.strip().lower())
        if found is None:
            raise argparse.ArgumentTypeError(f"unknown demo alias {text!r} (known: {', '.join(ALIASES)})")
        return found.person_id
    return text


def day(text: str) -> str:
    """An argparse type: a calendar day written YYYY-MM-DD."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            dt.date.fromisoformat(text)
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"invalid day {text!r} (YYYY-MM-DD)")


def _integer(text: str, bits: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number {text!r}") from None
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise argparse.ArgumentTypeError(f"{text} is out of range (a {bits}-bit integer)")
    return value


def fen(text: str) -> int:
    """An argparse type: an amount in fen, a whole number that fits the contract's int64 (the server
    judges its range)."""
    return _integer(text, 64)


def int32(text: str) -> int:
    """An argparse type: a count or a year, a whole number that fits the contract's int32."""
    return _integer(text, 32)


def med_type(text: str) -> str:
    """An argparse type: a med_type word, in any case, with - or _ (`chronic-outpatient`)."""
    return text.strip().lower().replace("-", "_")


def wholly_self_paid_rule(text: str) -> account_pb2.WhollySelfPaidRule:
    """An argparse type: MED_TYPE=WHO, e.g. `pharmacy=cash`: who may pay that kind of care's wholly
    self-paid items (WHOLLY_SELF_PAID_PAYERS)."""
    word, _, who = text.partition("=")
    payers = WHOLLY_SELF_PAID_PAYERS.get(who.strip().lower())
    if med_type(word) not in MED_TYPES or payers is None:
        raise argparse.ArgumentTypeError(
            f"invalid rule {text!r}: MED_TYPE=WHO, MED_TYPE one of {', '.join(MED_TYPES)}, WHO one of "
            f"{', '.join(WHOLLY_SELF_PAID_PAYERS)}"
        )
    account, mutual_aid = payers
    return account_pb2.WhollySelfPaidRule(
        med_type=MED_TYPES[med_type(word)], account_pays=account, mutual_aid_pays=mutual_aid
    )


def relationship_list(text: str) -> list[Any]:
    """An argparse type: comma-separated relationship words, e.g. `spouse,parent,child`."""
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    unknown = [w for w in words if w not in RELATIONSHIPS]
    if unknown or not words:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {', '.join(map(repr, unknown)) or 'none'} (choose from {', '.join(RELATIONSHIPS)})"
        )
    return [RELATIONSHIPS[w] for w in words]


# ---- connection and tokens ----------------------------------------------------------------------------
@dataclass
class Tokens:
    """Bearer tokens by kind: --{kind}-token, else GONGJI_{KIND}_TOKEN, else the demo tokens file that
    `gongji serve --demo` (`make run`) writes; read only when a call needs a token of that kind."""

    given: dict[str, str]
    demo_file: Path
    _demo: dict[str, str] | None = field(default=None, repr=False)

    def get(self, kind: str) -> str | None:
        token = self.given.get(kind) or os.environ.get(f"GONGJI_{kind.upper()}_TOKEN")
        if token:
            return token
        return self._demo_tokens().get(kind)

    def _demo_tokens(self) -> dict[str, str]:
        if self._demo is None:
            self._demo = {}
            try:
                found = json.loads(self.demo_file.read_text()) if self.demo_file.exists() else {}
            except (OSError, ValueError) as exc:
                raise ClientError(f"cannot read the demo tokens in {self.demo_file}: {exc}", EXIT_AUTH) from exc
            if isinstance(found, dict):
                self._demo = {k: v for k, v in found.items() if isinstance(v, str)}
        return self._demo

    def auth(self, kind: str) -> tuple[tuple[str, str], ...]:
        token = self.get(kind)
        hint = _AUTH_HINT.format(kind=kind, KIND=kind.upper(), file=self.demo_file)
        if not token:
            raise ClientError(f"no {kind} token for this call; {hint}", EXIT_AUTH)
        if not re.fullmatch(r"[\x21-\x7e]+", token):
            raise ClientError(f"the {kind} token is not a bearer token (printable ASCII, no spaces); {hint}", EXIT_AUTH)
        return (("authorization", f"Bearer {token}"),)


def tokens(data_dir: Path, args: argparse.Namespace | None = None) -> Tokens:
    given = {k: v for k in TOKEN_KINDS if (v := getattr(args, f"{k}_token", None))}
    return Tokens(given, data_dir / "demo-tokens.json")


def _setting(args: argparse.Namespace, name: str, env: str) -> Any:
    """A common option: its flag (before or after the subcommand), else its environment variable."""
    value = getattr(args, name, None)
    return value if value not in (None, "") else os.environ.get(env) or None


def target(args: argparse.Namespace) -> str:
    return str(_setting(args, "target", "GONGJI_TARGET") or DEFAULT_TARGET)


def timeout_s(args: argparse.Namespace) -> float:
    value = _setting(args, "timeout_s", "GONGJI_CLIENT_TIMEOUT_S")
    try:
        seconds = float(value) if value is not None else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ClientError(f"GONGJI_CLIENT_TIMEOUT_S is not a number of seconds: {value!r}", EXIT_USAGE) from None
    if seconds <= 0:
        raise ClientError(f"the timeout must be positive seconds, not {seconds:g}", EXIT_USAGE)
    return seconds


def _read(path: str, what: str, marker: bytes) -> bytes:
    """A PEM file's bytes; a usage error when it cannot be read or holds no `marker` (gRPC would only
    fail the handshake later, naming neither the file nor the reason)."""
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read the {what} {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    if marker not in content:
        raise ClientError(f"the {what} {path} is not PEM: no {marker.decode()} in it", EXIT_USAGE)
    return content


_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """Plaintext, or TLS (--tls, or any TLS file) verifying the server with --ca-file or the system's
    roots, with a client certificate for mTLS when --cert-file and --key-file are given."""
    ca_file = _setting(args, "ca_file", "GONGJI_CLIENT_CA_FILE")
    cert_file = _setting(args, "cert_file", "GONGJI_CLIENT_CERT_FILE")
    key_file = _setting(args, "key_file", "GONGJI_CLIENT_KEY_FILE")
    server_name = _setting(args, "server_name", "GONGJI_CLIENT_SERVER_NAME")
    tls = bool(getattr(args, "tls", False)) or os.environ.get("GONGJI_CLIENT_TLS", "").lower() in ("1", "true", "yes")
    if (cert_file is None) != (key_file is None):
        raise ClientError("--cert-file and --key-file go together (a client certificate and its key)", EXIT_USAGE)
    if not (tls or ca_file or cert_file):
        return grpc.aio.insecure_channel(target(args))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA file", _CERTIFICATE) if ca_file else None,
        private_key=_read(key_file, "key file", b"PRIVATE KEY-----") if key_file else None,
        certificate_chain=_read(cert_file, "certificate file", _CERTIFICATE) if cert_file else None,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(target(args), credentials, options=options)


# ---- refusals and failures as one line ----------------------------------------------------------------
def failure(exc: grpc.aio.AioRpcError, target: str = DEFAULT_TARGET) -> tuple[int, str]:
    """The exit status and the one line `error: <sentence> (<REASON>)` for a failed call: the reason of
    the status's google.rpc.ErrorInfo (else the gRPC code), the field violations of a BadRequest that the
    sentence does not already name, and a hint where the user can do something about it."""
    reason, violations = _details(exc)
    code = exc.code()
    status = _EXIT_BY_CODE.get(code, EXIT_REFUSED)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (reason is None or reason in _OVERLOADED):
        status = EXIT_UNREACHABLE  # the edge turned the call away: nothing was read or written
    label = reason or code.name
    text = " ".join((exc.details() or "").split())
    line = f"error: {label}" if text in ("", label) else f"error: {text} ({label})"
    extra = [v for v in violations if v not in text]
    if extra:
        line += ": " + "; ".join(extra)
    if status == EXIT_UNREACHABLE and reason is None:
        line += "; " + _UNREACHABLE_HINT.format(target=target)
    elif status == EXIT_AUTH:
        line += "; check --terminal-token/--app-token/--operator-token or GONGJI_*_TOKEN (.gongji/demo-tokens.json)"
    return status, line


def _details(exc: grpc.aio.AioRpcError) -> tuple[str | None, list[str]]:
    status = None
    trailers: Any = exc.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:  # not a google.rpc.Status: show the code alone
                status = None
    reason = None
    violations = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = reason or info.reason or None
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [f"{v.field}: {v.description}" for v in bad.field_violations]
    return reason, violations


# ---- the calls ----------------------------------------------------------------------------------------
Call = Callable[[grpc.aio.Channel, argparse.Namespace, Tokens], Awaitable[Message | None]]


def _settlement(ch: grpc.aio.Channel) -> settlement_pb2_grpc.SettlementServiceAsyncStub:
    return settlement_pb2_grpc.SettlementServiceStub(ch)


def _family(ch: grpc.aio.Channel) -> family_pb2_grpc.FamilyServiceAsyncStub:
    return family_pb2_grpc.FamilyServiceStub(ch)


def _account(ch: grpc.aio.Channel) -> account_pb2_grpc.AccountServiceAsyncStub:
    return account_pb2_grpc.AccountServiceStub(ch)


def _wallet(ch: grpc.aio.Channel) -> wallet_pb2_grpc.WalletServiceAsyncStub:
    return wallet_pb2_grpc.WalletServiceStub(ch)


async def _voucher(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> str:
    issued = await _family(ch).IssueVoucher(
        family_pb2.IssueVoucherRequest(
            person_id=args.patient, requester_id=args.holder or args.patient, authorizer_id=args.picked
        ),
        metadata=tokens.auth("app"),
        timeout=timeout_s(args),
    )
    return str(issued.voucher)


def _bill(args: argparse.Namespace) -> dict[str, Any]:
    """The bill: --amount-fen alone, or the parts given (the others 0) and their sum as the amount; an
    --amount-fen given with the parts must be that sum. Checked before anything is sent."""
    parts = {name: getattr(args, name) for name in BILL_PARTS if getattr(args, name) is not None}
    if not parts:
        if args.amount_fen is None:
            options = ", ".join(f"--{name.replace('_', '-')}" for name in BILL_PARTS)
            raise ClientError(f"the bill: --amount-fen, or its parts ({options})", EXIT_USAGE)
        return {"amount_fen": args.amount_fen}
    total = sum(parts.values())
    if args.amount_fen is not None and args.amount_fen != total:
        raise ClientError(
            f"--amount-fen {args.amount_fen} is not the sum of the bill's parts, {total}: leave it out", EXIT_USAGE
        )
    if not -(2**63) <= total < 2**63:
        raise ClientError(f"the bill's parts add up to {total}, out of range (a 64-bit integer)", EXIT_USAGE)
    return {"amount_fen": total, "bill": types_pb2.BillParts(**parts)}


def _payment(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"patient_id": args.patient, **_bill(args)}
    if args.med_type:
        fields["med_type"] = MED_TYPES[args.med_type]
    if args.insutype:
        fields["insutype"] = INSUTYPES[args.insutype]
    if args.authorizer:
        fields["authorizer_id"] = args.authorizer
    if args.no_account:
        fields["use_personal_account"] = False
    return fields


async def _presented(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> dict[str, Any]:
    """The patient's e-voucher, issued first; or, with --card, the card read at the counter."""
    if args.card is None:
        return {"voucher": await _voucher(ch, args, tokens)}
    return {
        "certificate_type": CARDS[args.card],
        "card_number": args.card_number or args.patient,
        "card_serial": args.card_serial or "",
    }


async def settle(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    metadata = tokens.auth("terminal")  # before the voucher: a missing token wastes no voucher
    payment = _payment(args)  # and a bill that does not add up
    presented = await _presented(ch, args, tokens)
    request = settlement_pb2.SettleRequest(request_id=args.request_id, hold_id=args.hold or "", **presented, **payment)
    return await _settlement(ch).Settle(request, metadata=metadata, timeout=timeout_s(args))


async def quote(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    metadata = tokens.auth("terminal")
    payment = _payment(args)
    presented = await _presented(ch, args, tokens)
    request = settlement_pb2.QuoteRequest(**presented, **payment)
    if args.hold_seconds:
        request.hold_seconds = args.hold_seconds
        request.request_id = args.request_id
    return await _settlement(ch).Quote(request, metadata=metadata, timeout=timeout_s(args))


async def release_hold(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = settlement_pb2.ReleaseHoldRequest(hold_id=args.hold)
    return await _settlement(ch).ReleaseHold(request, metadata=tokens.auth("terminal"), timeout=timeout_s(args))


async def cancel(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = settlement_pb2.CancelRequest(
        request_id=args.request_id, settlement_id=args.settlement, amount_fen=args.amount_fen
    )
    return await _settlement(ch).Cancel(request, metadata=tokens.auth("terminal"), timeout=timeout_s(args))


async def reverse(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = settlement_pb2.ReverseRequest(original_request_id=args.original_request_id)
    return await _settlement(ch).Reverse(request, metadata=tokens.auth("terminal"), timeout=timeout_s(args))


async def get_settlement(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    if args.settlement is not None:
        request = settlement_pb2.GetSettlementRequest(settlement_id=args.settlement)
    else:
        request = settlement_pb2.GetSettlementRequest(request_id=args.settle_request_id)
    return await _settlement(ch).GetSettlement(request, metadata=tokens.auth("terminal"), timeout=timeout_s(args))


async def reconcile(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = settlement_pb2.ReconcileRequest(
        date=args.date,
        detail=args.detail,
        institution_id=args.institution or "",
        page_size=args.page_size or 0,
        page_token=args.page_token or "",
    )
    kind = "operator" if args.institution else "terminal"
    return await _settlement(ch).Reconcile(request, metadata=tokens.auth(kind), timeout=timeout_s(args))


def _books(args: argparse.Namespace) -> list[Any]:
    """The institution's detail list from its CSV export (gongji.books), sorted."""
    from gongji import books

    try:
        return books.read(Path(args.csv))
    except OSError as exc:
        raise ClientError(f"cannot read {args.csv}: {exc.strerror}", EXIT_USAGE) from None
    except books.BooksError as exc:
        raise ClientError(str(exc), EXIT_USAGE) from None


def _check_days(args: argparse.Namespace) -> tuple[str, str, str]:
    """The institution (empty: the terminal's own) and the first and last day of a check."""
    return args.institution or "", args.start_date, args.end_date or args.start_date


async def check_totals(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    from gongji import books

    lines = books.totals_lines(_books(args), grouping=args.grouping, refunds=args.refunds)
    institution_id, start_date, end_date = _check_days(args)
    request = settlement_pb2.CheckTotalsRequest(
        institution_id=institution_id,
        start_date=start_date,
        end_date=end_date,
        grouping=GROUPINGS[args.grouping],
        refunds=REFUND_TREATMENTS[args.refunds],
        lines=lines,
    )
    kind = "operator" if args.institution else "terminal"
    return await _settlement(ch).CheckTotals(request, metadata=tokens.auth(kind), timeout=timeout_s(args))


async def check_detail(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    from gongji import books

    rows = _books(args)
    metadata = tokens.auth("operator" if args.institution else "terminal")
    stub = _settlement(ch)

    async def call(request: settlement_pb2.CheckDetailRequest) -> settlement_pb2.CheckDetailResponse:
        reply: settlement_pb2.CheckDetailResponse = await stub.CheckDetail(
            request, metadata=metadata, timeout=timeout_s(args)
        )
        return reply

    institution_id, start_date, end_date = _check_days(args)
    base = settlement_pb2.CheckDetailRequest(institution_id=institution_id, start_date=start_date, end_date=end_date)
    return await books.check_detail(call, rows, base)


async def voucher(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = family_pb2.IssueVoucherRequest(
        person_id=args.person,
        requester_id=args.requester or args.person,
        ttl_seconds=args.ttl_s or 0,
        authorizer_id=args.authorizer,
    )
    return await _family(ch).IssueVoucher(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def grant(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = family_pb2.GrantRequest(
        authorizer_id=args.authorizer,
        beneficiary_id=args.beneficiary,
        relationship=RELATIONSHIPS[args.relationship],
    )
    return await _family(ch).Grant(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def revoke(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = family_pb2.RevokeRequest(
        authorizer_id=args.authorizer, beneficiary_id=args.beneficiary, requester_id=args.requester or ""
    )
    return await _family(ch).Revoke(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def grant_cap(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = family_pb2.SetGrantCapRequest(
        authorizer_id=args.authorizer,
        beneficiary_id=args.beneficiary,
        yearly_cap_fen=None if args.clear else args.yearly_cap_fen,
    )
    return await _family(ch).SetGrantCap(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def bind(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = family_pb2.BindRequest(
        holder_id=args.holder,
        member_id=args.member,
        relationship=RELATIONSHIPS[args.relationship],
        member_name=args.name,
        document_type=DOCUMENT_TYPES[args.document_type],
        document_number=args.document_number or args.member,
        birth_date=args.birth_date,
        phone=args.phone,
        reason=args.reason,
        face_verification_ref=args.face_ref or "",
    )
    return await _family(ch).Bind(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def unbind(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = family_pb2.UnbindRequest(holder_id=args.holder, member_id=args.member)
    return await _family(ch).Unbind(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def family(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = family_pb2.ListFamilyRequest(person_id=args.person)
    return await _family(ch).ListFamily(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def open_wallet(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = wallet_pb2.OpenWalletRequest(person_id=args.person)
    return await _wallet(ch).OpenWallet(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def get_wallet(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = wallet_pb2.GetWalletRequest(person_id=args.person)
    return await _wallet(ch).GetWallet(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def send_transfer(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = wallet_pb2.SendTransferRequest(
        request_id=args.request_id,
        sender_id=args.sender,
        recipient_id=args.recipient,
        relationship=RELATIONSHIPS[args.relationship],
        amount_fen=args.amount_fen,
    )
    return await _wallet(ch).SendTransfer(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def accept_transfer(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = wallet_pb2.AcceptTransferRequest(transfer_id=args.transfer, recipient_id=args.recipient)
    return await _wallet(ch).AcceptTransfer(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def decline_transfer(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = wallet_pb2.DeclineTransferRequest(transfer_id=args.transfer, recipient_id=args.recipient)
    return await _wallet(ch).DeclineTransfer(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def list_transfers(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = wallet_pb2.ListTransfersRequest(
        person_id=args.person, page_size=args.page_size or 0, page_token=args.page_token or ""
    )
    return await _wallet(ch).ListTransfers(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def enroll(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.EnrollRequest(
        person_id=args.person,
        name=args.name,
        birth_date=args.birth_date,
        region_code=args.region,
        scheme=SCHEMES[args.scheme],
        status=STATUSES[args.status],
        document_type=DOCUMENT_TYPES[args.document_type] if args.document_type else types_pb2.DOCUMENT_TYPE_UNSPECIFIED,
        document_number=args.document_number or "",
    )
    return await _account(ch).Enroll(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


async def credit(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.CreditRequest(
        request_id=args.request_id, person_id=args.person, amount_fen=args.amount_fen, memo=args.memo or ""
    )
    return await _account(ch).Credit(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


async def account(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.GetAccountRequest(person_id=args.person)
    return await _account(ch).GetAccount(request, metadata=tokens.auth(args.as_kind), timeout=timeout_s(args))


async def policy_set(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    policy = account_pb2.RegionPolicy(
        region_key=args.region,
        scope=SCOPES[args.scope],
        allowed_relationships=args.allow,
        beneficiary_yearly_cap_fen=args.beneficiary_cap_fen,
        authorizer_floor_fen=args.authorizer_floor_fen,
        accepted_certificate_types=[CARDS[c] for c in args.accept_card or ()]
        + ([types_pb2.CERTIFICATE_TYPE_E_VOUCHER] if args.accept_card is not None else []),
        mutual_aid_out_of_region=not args.no_mutual_aid_out_of_region,
        mutual_aid_out_of_province=not args.no_mutual_aid_out_of_province,
        wholly_self_paid_rules=args.wholly_self_paid or (),
        wallet=account_pb2.WalletPolicy(
            relationships=args.wallet_allow or (),
            scope=SCOPES[args.wallet_scope] if args.wallet_scope else types_pb2.GRANT_SCOPE_UNSPECIFIED,
            sends_per_day=args.wallet_sends_per_day,
            send_max_fen=args.wallet_send_max_fen,
            quiet_from=args.wallet_quiet_from or "",
            quiet_until=args.wallet_quiet_until or "",
            expires_at=args.wallet_expires_at or "",
        ),
        wallet_order=WALLET_ORDERS[args.wallet_order] if args.wallet_order else account_pb2.WALLET_ORDER_UNSPECIFIED,
    )
    request = account_pb2.SetRegionPolicyRequest(policy=policy)
    return await _account(ch).SetRegionPolicy(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


async def policies(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.ListRegionPoliciesRequest()
    return await _account(ch).ListRegionPolicies(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


async def ledger(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    """The newest entries of a person's ledger, as the app shows them (交易记录)."""
    request = account_pb2.ListLedgerRequest(
        person_id=args.person, page_size=args.page_size, page_token=args.page_token or ""
    )
    return await _account(ch).ListLedger(request, metadata=tokens.auth(args.as_kind), timeout=timeout_s(args))


def _next_year() -> int:
    """The contribution year collected for now, as a rule: next year, in China's calendar."""
    return dt.datetime.now(ZoneInfo("Asia/Shanghai")).year + 1


async def premium_rate_set(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    rate = account_pb2.PremiumRate(
        region_key=args.region,
        year=args.year or _next_year(),
        amount_fen=args.amount_fen,
        opens_on=args.opens,
        closes_on=args.closes,
    )
    request = account_pb2.SetPremiumRateRequest(rate=rate)
    return await _account(ch).SetPremiumRate(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


async def premium_rates(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.ListPremiumRatesRequest(year=args.year or 0)
    return await _account(ch).ListPremiumRates(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


async def premium_pay(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.PayPremiumRequest(
        request_id=args.request_id,
        payer_id=args.payer,
        beneficiary_id=args.beneficiary,
        year=args.year or _next_year(),
    )
    return await _account(ch).PayPremium(request, metadata=tokens.auth("app"), timeout=timeout_s(args))


async def premium_refund(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.RefundPremiumRequest(payment_id=args.payment, reason=args.reason)
    return await _account(ch).RefundPremium(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


async def premium_report(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> Message:
    request = account_pb2.ReportPremiumsRequest(
        from_date=args.from_date,
        to_date=args.to_date,
        region_key=args.region or "",
        page_size=args.page_size or 0,
        page_token=args.page_token or "",
    )
    return await _account(ch).ReportPremiums(request, metadata=tokens.auth("operator"), timeout=timeout_s(args))


# Every RPC of the contract, by its full name, and the subcommand that calls it.
async def events(ch: grpc.aio.Channel, args: argparse.Namespace, tokens: Tokens) -> None:
    """Print the events after --after, one JSON object a line (proto3 JSON: int64 as strings), as they
    come; with --follow, until interrupted."""
    request = events_pb2.StreamEventsRequest(
        after_position=args.after, follow=args.follow, consumer=args.consumer or "", max_events=args.max_events
    )
    call = events_pb2_grpc.EventServiceStub(ch).StreamEvents(
        request, metadata=tokens.auth(args.as_kind), timeout=None if args.follow else timeout_s(args)
    )
    async for reply in call:
        line = json_format.MessageToDict(reply.event, preserving_proto_field_name=True)
        print(json.dumps(line, ensure_ascii=False, separators=(",", ":")), flush=True)


RPC_COMMANDS: dict[str, str] = {
    "gongji.v1.SettlementService.Quote": "quote",
    "gongji.v1.SettlementService.Settle": "settle",
    "gongji.v1.SettlementService.ReleaseHold": "release-hold",
    "gongji.v1.SettlementService.Cancel": "cancel",
    "gongji.v1.SettlementService.Reverse": "reverse",
    "gongji.v1.SettlementService.GetSettlement": "get-settlement",
    "gongji.v1.SettlementService.Reconcile": "reconcile",
    "gongji.v1.SettlementService.CheckTotals": "check-totals",
    "gongji.v1.SettlementService.CheckDetail": "check-detail",
    "gongji.v1.FamilyService.Bind": "bind",
    "gongji.v1.FamilyService.Unbind": "unbind",
    "gongji.v1.FamilyService.Grant": "grant",
    "gongji.v1.FamilyService.Revoke": "revoke",
    "gongji.v1.FamilyService.SetGrantCap": "grant-cap",
    "gongji.v1.FamilyService.ListFamily": "family",
    "gongji.v1.FamilyService.IssueVoucher": "voucher",
    "gongji.v1.WalletService.OpenWallet": "open-wallet",
    "gongji.v1.WalletService.GetWallet": "get-wallet",
    "gongji.v1.WalletService.SendTransfer": "send-transfer",
    "gongji.v1.WalletService.AcceptTransfer": "accept-transfer",
    "gongji.v1.WalletService.DeclineTransfer": "decline-transfer",
    "gongji.v1.WalletService.ListTransfers": "list-transfers",
    "gongji.v1.AccountService.Enroll": "enroll",
    "gongji.v1.AccountService.SetRegionPolicy": "policy-set",
    "gongji.v1.AccountService.ListRegionPolicies": "policies",
    "gongji.v1.AccountService.Credit": "credit",
    "gongji.v1.AccountService.GetAccount": "account",
    "gongji.v1.AccountService.ListLedger": "ledger",
    "gongji.v1.AccountService.SetPremiumRate": "premium-rate-set",
    "gongji.v1.AccountService.ListPremiumRates": "premium-rates",
    "gongji.v1.AccountService.PayPremium": "premium-pay",
    "gongji.v1.AccountService.RefundPremium": "premium-refund",
    "gongji.v1.AccountService.ReportPremiums": "premium-report",
    "gongji.v1.EventService.StreamEvents": "events",
}

COMMANDS: dict[str, Call] = {
    "events": events,
    "settle": settle,
    "quote": quote,
    "release-hold": release_hold,
    "cancel": cancel,
    "reverse": reverse,
    "get-settlement": get_settlement,
    "reconcile": reconcile,
    "check-totals": check_totals,
    "check-detail": check_detail,
    "account": account,
    "voucher": voucher,
    "grant": grant,
    "revoke": revoke,
    "grant-cap": grant_cap,
    "bind": bind,
    "unbind": unbind,
    "family": family,
    "open-wallet": open_wallet,
    "get-wallet": get_wallet,
    "send-transfer": send_transfer,
    "accept-transfer": accept_transfer,
    "decline-transfer": decline_transfer,
    "list-transfers": list_transfers,
    "enroll": enroll,
    "credit": credit,
    "policy-set": policy_set,
    "policies": policies,
    "ledger": ledger,
    "premium-rate-set": premium_rate_set,
    "premium-rates": premium_rates,
    "premium-pay": premium_pay,
    "premium-refund": premium_refund,
    "premium-report": premium_report,
}


async def run(args: argparse.Namespace, tokens: Tokens) -> dict[str, Any] | None:
    """Call the subcommand's RPC; its answer as a dict (proto field names, every field shown). A stream
    (events) prints as it comes and answers None."""
    command = COMMANDS[args.client_command]
    async with channel(args) as ch:
        reply = await command(ch, args, tokens)
    if reply is None:
        return None
    result: dict[str, Any] = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


# ---- the command line ---------------------------------------------------------------------------------
def common_options(*, top: bool) -> argparse.ArgumentParser:
    """Connection and token options, accepted before or after the subcommand: on `gongji client` itself
    (`top`) and on every subcommand, where a flag left out keeps what was given before (SUPPRESS). Unset
    flags fall back to their environment variables when the call is made (target(), channel(), Tokens)."""
    p = argparse.ArgumentParser(add_help=False)
    d: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("connection and tokens (before or after the subcommand; a flag, else its variable)")
    g.add_argument("--target", metavar="HOST:PORT", help=f"the server (GONGJI_TARGET; default {DEFAULT_TARGET})", **d)
    g.add_argument(
        "--tls",
        action="store_true",
        help="TLS, verifying the server with the system's roots (GONGJI_CLIENT_TLS=1)",
        **d,
    )
    g.add_argument(
        "--ca-file",
        metavar="PEM",
        help="root certificates that verify the server; implies --tls (GONGJI_CLIENT_CA_FILE)",
        **d,
    )
    g.add_argument(
        "--cert-file",
        metavar="PEM",
        help="client certificate chain for mTLS, with --key-file (GONGJI_CLIENT_CERT_FILE)",
        **d,
    )
    g.add_argument(
        "--key-file", metavar="PEM", help="the client certificate's private key (GONGJI_CLIENT_KEY_FILE)", **d
    )
    g.add_argument(
        "--server-name", metavar="NAME", help="the name the server's certificate must have, when not the target's host "
        "(GONGJI_CLIENT_SERVER_NAME)", **d
    )  # fmt: skip
    for kind, calls in (
        ("terminal", "a terminal's settlement calls and reconcile"),
        ("app", "the app backend's family calls, vouchers, wallets and transfers, premium-pay"),
        ("operator", "an operator's enroll, credit, policies, premium rates, reports"),
        ("consumer", "a downstream system's events (ID numbers masked)"),
    ):
        g.add_argument(
            f"--{kind}-token", metavar="TOKEN", help=f"bearer token for {calls}; default "
            f"GONGJI_{kind.upper()}_TOKEN, then the demo tokens (GONGJI_DATA_DIR/demo-tokens.json)", **d
        )  # fmt: skip
    g.add_argument(
        "--timeout-s", type=float, metavar="SECONDS",
        help=f"deadline of each call, in seconds (GONGJI_CLIENT_TIMEOUT_S; default {DEFAULT_TIMEOUT_S:g})", **d
    )  # fmt: skip
    return p


EPILOG = f"""\
people: an 18-character resident ID number, or a demo alias of the `make run` data set:
  {", ".join(ALIASES)}
exit status: 0 ok (JSON on stdout); 1 refused by the server; 2 usage or local configuration error;
  3 server unreachable, unavailable, busy or too slow (retry); 4 no token, or a token the server does not
  know; 5 server fault (INTERNAL, UNKNOWN). Failures print one line on stderr: error: <sentence> (<REASON>)
see docs/cli.md"""


def add_arguments(sub: Any, common: argparse.ArgumentParser) -> None:
    """The client's subcommands, on the `gongji client` parser's subparsers, each with `common`."""

    def add(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text, parents=[common])
        return parser

    _add_settlement_arguments(add)
    _add_family_arguments(add)
    _add_wallet_arguments(add)
    _add_account_arguments(add)
    _add_premium_arguments(add)
    ev = add("events", "events after a position, one JSON line each, in order (consumer, app or operator)")
    ev.add_argument("--after", type=int, default=0, metavar="POSITION",
                    help="the position of the last event already processed (default 0: the oldest kept)")  # fmt: skip
    ev.add_argument("--follow", action="store_true", help="keep reading new events as they come, until interrupted")
    ev.add_argument("--consumer", metavar="NAME", help="this consumer's name: gongji keeps its lag for the alert")
    ev.add_argument("--max-events", type=int32, default=0, metavar="N", help="stop after N events (default: no limit)")
    ev.add_argument("--as", dest="as_kind", choices=("consumer", "app", "operator"), default="consumer",
                    help="call with this token (default consumer: ID numbers masked)")  # fmt: skip


Add = Callable[[str, str], argparse.ArgumentParser]
_REQUEST_ID = "idempotency key, 1 to 64 of A-Z a-z 0-9 . _ : - (default: a new one); repeat it to retry safely"


def _add_settlement_arguments(add: Add) -> None:
    for name, text in (
        ("settle", "settle a bill (2207) for a patient, issuing the patient's e-voucher first (terminal, app)"),
        ("quote", "the split of a bill (2206), nothing committed (terminal, app for the voucher)"),
    ):
        x = add(name, text)
        x.add_argument(
            "--patient", type=person, metavar="PERSON", required=True, help="the patient: ID number or demo alias"
        )
        _add_bill_arguments(x)
        x.add_argument(
            "--authorizer",
            type=person,
            metavar="PERSON",
            help="use this authorizer's grant (default: the first live one)",
        )
        x.add_argument(
            "--holder",
            type=person,
            metavar="PERSON",
            help="a holder who bound the patient asks for the patient's voucher",
        )
        x.add_argument(
            "--picked",
            type=person,
            metavar="PERSON",
            help="the family member the patient picked in the app: the voucher carries their grant",
        )
        x.add_argument(
            "--card",
            type=str.lower,
            choices=CARDS,
            help="a card read at the counter instead of the e-voucher",
        )
        x.add_argument(
            "--card-number", type=person, metavar="PERSON", help="the number read from the card (default: the patient)"
        )
        x.add_argument("--card-serial", metavar="CODE", help="a social-security card's identification code (卡识别码)")
        x.add_argument("--no-account", action="store_true", help="pay everything in cash (no personal account)")
        _add_hold_arguments(x, name)
    h = add("release-hold", "give back the money of a pending hold at the till (terminal)")
    h.add_argument("--hold", required=True, metavar="ID", help="hold_id, as quote --hold-seconds answered it")
    c = add("cancel", "refund all or part of a settlement (2208) to where it came from (terminal)")
    c.add_argument("--settlement", required=True, metavar="ID", help="settlement_id, as settle answered it")
    c.add_argument(
        "--amount-fen",
        type=fen,
        metavar="FEN",
        default=0,
        help="refund this much, in fen (default 0: all that is left)",
    )
    c.add_argument("--request-id", default=None, help=_REQUEST_ID)
    r = add("reverse", "undo a settle whose answer never arrived (2601), by its request id (terminal)")
    r.add_argument("--original-request-id", required=True, metavar="ID", help="the request id of that settle")
    g = add("get-settlement", "one settlement of the terminal's institution, with its refunds (terminal)")
    key = g.add_mutually_exclusive_group(required=True)
    key.add_argument("--settlement", metavar="ID", help="settlement_id")
    key.add_argument("--request-id", dest="settle_request_id", metavar="ID", help="the request id of its settle")
    rc = add(
        "reconcile",
        "an institution's totals of a day (3201), and its settlements with --detail (3202) (terminal: its own; "
        "operator: --institution)",
    )
    rc.add_argument("--date", type=day, metavar="YYYY-MM-DD", required=True, help="calendar day in China, YYYY-MM-DD")
    rc.add_argument("--detail", action="store_true", help="include the day's settlements, a page at a time")
    rc.add_argument("--institution", metavar="ID", help="the institution; an operator's call (operator token)")
    rc.add_argument("--page-size", type=int32, help="settlements per page with --detail (default 100, at most 1000)")
    rc.add_argument("--page-token", help="next_page_token of the previous answer")
    _add_check_arguments(add)


def _add_hold_arguments(x: argparse.ArgumentParser, name: str) -> None:
    """settle's request id and the hold it captures; quote's hold."""
    if name == "settle":
        x.add_argument("--request-id", default=None, help=_REQUEST_ID)
        x.add_argument("--hold", metavar="ID", help="capture this hold (hold_id, as quote --hold-seconds answered it)")
        return
    x.add_argument(
        "--hold-seconds", type=int, metavar="S", default=0,
        help="hold the split for S seconds, 1 to 300, until a settle --hold captures it (default 0: no hold)",
    )  # fmt: skip
    x.add_argument("--request-id", default=None, help="with --hold-seconds: " + _REQUEST_ID)


def _add_bill_arguments(x: argparse.ArgumentParser) -> None:
    """The bill of settle and quote: its amount, or its parts, and the kind of care and insurance."""
    x.add_argument(
        "--amount-fen", type=fen, metavar="FEN",
        help="the bill, in fen (1/100 yuan); with the bill's parts leave it out: it is their sum (given, it must "
        "be their sum)",
    )  # fmt: skip
    for name, text in (
        ("in-scope", "within the policy scope (政策范围内自付)"),
        ("over-limit", "over the price limit (超限价自付)"),
        ("wholly-self-paid", "of wholly self-paid items (全自费), which the policy may leave to cash"),
    ):
        x.add_argument(
            f"--{name}-fen", type=fen, metavar="FEN",
            help=f"the bill's part {text}, in fen; any part given sends the bill as parts (a part left out: 0)",
        )  # fmt: skip
    x.add_argument(
        "--med-type", type=med_type, choices=MED_TYPES,
        help="the kind of care (医疗类别); required with the bill's parts",
    )  # fmt: skip
    x.add_argument(
        "--insutype", choices=INSUTYPES,
        help="the insurance settled under (险种类型): 310 employee, 390 resident; must be the patient's "
        "(default: the patient's)",
    )  # fmt: skip


_CSV_HELP = "the institution's detail list, a CSV with a header (columns: docs/cli.md, check-detail)"


def _add_check_arguments(add: Add) -> None:
    for name, text in (
        ("check-totals", "compare the totals of the institution's CSV export with gongji's (3201), line by line "
         "(terminal: its own; operator: --institution)"),
        ("check-detail", "compare the institution's CSV export with gongji's rows (3202), a page at a time; prints "
         "only the rows that differ (terminal: its own; operator: --institution)"),
    ):  # fmt: skip
        x = add(name, text)
        x.add_argument("--csv", required=True, metavar="FILE", help=_CSV_HELP)
        x.add_argument(
            "--start-date", type=day, metavar="YYYY-MM-DD", required=True, help="first day (China), included"
        )
        x.add_argument("--end-date", type=day, metavar="YYYY-MM-DD", help="last day, included (default: --start-date)")
        x.add_argument("--institution", metavar="ID", help="the institution; an operator's call (operator token)")
        if name == "check-totals":
            x.add_argument(
                "--grouping", choices=list(GROUPINGS), default="all",
                help="lines by (default all): insutype and clearing_class read the CSV's column of that name",
            )  # fmt: skip
            x.add_argument(
                "--refunds", choices=list(REFUND_TREATMENTS), default="apart",
                help="refunds apart (default), netted into the settlements, or excluded",
            )  # fmt: skip


def _add_family_arguments(add: Add) -> None:
    v = add("voucher", "issue an e-voucher naming a person (app)")
    v.add_argument(
        "--person", type=person, metavar="PERSON", required=True, help="whom the voucher names (the patient)"
    )
    v.add_argument(
        "--requester", type=person, metavar="PERSON", help="a holder who bound the person (default: the person)"
    )
    v.add_argument("--ttl-s", type=int32, help="lifetime in seconds (default: the server's, 60; capped by it)")
    v.add_argument(
        "--authorizer",
        type=person,
        metavar="PERSON",
        help="the family member whose grant the patient picked in the app: the voucher carries it",
    )
    for name, text in (("grant", "grant family mutual aid (app)"), ("revoke", "end a mutual-aid grant (app)")):
        g = add(name, text)
        g.add_argument("--authorizer", type=person, metavar="PERSON", required=True, help="whose personal account pays")
        g.add_argument("--beneficiary", type=person, metavar="PERSON", required=True, help="who may pay from it")
        if name == "grant":
            g.add_argument("--relationship", type=str.lower, choices=RELATIONSHIPS, required=True,
                           help="the beneficiary's relation to the authorizer")  # fmt: skip
        else:
            g.add_argument(
                "--requester",
                type=person,
                metavar="PERSON",
                help="who asks: the authorizer (default) or the beneficiary",
            )
    c = add("grant-cap", "the authorizer sets or clears a grant's yearly cap (app)")
    c.add_argument("--authorizer", type=person, metavar="PERSON", required=True, help="whose personal account pays")
    c.add_argument("--beneficiary", type=person, metavar="PERSON", required=True, help="who may pay from it")
    cap = c.add_mutually_exclusive_group(required=True)
    cap.add_argument(
        "--yearly-cap-fen",
        type=fen,
        metavar="FEN",
        help="the most the grant pays in a calendar year, in fen (0: nothing)",
    )
    cap.add_argument("--clear", action="store_true", help="remove the cap")
    b = add("bind", "bind a family member to a holder's kinship account (app)")
    b.add_argument(
        "--holder", type=person, metavar="PERSON", required=True, help="who will show the member's e-voucher"
    )
    b.add_argument("--member", type=person, metavar="PERSON", required=True, help="the family member bound")
    b.add_argument("--name", required=True, help="the member's name as on the document")
    b.add_argument(
        "--birth-date", type=day, metavar="YYYY-MM-DD", required=True, help="the member's birth date, YYYY-MM-DD"
    )
    b.add_argument("--phone", required=True, help="the holder's mobile number")
    b.add_argument("--reason", required=True, help="why the holder binds the member, for the record")
    b.add_argument("--relationship", type=str.lower, choices=RELATIONSHIPS, default="child",
                   help="the member's relation to the holder (default child)")  # fmt: skip
    b.add_argument("--document-type", type=str.lower, choices=DOCUMENT_TYPES, default="resident_id_card",
                   help="the member's identity document (default resident_id_card)")  # fmt: skip
    b.add_argument("--document-number", help="the document's number (default: the member's ID number)")
    b.add_argument("--face-ref", help="reference of the member's face verification (required over 16)")
    u = add("unbind", "end a binding (app)")
    u.add_argument("--holder", type=person, metavar="PERSON", required=True, help="the holder")
    u.add_argument("--member", type=person, metavar="PERSON", required=True, help="the member bound")
    f = add("family", "a person's bindings and grants (app)")
    f.add_argument("--person", type=person, metavar="PERSON", required=True, help="ID number or demo alias")


def _add_wallet_arguments(add: Add) -> None:
    """The 医保钱包 subcommands: wallets, and two-phase transfers into them (all the app backend's)."""
    o = add(
        "open-wallet", "open a person's 医保钱包 (medical-insurance wallet); opening it again changes nothing (app)"
    )
    o.add_argument("--person", type=person, metavar="PERSON", required=True, help="whose wallet: ID number or alias")
    g = add("get-wallet", "a person's wallet: its balance, and transfers still waiting to be accepted (app)")
    g.add_argument("--person", type=person, metavar="PERSON", required=True, help="whose wallet: ID number or alias")
    s = add("send-transfer", "send personal-account money to a close relative's wallet; it waits to be accepted (app)")
    s.add_argument(
        "--sender", type=person, metavar="PERSON", required=True, help="the employee whose personal account pays"
    )
    s.add_argument(
        "--recipient", type=person, metavar="PERSON", required=True, help="the close relative whose wallet receives"
    )
    s.add_argument("--relationship", type=str.lower, choices=RELATIONSHIPS, required=True,
                   help="the recipient's relation to the sender")  # fmt: skip
    s.add_argument(
        "--amount-fen", type=fen, metavar="FEN", required=True,
        help="the amount, in fen (1/100 yuan); at most the sender's region's limit (2,000 元 by default)",
    )  # fmt: skip
    s.add_argument("--request-id", default=None, help=_REQUEST_ID)
    for name, text in (
        ("accept-transfer", "the recipient takes a pending transfer into the wallet (app)"),
        ("decline-transfer", "the recipient turns a pending transfer down: it goes back to the sender (app)"),
    ):
        r = add(name, text)
        r.add_argument("--transfer", required=True, metavar="ID", help="transfer_id, as send-transfer answered it")
        r.add_argument("--recipient", type=person, metavar="PERSON", required=True, help="the transfer's recipient")
    ls = add("list-transfers", "a person's transfers, sent and received, newest first (app)")
    ls.add_argument("--person", type=person, metavar="PERSON", required=True, help="ID number or demo alias")
    ls.add_argument("--page-size", type=int32, help="transfers per page (default 20, at most 100)")
    ls.add_argument("--page-token", help="next_page_token of the previous answer")


def _add_account_arguments(add: Add) -> None:
    e = add("enroll", "enrol an insured person, or update one (operator)")
    e.add_argument("--person", type=person, metavar="PERSON", required=True, help="the person's ID number (person_id)")
    e.add_argument("--name", required=True, help="the person's name")
    e.add_argument("--birth-date", type=day, metavar="YYYY-MM-DD", required=True, help="YYYY-MM-DD")
    e.add_argument("--region", required=True, help="统筹区: 6-digit administrative-division code, e.g. 610100")
    e.add_argument("--scheme", type=str.lower, choices=SCHEMES, required=True,
                   help="employee (职工医保, has a personal account) or resident (居民医保, has none)")  # fmt: skip
    e.add_argument("--status", type=str.lower, choices=STATUSES, default="active",
                   help="insurance status (default active)")  # fmt: skip
    e.add_argument("--document-type", type=str.lower, choices=DOCUMENT_TYPES,
                   help="identity document on record (default: the resident ID card numbered --person; "
                   "on an update, the one on record)")  # fmt: skip
    e.add_argument("--document-number", help="the document's number (not for a resident ID card)")
    cr = add("credit", "credit a personal account (个人账户划入) (operator)")
    cr.add_argument("--person", type=person, metavar="PERSON", required=True, help="whose account")
    cr.add_argument("--amount-fen", type=fen, metavar="FEN", required=True, help="the amount, in fen (1/100 yuan)")
    cr.add_argument("--memo", help="free text for the ledger, e.g. '2026-11 个人账户划入'")
    cr.add_argument("--request-id", default=None, help=_REQUEST_ID)
    a = add("account", "a person's account: scheme, status, region, balance (operator, or app with --as app)")
    a.add_argument("--person", type=person, metavar="PERSON", required=True, help="ID number or demo alias")
    a.add_argument("--as", dest="as_kind", choices=("operator", "app"), default="operator",
                   help="call with this token (default operator)")  # fmt: skip
    _add_policy_arguments(add)
    le = add("ledger", "a person's newest ledger entries (交易记录), as the app shows them (app, or operator)")
    le.add_argument("--person", type=person, metavar="PERSON", required=True, help="ID number or demo alias")
    le.add_argument("--page-size", type=int32, default=10, help="entries, newest first (default 10, at most 100)")
    le.add_argument("--page-token", help="next_page_token of the previous answer")
    le.add_argument("--as", dest="as_kind", choices=("app", "operator"), default="app",
                    help="call with this token (default app)")  # fmt: skip


def _add_policy_arguments(add: Add) -> None:
    p = add("policy-set", "set a region's grant policy (operator)")
    p.add_argument("--region", required=True, help="province ('45') or 统筹区 ('450100')")
    p.add_argument("--scope", type=str.lower, choices=SCOPES, required=True,
                   help="how far apart an authorizer and a beneficiary may live")  # fmt: skip
    p.add_argument("--allow", type=relationship_list, required=True,
                   help=f"comma-separated relationships, of: {','.join(RELATIONSHIPS)}")  # fmt: skip
    p.add_argument(
        "--beneficiary-cap-fen",
        type=fen,
        metavar="FEN",
        help="yearly cap on mutual aid per beneficiary, fen (default: none)",
    )
    p.add_argument(
        "--authorizer-floor-fen",
        type=fen,
        metavar="FEN",
        help="balance mutual aid leaves an authorizer, fen (default: none)",
    )
    p.add_argument(
        "--accept-card",
        type=str.lower,
        choices=CARDS,
        action="append",
        help="a card its insured may present besides the e-voucher; repeat for both (default: both)",
    )
    p.add_argument("--no-cards", dest="accept_card", action="store_const", const=[], help="the e-voucher only, no card")
    p.add_argument(
        "--no-mutual-aid-out-of-region",
        action="store_true",
        help="mutual aid does not pay for care in the province's other 统筹区 (default: it does)",
    )
    p.add_argument(
        "--no-mutual-aid-out-of-province",
        action="store_true",
        help="mutual aid does not pay for care in other provinces (default: it does)",
    )
    p.add_argument(
        "--wholly-self-paid", type=wholly_self_paid_rule, action="append", metavar="MED_TYPE=WHO",
        help="who may pay the wholly self-paid items (全自费) of a kind of care: cash (not the personal account), "
        "own (the patient's own account, not mutual aid) or accounts (both); e.g. pharmacy=cash; repeat per kind "
        f"of care ({', '.join(MED_TYPES)}); one not named: accounts (the default)",
    )  # fmt: skip
    _add_wallet_policy_arguments(p)
    add("policies", "list region grant policies, and the default (operator)")


def _add_wallet_policy_arguments(p: argparse.ArgumentParser) -> None:
    """policy-set's limits on 医保钱包 transfers the region's insured send; each one not given is the
    published value."""
    w = p.add_argument_group("医保钱包 transfers (each not given: the published value)")
    w.add_argument("--wallet-allow", type=relationship_list, metavar="RELATIONSHIPS",
                   help="comma-separated relationships that may receive (default: the close relatives)")  # fmt: skip
    w.add_argument("--wallet-scope", type=str.lower, choices=SCOPES,
                   help="how far apart sender and recipient may live (default: national)")  # fmt: skip
    w.add_argument("--wallet-sends-per-day", type=int32, metavar="N",
                   help="sends per sender and China calendar day, 0 to 100 (default: 3)")  # fmt: skip
    w.add_argument("--wallet-send-max-fen", type=fen, metavar="FEN",
                   help="the most one transfer carries, fen (default: 200000)")  # fmt: skip
    w.add_argument("--wallet-quiet-from", metavar="HH:MM",
                   help="no sends from this time, China time (default: 22:00; the same as --wallet-quiet-until: "
                   "no quiet hours)")  # fmt: skip
    w.add_argument("--wallet-quiet-until", metavar="HH:MM",
                   help="... until this time, excluded (default: 06:00)")  # fmt: skip
    w.add_argument("--wallet-expires-at", metavar="HH:MM",
                   help="an unaccepted transfer goes back at this time the next day, China time "
                   "(default: 06:00)")  # fmt: skip
    w.add_argument("--wallet-order", choices=sorted(WALLET_ORDERS),
                   help="where a patient's wallet pays at settlement: before-account, after-account (the "
                   "default: own account, wallet, mutual aid), after-mutual-aid")  # fmt: skip


def _add_premium_arguments(add: Add) -> None:
    """The resident-premium subcommands (国办发〔2024〕38号): rates, payments, refunds, the report."""
    r = add("premium-rate-set", "set the resident premium of a region for a year, and its window (operator)")
    r.add_argument("--region", required=True, help="province ('61') or 统筹区 ('610100'); the most specific applies")
    r.add_argument("--year", type=int32, help="contribution year (default: next year)")
    r.add_argument(
        "--amount-fen", type=fen, metavar="FEN", required=True, help="the premium of one person for the year, in fen"
    )
    r.add_argument(
        "--opens", type=day, metavar="YYYY-MM-DD", required=True, help="first day of collection, YYYY-MM-DD (China)"
    )
    r.add_argument(
        "--closes", type=day, metavar="YYYY-MM-DD", required=True, help="last day of collection, included, YYYY-MM-DD"
    )
    rs = add("premium-rates", "list the resident premium rates (operator)")
    rs.add_argument("--year", type=int32, help="only this contribution year")
    pay = add("premium-pay", "pay a close relative's resident premium from the payer's personal account (app)")
    pay.add_argument(
        "--payer", type=person, metavar="PERSON", required=True, help="the employee whose personal account pays"
    )
    pay.add_argument(
        "--beneficiary", type=person, metavar="PERSON", required=True, help="the resident-insured relative granted"
    )
    pay.add_argument("--year", type=int32, help="contribution year (default: next year)")
    pay.add_argument("--request-id", default=None, help=_REQUEST_ID)
    refund = add("premium-refund", "refund a premium payment to the payer's account (operator)")
    refund.add_argument("--payment", required=True, metavar="ID", help="payment_id, as premium-pay answered it")
    refund.add_argument("--reason", required=True, help="why, for the record (not shown in ledgers)")
    report = add("premium-report", "premiums paid and refunded per 统筹区 and day in China (operator; at most 92 days)")
    report.add_argument(
        "--from", dest="from_date", type=day, metavar="YYYY-MM-DD", required=True, help="first day, YYYY-MM-DD"
    )
    report.add_argument(
        "--to", dest="to_date", type=day, metavar="YYYY-MM-DD", required=True, help="last day, included, YYYY-MM-DD"
    )
    report.add_argument("--region", help="only 统筹区 of this province ('61') or this 统筹区")
    report.add_argument("--page-size", type=int32, help="rows per page (default 100, at most 1000)")
    report.add_argument("--page-token", help="next_page_token of the previous answer")
