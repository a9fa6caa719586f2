"""A small client for the README's example calls: each subcommand is one RPC (settle and quote first
issue the patient's e-voucher). Person arguments take ID numbers or demo aliases (`demo:xiaoli`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import json_format

from gongji.demo import ALIASES
from gongji.v1 import (
    account_pb2,
    account_pb2_grpc,
    family_pb2,
    family_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
    types_pb2,
)

Call = Callable[[grpc.aio.Channel, argparse.Namespace, dict[str, str]], Awaitable[Any]]


def tokens(data_dir: Path) -> dict[str, str]:
    """GONGJI_{TERMINAL,APP,OPERATOR}_TOKEN, falling back to the demo tokens `make run` wrote."""
    found: dict[str, str] = {}
    demo = data_dir / "demo-tokens.json"
    if demo.exists():
        found.update(json.loads(demo.read_text()))
    for kind in ("terminal", "app", "operator"):
        value = os.environ.get(f"GONGJI_{kind.upper()}_TOKEN")
        if value:
            found[kind] = value
    return found


def person_id(text: str) -> str:
    """An ID number, or a demo alias such as `demo:xiaoli`."""
    person = ALIASES.get(text)
    return person.person_id if person else text


def _auth(token: str | None) -> tuple[tuple[str, str], ...]:
    if not token:
        raise SystemExit("no token: start `make run` (demo tokens) or set GONGJI_{TERMINAL,APP,OPERATOR}_TOKEN")
    return (("authorization", f"Bearer {token}"),)


def _enum(enum_type: Any, prefix: str, name: str) -> Any:
    """The proto enum value named `name` (case-insensitive, without its prefix)."""
    return enum_type.Value(prefix + name.strip().upper())


async def _voucher(channel: grpc.aio.Channel, tokens: dict[str, str], patient: str, holder: str | None) -> str:
    issued = await family_pb2_grpc.FamilyServiceStub(channel).IssueVoucher(
        family_pb2.IssueVoucherRequest(person_id=patient, requester_id=holder or patient),
        metadata=_auth(tokens.get("app")),
        timeout=10,
    )
    return str(issued.voucher)


def _payment(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"patient_id": person_id(args.patient), "amount_fen": args.amount_fen}
    if args.authorizer:
        fields["authorizer_id"] = person_id(args.authorizer)
    if args.no_account:
        fields["use_personal_account"] = False
    return fields


async def settle(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    holder = person_id(args.holder) if args.holder else None
    voucher = await _voucher(channel, tokens, person_id(args.patient), holder)
    request = settlement_pb2.SettleRequest(request_id=args.request_id, voucher=voucher, **_payment(args))
    return await settlement_pb2_grpc.SettlementServiceStub(channel).Settle(
        request, metadata=_auth(tokens.get("terminal")), timeout=10
    )


async def quote(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    holder = person_id(args.holder) if args.holder else None
    voucher = await _voucher(channel, tokens, person_id(args.patient), holder)
    request = settlement_pb2.QuoteRequest(voucher=voucher, **_payment(args))
    return await settlement_pb2_grpc.SettlementServiceStub(channel).Quote(
        request, metadata=_auth(tokens.get("terminal")), timeout=10
    )


async def account(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    return await account_pb2_grpc.AccountServiceStub(channel).GetAccount(
        account_pb2.GetAccountRequest(person_id=person_id(args.person)),
        metadata=_auth(tokens.get("operator")),
        timeout=10,
    )


async def voucher(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    requester = person_id(args.requester) if args.requester else person_id(args.person)
    return await family_pb2_grpc.FamilyServiceStub(channel).IssueVoucher(
        family_pb2.IssueVoucherRequest(person_id=person_id(args.person), requester_id=requester),
        metadata=_auth(tokens.get("app")),
        timeout=10,
    )


async def grant(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    request = family_pb2.GrantRequest(
        authorizer_id=person_id(args.authorizer),
        beneficiary_id=person_id(args.beneficiary),
        relationship=_enum(types_pb2.Relationship, "RELATIONSHIP_", args.relationship),
    )
    return await family_pb2_grpc.FamilyServiceStub(channel).Grant(
        request, metadata=_auth(tokens.get("app")), timeout=10
    )


async def revoke(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    request = family_pb2.RevokeRequest(
        authorizer_id=person_id(args.authorizer),
        beneficiary_id=person_id(args.beneficiary),
        requester_id=person_id(args.requester) if args.requester else "",
    )
    return await family_pb2_grpc.FamilyServiceStub(channel).Revoke(
        request, metadata=_auth(tokens.get("app")), timeout=10
    )


async def grant_cap(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    request = family_pb2.SetGrantCapRequest(
        authorizer_id=person_id(args.authorizer),
        beneficiary_id=person_id(args.beneficiary),
        yearly_cap_fen=None if args.clear else args.yearly_cap_fen,
    )
    return await family_pb2_grpc.FamilyServiceStub(channel).SetGrantCap(
        request, metadata=_auth(tokens.get("app")), timeout=10
    )


async def bind(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    member = person_id(args.member)
    request = family_pb2.BindRequest(
        holder_id=person_id(args.holder),
        member_id=member,
        relationship=_enum(types_pb2.Relationship, "RELATIONSHIP_", args.relationship),
        member_name=args.name,
        document_type=_enum(types_pb2.DocumentType, "DOCUMENT_TYPE_", args.document_type),
        document_number=args.document_number or member,
        birth_date=args.birth_date,
        phone=args.phone,
        reason=args.reason,
        face_verification_ref=args.face_ref or "",
    )
    return await family_pb2_grpc.FamilyServiceStub(channel).Bind(request, metadata=_auth(tokens.get("app")), timeout=10)


async def unbind(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    request = family_pb2.UnbindRequest(holder_id=person_id(args.holder), member_id=person_id(args.member))
    return await family_pb2_grpc.FamilyServiceStub(channel).Unbind(
        request, metadata=_auth(tokens.get("app")), timeout=10
    )


async def family(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    return await family_pb2_grpc.FamilyServiceStub(channel).ListFamily(
        family_pb2.ListFamilyRequest(person_id=person_id(args.person)), metadata=_auth(tokens.get("app")), timeout=10
    )


async def policy_set(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    policy = account_pb2.RegionPolicy(
        region_key=args.region,
        scope=_enum(types_pb2.GrantScope, "GRANT_SCOPE_", args.scope),
        allowed_relationships=[
            _enum(types_pb2.Relationship, "RELATIONSHIP_", r) for r in args.allow.split(",") if r.strip()
        ],
        beneficiary_yearly_cap_fen=args.beneficiary_cap_fen,
        authorizer_floor_fen=args.authorizer_floor_fen,
    )
    return await account_pb2_grpc.AccountServiceStub(channel).SetRegionPolicy(
        account_pb2.SetRegionPolicyRequest(policy=policy), metadata=_auth(tokens.get("operator")), timeout=10
    )


async def policies(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    return await account_pb2_grpc.AccountServiceStub(channel).ListRegionPolicies(
        account_pb2.ListRegionPoliciesRequest(), metadata=_auth(tokens.get("operator")), timeout=10
    )


async def ledger(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    """The newest entries of a person's ledger, as the app shows them (交易记录)."""
    return await account_pb2_grpc.AccountServiceStub(channel).ListLedger(
        account_pb2.ListLedgerRequest(person_id=person_id(args.person), page_size=args.page_size),
        metadata=_auth(tokens.get("app")),
        timeout=10,
    )


def _next_year() -> int:
    """The contribution year collected for now, as a rule: next year, in China's calendar."""
    return dt.datetime.now(ZoneInfo("Asia/Shanghai")).year + 1


async def premium_rate_set(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    rate = account_pb2.PremiumRate(
        region_key=args.region,
        year=args.year or _next_year(),
        amount_fen=args.amount_fen,
        opens_on=args.opens,
        closes_on=args.closes,
    )
    return await account_pb2_grpc.AccountServiceStub(channel).SetPremiumRate(
        account_pb2.SetPremiumRateRequest(rate=rate), metadata=_auth(tokens.get("operator")), timeout=10
    )


async def premium_rates(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    return await account_pb2_grpc.AccountServiceStub(channel).ListPremiumRates(
        account_pb2.ListPremiumRatesRequest(year=args.year or 0), metadata=_auth(tokens.get("operator")), timeout=10
    )


async def premium_pay(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    request = account_pb2.PayPremiumRequest(
        request_id=args.request_id,
        payer_id=person_id(args.payer),
        beneficiary_id=person_id(args.beneficiary),
        year=args.year or _next_year(),
    )
    return await account_pb2_grpc.AccountServiceStub(channel).PayPremium(
        request, metadata=_auth(tokens.get("app")), timeout=10
    )


async def premium_refund(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    return await account_pb2_grpc.AccountServiceStub(channel).RefundPremium(
        account_pb2.RefundPremiumRequest(payment_id=args.payment, reason=args.reason),
        metadata=_auth(tokens.get("operator")),
        timeout=10,
    )


async def premium_report(channel: grpc.aio.Channel, args: argparse.Namespace, tokens: dict[str, str]) -> Any:
    request = account_pb2.ReportPremiumsRequest(
        from_date=args.from_date, to_date=args.to_date, region_key=args.region or "", page_token=args.page_token or ""
    )
    return await account_pb2_grpc.AccountServiceStub(channel).ReportPremiums(
        request, metadata=_auth(tokens.get("operator")), timeout=30
    )


COMMANDS: dict[str, Call] = {
    "settle": settle,
    "quote": quote,
    "account": account,
    "voucher": voucher,
    "grant": grant,
    "revoke": revoke,
    "grant-cap": grant_cap,
    "bind": bind,
    "unbind": unbind,
    "family": family,
    "policy-set": policy_set,
    "policies": policies,
    "ledger": ledger,
    "premium-rate-set": premium_rate_set,
    "premium-rates": premium_rates,
    "premium-pay": premium_pay,
    "premium-refund": premium_refund,
    "premium-report": premium_report,
}


def add_arguments(sub: Any) -> None:
    """The client's subcommands, on the `gongji client` parser's subparsers."""
    for name in ("settle", "quote"):
        x = sub.add_parser(name, help=f"{name} for a patient, issuing the patient's e-voucher first")
        x.add_argument("--patient", required=True)
        x.add_argument("--amount-fen", type=int, required=True)
        x.add_argument("--authorizer", help="use this authorizer's grant")
        x.add_argument("--holder", help="a holder who bound the patient shows the patient's voucher")
        x.add_argument("--no-account", action="store_true", help="pay everything in cash")
        if name == "settle":
            x.add_argument("--request-id", default=None, help="idempotency key (default: a new one)")
    sub.add_parser("account", help="a person's account").add_argument("--person", required=True)
    v = sub.add_parser("voucher", help="issue an e-voucher")
    v.add_argument("--person", required=True, help="whom the voucher names")
    v.add_argument("--requester", help="a holder who bound the person (default: the person)")
    for name in ("grant", "revoke"):
        g = sub.add_parser(name, help=f"{name} family mutual aid")
        g.add_argument("--authorizer", required=True)
        g.add_argument("--beneficiary", required=True)
        if name == "grant":
            g.add_argument("--relationship", required=True, help="spouse, parent, child, ...")
        else:
            g.add_argument("--requester", help="the authorizer (default) or the beneficiary")
    c = sub.add_parser("grant-cap", help="the authorizer sets or clears a grant's yearly cap")
    c.add_argument("--authorizer", required=True)
    c.add_argument("--beneficiary", required=True)
    cap = c.add_mutually_exclusive_group(required=True)
    cap.add_argument("--yearly-cap-fen", type=int, help="the most the grant pays in a calendar year (0: nothing)")
    cap.add_argument("--clear", action="store_true", help="remove the cap")
    b = sub.add_parser("bind", help="bind a family member to a holder's kinship account")
    for flag in ("--holder", "--member", "--name", "--birth-date", "--phone", "--reason"):
        b.add_argument(flag, required=True)
    b.add_argument("--relationship", default="child")
    b.add_argument("--document-type", default="resident_id_card")
    b.add_argument("--document-number", help="default: the member's ID number")
    b.add_argument("--face-ref", help="reference of the member's face verification (over 16)")
    u = sub.add_parser("unbind", help="end a binding")
    u.add_argument("--holder", required=True)
    u.add_argument("--member", required=True)
    sub.add_parser("family", help="a person's bindings and grants").add_argument("--person", required=True)
    p = sub.add_parser("policy-set", help="set a region's grant policy (operator)")
    p.add_argument("--region", required=True, help="province ('45') or 统筹区 ('450100')")
    p.add_argument("--scope", required=True, help="region, province or national")
    p.add_argument("--allow", required=True, help="comma-separated relationships, e.g. spouse,parent,child,sibling")
    p.add_argument("--beneficiary-cap-fen", type=int, help="yearly cap on mutual aid per beneficiary (default: none)")
    p.add_argument("--authorizer-floor-fen", type=int, help="balance mutual aid leaves an authorizer (default: none)")
    sub.add_parser("policies", help="list region grant policies (operator)")
    le = sub.add_parser("ledger", help="a person's newest ledger entries (交易记录), as the app shows them")
    le.add_argument("--person", required=True)
    le.add_argument("--page-size", type=int, default=10, help="entries, newest first (default 10, at most 100)")
    _add_premium_arguments(sub)


def _add_premium_arguments(sub: Any) -> None:
    """The resident-premium subcommands (国办发〔2024〕38号): rates, payments, refunds, the report."""
    r = sub.add_parser(
        "premium-rate-set", help="set the resident premium of a region for a year, and its window (operator)"
    )
    r.add_argument("--region", required=True, help="province ('61') or 统筹区 ('610100'); the most specific applies")
    r.add_argument("--year", type=int, help="contribution year (default: next year)")
    r.add_argument("--amount-fen", type=int, required=True, help="the premium of one person for the year, in fen")
    r.add_argument("--opens", required=True, help="first day of collection, YYYY-MM-DD (China)")
    r.add_argument("--closes", required=True, help="last day of collection, included, YYYY-MM-DD")
    rs = sub.add_parser("premium-rates", help="list the resident premium rates (operator)")
    rs.add_argument("--year", type=int, help="only this contribution year")
    pay = sub.add_parser(
        "premium-pay", help="pay a close relative's resident premium from the payer's personal account (app backend)"
    )
    pay.add_argument("--payer", required=True, help="the employee whose personal account pays")
    pay.add_argument("--beneficiary", required=True, help="the resident-insured relative the payer has granted")
    pay.add_argument("--year", type=int, help="contribution year (default: next year)")
    pay.add_argument("--request-id", default=None, help="idempotency key (default: a new one)")
    refund = sub.add_parser("premium-refund", help="refund a premium payment to the payer's account (operator)")
    refund.add_argument("--payment", required=True, help="payment_id, as premium-pay answered it")
    refund.add_argument("--reason", required=True, help="why, for the record (not shown in ledgers)")
    report = sub.add_parser(
        "premium-report", help="premiums paid and refunded per 统筹区 and day in China (operator; at most 92 days)"
    )
    report.add_argument("--from", dest="from_date", required=True, help="first day, YYYY-MM-DD")
    report.add_argument("--to", dest="to_date", required=True, help="last day, included, YYYY-MM-DD")
    report.add_argument("--region", help="only 统筹区 of this province ('61') or this 统筹区")
    report.add_argument("--page-token", help="next_page_token of the previous answer")


async def run(args: argparse.Namespace, tokens: dict[str, str]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(args.target) as channel:
        reply = await COMMANDS[args.client_command](channel, args, tokens)
    result: dict[str, Any] = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result
