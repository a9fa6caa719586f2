"""A small client for the README's first call: issue the patient's e-voucher, then quote or settle."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

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
)


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


def _auth(token: str | None) -> tuple[tuple[str, str], ...]:
    if not token:
        raise SystemExit("no token: start `make run` (demo tokens) or set GONGJI_TERMINAL_TOKEN/GONGJI_APP_TOKEN")
    return (("authorization", f"Bearer {token}"),)


def _dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


async def _voucher(channel: grpc.aio.Channel, tokens: dict[str, str], patient: str) -> str:
    family = family_pb2_grpc.FamilyServiceStub(channel)
    issued = await family.IssueVoucher(
        family_pb2.IssueVoucherRequest(person_id=patient, requester_id=patient),
        metadata=_auth(tokens.get("app")),
        timeout=10,
    )
    return str(issued.voucher)


def person_id(text: str) -> str:
    """An ID number, or a demo alias such as `demo:xiaoli`."""
    person = ALIASES.get(text)
    return person.person_id if person else text


def _payment(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"patient_id": person_id(args.patient), "amount_fen": args.amount_fen}
    if args.authorizer:
        fields["authorizer_id"] = person_id(args.authorizer)
    if args.no_account:
        fields["use_personal_account"] = False
    return fields


async def settle(args: argparse.Namespace, tokens: dict[str, str]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(args.target) as channel:
        voucher = await _voucher(channel, tokens, person_id(args.patient))
        stub = settlement_pb2_grpc.SettlementServiceStub(channel)
        request = settlement_pb2.SettleRequest(request_id=args.request_id, voucher=voucher, **_payment(args))
        reply = await stub.Settle(request, metadata=_auth(tokens.get("terminal")), timeout=10)
        return _dict(reply)


async def quote(args: argparse.Namespace, tokens: dict[str, str]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(args.target) as channel:
        voucher = await _voucher(channel, tokens, person_id(args.patient))
        stub = settlement_pb2_grpc.SettlementServiceStub(channel)
        request = settlement_pb2.QuoteRequest(voucher=voucher, **_payment(args))
        reply = await stub.Quote(request, metadata=_auth(tokens.get("terminal")), timeout=10)
        return _dict(reply)


async def account(args: argparse.Namespace, tokens: dict[str, str]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        reply = await stub.GetAccount(
            account_pb2.GetAccountRequest(person_id=person_id(args.person)),
            metadata=_auth(tokens.get("operator")),
            timeout=10,
        )
        return _dict(reply)
