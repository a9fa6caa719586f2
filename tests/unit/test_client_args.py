"""The client's command line against the contract, without a server: a subcommand for every RPC, help for
every option, enum words from the proto descriptors, demo aliases in the help, a section of docs/cli.md
for every subcommand."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

import gongji.v1
from gongji import cli, client, demo
from gongji.v1 import types_pb2

ROOT = Path(__file__).resolve().parents[2]


def _client_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    top = cli._parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    client_parser = commands.choices["client"]
    sub = next(a for a in client_parser._actions if isinstance(a, argparse._SubParsersAction))
    return client_parser, dict(sub.choices)


def test_every_rpc_of_every_service_has_a_subcommand() -> None:
    modules = [
        importlib.import_module(f"gongji.v1.{m.name}")
        for m in pkgutil.iter_modules(gongji.v1.__path__)
        if m.name.endswith("_pb2")
    ]
    services = [s for module in modules for s in module.DESCRIPTOR.services_by_name.values()]
    assert len(services) == 5
    rpcs = {method.full_name for service in services for method in service.methods}
    assert len(rpcs) == 34
    assert {m.full_name for s in client.SERVICES for m in s.methods} == rpcs
    assert set(client.RPC_COMMANDS) == rpcs
    assert set(client.RPC_COMMANDS.values()) == set(client.COMMANDS), "one subcommand per RPC, and no other"
    assert len(set(client.RPC_COMMANDS.values())) == len(rpcs)
    _, parsers = _client_parsers()
    assert set(parsers) == set(client.COMMANDS)


def test_every_option_of_every_subcommand_says_what_it_is() -> None:
    client_parser, parsers = _client_parsers()
    for name, parser in [("client", client_parser), *parsers.items()]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"gongji client {name} {'/'.join(action.option_strings)} has no help"


def test_enum_choices_are_the_words_of_the_proto_enums() -> None:
    assert list(client.RELATIONSHIPS) == [
        n.removeprefix("RELATIONSHIP_").lower()
        for n, _ in types_pb2.Relationship.items()
        if not n.endswith("UNSPECIFIED")
    ]
    assert list(client.SCOPES) == ["region", "province", "national"]
    assert client.SCHEMES == {"employee": types_pb2.SCHEME_EMPLOYEE, "resident": types_pb2.SCHEME_RESIDENT}
    assert client.STATUSES["terminated"] == types_pb2.PERSON_STATUS_TERMINATED
    assert client.DOCUMENT_TYPES["resident_id_card"] == types_pb2.DOCUMENT_TYPE_RESIDENT_ID_CARD


def test_people_days_and_relationship_lists() -> None:
    assert client.person("demo:xiaoli") == client.person("DEMO:XiaoLi") == demo.XIAOLI.person_id
    assert client.person("610102199203154021") == "610102199203154021"
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown demo alias 'demo:nobody' \(known: demo:xiaoming"):
        client.person("demo:nobody")
    assert client.day("2026-02-28") == "2026-02-28"
    for bad in ("2026-02-30", "20260228", "2026-2-28", "tomorrow"):
        with pytest.raises(argparse.ArgumentTypeError, match="YYYY-MM-DD"):
            client.day(bad)
    assert client.relationship_list("spouse, Parent,") == [types_pb2.RELATIONSHIP_SPOUSE, types_pb2.RELATIONSHIP_PARENT]
    for bad in ("", "spouse,cousin"):
        with pytest.raises(argparse.ArgumentTypeError, match="choose from spouse, parent"):
            client.relationship_list(bad)


def test_help_lists_the_demo_aliases_and_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["client", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for alias in demo.ALIASES:
        assert alias in out
    assert "exit status: 0 ok" in out
    for option in ("--target", "--tls", "--ca-file", "--cert-file", "--key-file", "--server-name", "--timeout-s"):
        assert option in out
    for variable in ("GONGJI_TARGET", "GONGJI_CLIENT_CA_FILE", "GONGJI_TERMINAL_TOKEN", "GONGJI_OPERATOR_TOKEN"):
        assert variable in out


def test_docs_cli_md_has_a_section_for_every_subcommand() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = set(re.findall(r"^#### `([a-z-]+)`", text, re.M))
    assert sections == set(client.COMMANDS)
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in link:
            assert (ROOT / "docs" / link).resolve().exists(), link


def _error(code: grpc.StatusCode, details: str, *extra: Message, reason: str | None = None) -> grpc.aio.AioRpcError:
    """A failed call as the client sees it, with the status details gongji sends (ErrorInfo, BadRequest)."""
    packed = []
    for message in ((error_details_pb2.ErrorInfo(reason=reason, domain="gongji"),) if reason else ()) + extra:
        any_ = any_pb2.Any()
        any_.Pack(message)
        packed.append(any_)
    status = status_pb2.Status(code=code.value[0], message=details, details=packed)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details)


def test_one_error_line_and_the_exit_status_of_its_kind() -> None:
    S = grpc.StatusCode
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="amount_fen", description="must be 1+")]
    )
    cases = [
        (_error(S.NOT_FOUND, "SETTLEMENT_NOT_FOUND", reason="SETTLEMENT_NOT_FOUND"), 1, "error: SETTLEMENT_NOT_FOUND"),
        (_error(S.NOT_FOUND, "no such settlement", reason="SETTLEMENT_NOT_FOUND"), 1,
         "error: no such settlement (SETTLEMENT_NOT_FOUND)"),
        (_error(S.INVALID_ARGUMENT, "amount_fen: must be 1+", bad, reason="INVALID_AMOUNT"), 1,
         "error: amount_fen: must be 1+ (INVALID_AMOUNT)"),
        (_error(S.INVALID_ARGUMENT, "the request has a bad field", bad, reason="INVALID_AMOUNT"), 1,
         "error: the request has a bad field (INVALID_AMOUNT): amount_fen: must be 1+"),
        (_error(S.RESOURCE_EXHAUSTED, "at most 5", reason="FAMILY_LIMIT_REACHED"), 1,
         "error: at most 5 (FAMILY_LIMIT_REACHED)"),
        (_error(S.RESOURCE_EXHAUSTED, "busy", reason="SERVER_BUSY"), 3, "error: busy (SERVER_BUSY)"),
        (_error(S.UNAVAILABLE, "DATABASE_UNAVAILABLE", reason="DATABASE_UNAVAILABLE"), 3,
         "error: DATABASE_UNAVAILABLE"),
        (_error(S.INTERNAL, "internal error", reason="INTERNAL"), 5, "error: internal error (INTERNAL)"),
        (_error(S.UNKNOWN, "Exception calling application"), 5, "error: Exception calling application (UNKNOWN)"),
        (_error(S.UNAUTHENTICATED, "unknown or revoked credentials", reason="CREDENTIALS_INVALID"), 4,
         "error: unknown or revoked credentials (CREDENTIALS_INVALID); check --terminal-token/--app-token/"
         "--operator-token or GONGJI_*_TOKEN (.gongji/demo-tokens.json)"),
        (_error(S.UNAVAILABLE, "failed to connect\n to all addresses"), 3,
         "error: failed to connect to all addresses (UNAVAILABLE); is `make run` serving on h:1? set --target or "
         "GONGJI_TARGET"),
        (_error(S.DEADLINE_EXCEEDED, "Deadline Exceeded"), 3,
         "error: Deadline Exceeded (DEADLINE_EXCEEDED); is `make run` serving on h:1? set --target or GONGJI_TARGET"),
    ]  # fmt: skip
    for error, status, line in cases:
        assert client.failure(error, "h:1") == (status, line)
