"""Every `gongji client` subcommand with a good input and a bad one, against real servers on loopback
ports (plaintext, TLS, mTLS) over the demo data set: the answer as JSON on stdout, or one `error:` line
on stderr and an exit status of its kind (docs/cli.md). Most cases call gongji.cli.main in-process; a few
run the installed entry point to prove the user sees no traceback."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from conftest import VOUCHER_KEY
from e2e_support import GONGJI, ROOT, free_port
from harness import CODEC, fresh_database
from pki_support import write_pki
from support import new_person_id

from gongji import cli, demo
from gongji.api import server
from gongji.api.app import App
from gongji.api.validate import china_today
from gongji.clock import ManualClock
from gongji.config import Settings
from gongji.domain.people import mask_id
from gongji.store import db

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 1, 2, 3, 4
CHINA = dt.timezone(dt.timedelta(hours=8))


@dataclass
class Servers:
    port: int
    tls_port: int
    mtls_port: int
    tokens: dict[str, str]  # the demo tokens: terminal (the demo pharmacy), app, operator, consumer
    pki: dict[str, Path]
    data_dir: Path  # holds the demo-tokens.json the seed wrote
    # The servers' clock, for the 医保钱包's decisions by time of day (quiet hours, due times): the
    # wallet tests set it, so that they pass whatever the hour they run at.
    clock: ManualClock


async def _serve(server_url: str, tmp: Path, pki: dict[str, Path], up: Any) -> None:
    async with fresh_database(server_url, "gongji_cli") as url:
        pool = await db.create_pool(url, min_size=1, max_size=10, command_timeout_s=30)
        try:
            tokens = await demo.seed(pool, tmp / "data")
            base = Settings(database_url=url, voucher_key=VOUCHER_KEY.decode(), grpc_listen="127.0.0.1:0")
            tls = {"tls_cert_file": pki["server_cert"], "tls_key_file": pki["server_key"]}
            clock = ManualClock(dt.datetime.combine(china_today(), dt.time(10), tzinfo=CHINA))
            running = [
                await server.start(App(base.model_copy(update=update), pool, CODEC, clock), "127.0.0.1:0")
                for update in ({}, tls, tls | {"tls_client_ca_file": pki["ca"]})
            ]
            try:
                down = asyncio.Event()
                up(Servers(*(r.port for r in running), tokens, pki, tmp / "data", clock), down)
                await down.wait()
            finally:
                for r in running:
                    await r.stop(1.0)
        finally:
            await pool.close()


@pytest.fixture(scope="module")
def servers(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Three gongji servers over one demo database, in an event loop of a thread of their own, so that
    the client may run its own loop (uvloop.run) in the test's thread."""
    tmp = tmp_path_factory.mktemp("cli")
    pki = write_pki(tmp)
    ready = threading.Event()
    found: list[Any] = []

    def up(s: Servers, down: asyncio.Event) -> None:
        found.extend((s, asyncio.get_running_loop(), down))
        ready.set()

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_serve(server_url, tmp, pki, up))
        except BaseException as exc:
            found.append(exc)
            ready.set()
            raise

    thread = threading.Thread(target=run, name="cli-servers", daemon=True)
    thread.start()
    assert ready.wait(60), "the servers did not start"
    assert isinstance(found[0], Servers), found[0]
    servers, loop, down = found[:3]
    yield servers
    loop.call_soon_threadsafe(down.set)
    thread.join(30)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GONGJI_* of the developer's shell, and a data dir without demo tokens."""
    import os

    for name in list(os.environ):
        if name.startswith(("GONGJI_TARGET", "GONGJI_CLIENT_")) or name.endswith("_TOKEN"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GONGJI_DATA_DIR", str(tmp_path / "empty"))


@dataclass
class Ran:
    code: int
    out: str
    err: str


def _main(capsys: pytest.CaptureFixture[str], args: list[str]) -> Ran:
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return Ran(code, out, err)


class Client:
    """`gongji client --target <plaintext server> <the demo tokens> ...` in-process."""

    def __init__(self, servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
        self.servers = servers
        self.capsys = capsys

    def flags(self) -> list[str]:
        t = self.servers.tokens
        return [f"--{kind}-token={t[kind]}" for kind in ("terminal", "app", "operator", "consumer")]

    def run(self, *args: str, target: bool = True, tokens: bool = True) -> Ran:
        where = ["--target", f"127.0.0.1:{self.servers.port}"] if target else []
        return _main(self.capsys, ["client", *where, *(self.flags() if tokens else []), *args])

    def ok(self, *args: str, **kw: bool) -> dict[str, Any]:
        ran = self.run(*args, **kw)
        assert (ran.code, ran.err) == (0, ""), ran
        result: dict[str, Any] = json.loads(ran.out)
        return result

    def fails(self, status: int, *args: str, **kw: bool) -> str:
        """The one error line of a call that exits with `status` (not a usage error)."""
        ran = self.run(*args, **kw)
        assert ran.code == status, ran
        assert ran.out == "", ran
        assert "Traceback" not in ran.err
        lines = ran.err.splitlines()
        assert len(lines) == 1, ran.err
        assert lines[0].startswith("error: "), ran.err
        return lines[0]

    def usage(self, *args: str) -> str:
        """argparse's usage error: exit 2, its usage and one error line naming the problem."""
        ran = self.run(*args)
        assert ran.code == EXIT_USAGE, ran
        assert "Traceback" not in ran.err
        assert ran.err.startswith("usage: gongji client"), ran.err
        last = ran.err.splitlines()[-1]
        assert ": error: " in last, ran.err
        return last


@pytest.fixture
def gongji(servers: Servers, capsys: pytest.CaptureFixture[str]) -> Client:
    return Client(servers, capsys)


def reason(line: str) -> str:
    """The REASON of `error: <sentence> (<REASON>)[: violations][; hint]`, or of a bare `error: <REASON>`
    (the server's sentence is still the reason itself for some refusals)."""
    found = re.findall(r"\(([A-Z][A-Z_]+)\)(?=$|[:;])", line) or re.findall(r"^error: ([A-Z][A-Z_]+)(?=$|[:;])", line)
    assert found, line
    return str(found[-1])


def _settle(gongji: Client, amount_fen: int | None = 100, *extra: str) -> dict[str, Any]:
    """xiaoli settles `amount_fen` (None: the bill's parts in `extra`, without --amount-fen)."""
    amount = ("--amount-fen", str(amount_fen)) if amount_fen is not None else ()
    settled = gongji.ok("settle", "--patient", "demo:xiaoli", *amount, *extra)
    s: dict[str, Any] = settled["settlement"]
    return s


# ---- SettlementService --------------------------------------------------------------------------------
def test_settle(gongji: Client) -> None:
    s = _settle(gongji, 100)
    assert (s["patient_id"], s["amount_fen"], s["institution_id"]) == (
        demo.XIAOLI.person_id,
        "100",
        demo.INSTITUTION_ID,
    )
    line = gongji.fails(EXIT_REFUSED, "settle", "--patient", "demo:xiaoli", "--amount-fen", "0")
    assert reason(line) == "INVALID_AMOUNT", line
    assert gongji.usage("settle", "--patient", "demo:nobody", "--amount-fen", "1").endswith(
        "unknown demo alias 'demo:nobody' (known: " + ", ".join(demo.ALIASES) + ")"
    )


def test_quote(gongji: Client) -> None:
    quoted = gongji.ok("quote", "--patient", "demo:xiaoli", "--amount-fen", "700", "--no-account")
    assert quoted["psn_cash_pay_fen"] == "700"
    line = gongji.fails(EXIT_REFUSED, "quote", "--patient", "demo:xiaoli", "--amount-fen", "-5")
    assert "amount_fen" in line and reason(line) == "INVALID_AMOUNT", line
    assert "invalid whole number '1.5'" in gongji.usage("quote", "--patient", "demo:xiaoli", "--amount-fen", "1.5")
    assert "out of range" in gongji.usage("quote", "--patient", "demo:xiaoli", "--amount-fen", str(2**63))


def test_settle_and_quote_the_bill_as_parts(gongji: Client) -> None:
    parts = ("--in-scope-fen", "300", "--over-limit-fen", "100", "--wholly-self-paid-fen", "50")
    quoted = gongji.ok("quote", "--patient", "demo:xiaoli", *parts, "--med-type", "pharmacy", "--insutype", "310")
    assert quoted["amount_fen"] == "450", "the parts' sum"
    assert quoted["bill"] == {"in_scope_fen": "300", "over_limit_fen": "100", "wholly_self_paid_fen": "50"}
    assert (quoted["bill_reading"], quoted["med_type"], quoted["insutype"]) == (
        "BILL_READING_PARTS", "MED_TYPE_PHARMACY", "INSUTYPE_EMPLOYEE_BASIC",
    )  # fmt: skip
    s = _settle(gongji, 450, *parts, "--med-type", "Chronic-Outpatient")  # --amount-fen may be given: the sum
    assert (s["amount_fen"], s["bill"]["over_limit_fen"], s["med_type"]) == (
        "450", "100", "MED_TYPE_CHRONIC_OUTPATIENT",
    )  # fmt: skip
    # The amount alone, with the kind of care: read as before the parts, its med_type recorded.
    s = _settle(gongji, 120, "--med-type", "emergency")
    assert (s["bill_reading"], s["med_type"], s["bill"]["in_scope_fen"]) == (
        "BILL_READING_AMOUNT", "MED_TYPE_EMERGENCY", "120",
    )  # fmt: skip

    line = gongji.fails(EXIT_USAGE, "settle", "--patient", "demo:xiaoli", "--amount-fen", "500", *parts)
    assert line == "error: --amount-fen 500 is not the sum of the bill's parts, 450: leave it out", line
    line = gongji.fails(EXIT_USAGE, "quote", "--patient", "demo:xiaoli")
    assert "--amount-fen, or its parts (--in-scope-fen, --over-limit-fen, --wholly-self-paid-fen)" in line, line
    line = gongji.fails(EXIT_REFUSED, "settle", "--patient", "demo:xiaoli", *parts)
    assert "med_type" in line and reason(line) == "INVALID_ARGUMENT", line
    line = gongji.fails(EXIT_REFUSED, "quote", "--patient", "demo:xiaoli", "--amount-fen", "100", "--insutype", "390")
    assert reason(line) == "INSUTYPE_MISMATCH", line
    assert "argument --med-type: invalid choice: 'dental'" in gongji.usage(
        "quote", "--patient", "demo:xiaoli", "--amount-fen", "100", "--med-type", "dental"
    )
    assert "argument --insutype: invalid choice: '320'" in gongji.usage(
        "quote", "--patient", "demo:xiaoli", "--amount-fen", "100", "--insutype", "320"
    )


def test_cancel(gongji: Client) -> None:
    s = _settle(gongji, 300)
    cancelled = gongji.ok("cancel", "--settlement", s["settlement_id"], "--amount-fen", "100")
    assert (cancelled["refund"]["amount_fen"], cancelled["settlement"]["refunded_fen"]) == ("100", "100")
    line = gongji.fails(EXIT_REFUSED, "cancel", "--settlement", s["settlement_id"], "--amount-fen", "201")
    assert reason(line) == "REFUND_EXCEEDS_SETTLEMENT", line
    rest = gongji.ok("cancel", "--settlement", s["settlement_id"])
    assert rest["refund"]["amount_fen"] == "200", "0: all that is left"
    line = gongji.fails(EXIT_REFUSED, "cancel", "--settlement", "not-a-settlement")
    assert "settlement_id" in line and reason(line) == "INVALID_ARGUMENT", line


def test_reverse(gongji: Client) -> None:
    request_id = f"cli-reverse-{uuid.uuid4().hex[:8]}"
    _settle(gongji, 100, "--request-id", request_id)
    reversed_ = gongji.ok("reverse", "--original-request-id", request_id)
    assert reversed_["undone"] is True
    assert reversed_["settlement"]["reversed_at"]
    line = gongji.fails(EXIT_REFUSED, "reverse", "--original-request-id", "no spaces allowed")
    assert "original_request_id" in line and reason(line) == "INVALID_ARGUMENT", line


def test_get_settlement(gongji: Client) -> None:
    request_id = f"cli-get-{uuid.uuid4().hex[:8]}"
    s = _settle(gongji, 100, "--request-id", request_id)
    by_id = gongji.ok("get-settlement", "--settlement", s["settlement_id"])["settlement"]
    by_request = gongji.ok("get-settlement", "--request-id", request_id)["settlement"]
    assert by_id["settlement_id"] == by_request["settlement_id"] == s["settlement_id"]
    line = gongji.fails(EXIT_REFUSED, "get-settlement", "--settlement", str(uuid.uuid4()))
    assert reason(line) == "SETTLEMENT_NOT_FOUND", line
    assert "one of the arguments --settlement --request-id is required" in gongji.usage("get-settlement")


def test_reconcile(gongji: Client) -> None:
    today = china_today().isoformat()
    own = gongji.ok("reconcile", "--date", today, "--detail", "--page-size", "1")
    assert own["institution_id"] == demo.INSTITUTION_ID
    assert int(own["settlement_count"]) >= 0
    by_operator = gongji.ok("reconcile", "--date", today, "--institution", demo.INSTITUTION_ID)
    assert by_operator["settlement_count"] == own["settlement_count"]
    line = gongji.fails(EXIT_REFUSED, "reconcile", "--date", today, "--institution", "NOSUCH1")
    assert reason(line) == "INSTITUTION_NOT_FOUND", line
    assert "invalid day '2026-02-30' (YYYY-MM-DD)" in gongji.usage("reconcile", "--date", "2026-02-30")


def test_check_totals_and_detail_from_a_csv(gongji: Client, tmp_path: Path) -> None:
    today = china_today().isoformat()
    s = _settle(gongji, 1234)
    fen = ("amount_fen", "acct_pay_fen", "acct_mulaid_pay_fen", "psn_cash_pay_fen")
    yuan, *parts = [f"{int(s[k]) // 100}.{int(s[k]) % 100:02d}" for k in fen]  # int64 reads as a string
    books = tmp_path / "books.csv"
    books.write_text(
        "kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay,patient\n"
        f"settlement,{s['request_id']},{yuan},{','.join(parts)},王小明\n"
        "settlement,never-settled-1,1.00,0.00,0.00,1.00,\n",
        encoding="utf-8",
    )
    found = gongji.ok("check-detail", "--csv", str(books), "--start-date", today)
    mine = {d["key"]["request_id"]: d["difference"] for d in found["differences"]}
    assert s["request_id"] not in mine  # it agrees
    assert mine["never-settled-1"] == "DETAIL_DIFFERENCE_KIND_MISSING_IN_GONGJI"
    totals = gongji.ok("check-totals", "--csv", str(books), "--start-date", today, "--refunds", "excluded")
    assert totals["refunds"] == "REFUND_TREATMENT_EXCLUDED" and len(totals["lines"]) == 1
    line = gongji.fails(
        EXIT_REFUSED, "check-totals", "--csv", str(books), "--start-date", today, "--institution", "NOSUCH1"
    )
    assert reason(line) == "INSTITUTION_NOT_FOUND", line
    books.write_text("kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay\nsettlement,a,1.5,0,0,1.5\n")
    line = gongji.fails(EXIT_USAGE, "check-detail", "--csv", str(books), "--start-date", today)
    assert "books.csv line 2: '1.5' is not yuan with two decimals" in line, line


def test_check_totals_by_clearing_class_from_a_csv(gongji: Client, tmp_path: Path) -> None:
    """The only inpatient settlements of this module's demo institution are this test's: its CSV agrees
    with gongji's line "21"."""
    today = china_today().isoformat()
    made = [_settle(gongji, None, "--in-scope-fen", "800", "--over-limit-fen", "34", "--med-type", "inpatient")]
    made.append(_settle(gongji, None, "--in-scope-fen", "166", "--med-type", "inpatient"))
    # This CSV has the optional wallet_pay column (the one above does not).
    fen = ("amount_fen", "acct_pay_fen", "acct_mulaid_pay_fen", "psn_cash_pay_fen", "wallet_pay_fen")
    yuan = [",".join(f"{int(s[k]) // 100}.{int(s[k]) % 100:02d}" for k in fen) for s in made]
    books = tmp_path / "books.csv"
    books.write_text(
        "kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay,wallet_pay,insutype,clearing_class\n"
        + "".join(f"settlement,{s['request_id']},{y},310,21\n" for s, y in zip(made, yuan, strict=True)),
        encoding="utf-8",
    )
    totals = gongji.ok("check-totals", "--csv", str(books), "--start-date", today, "--grouping", "clearing_class")
    assert totals["grouping"] == "TOTALS_GROUPING_CLEARING_CLASS"
    lines = {line["group"]: line for line in totals["lines"]}
    assert lines["21"]["agree"] is True, lines["21"]
    assert lines["21"]["gongji"]["settled"]["count"] == "2"
    assert lines["21"]["gongji"]["settled"]["amount_fen"] == "1000"
    # The demo pharmacy's other settlements of the module (no med_type, or others) are not in this CSV.
    assert set(lines) <= {"", "11", "21", "41"} and "" in lines and not totals["agree"]


# ---- FamilyService ------------------------------------------------------------------------------------
def test_voucher(gongji: Client) -> None:
    issued = gongji.ok("voucher", "--person", "demo:xiaobao", "--requester", "demo:xiaoming", "--ttl-s", "30")
    assert (issued["person_id"], issued["requester_id"]) == (demo.XIAOBAO.person_id, demo.XIAOMING.person_id)
    line = gongji.fails(EXIT_REFUSED, "voucher", "--person", "demo:xiaoli", "--requester", "demo:zhaoqiang")
    assert reason(line) == "NOT_ALLOWED", line


def test_grant_grant_cap_and_revoke(gongji: Client) -> None:
    who = ("--authorizer", "demo:chenjing", "--beneficiary", "demo:xiaoli")
    granted = gongji.ok("grant", *who, "--relationship", "CHILD")
    assert granted["grant"]["status"] == "GRANT_STATUS_LIVE"
    usage = gongji.usage("grant", *who, "--relationship", "cousin")
    assert "argument --relationship: invalid choice: 'cousin'" in usage, usage
    line = gongji.fails(EXIT_REFUSED, "grant", *who, "--relationship", "parent_in_law")
    assert reason(line) == "RELATIONSHIP_NOT_ALLOWED", line

    capped = gongji.ok("grant-cap", *who, "--yearly-cap-fen", "10000")
    assert capped["grant"]["yearly_cap_fen"] == "10000"
    cleared = gongji.ok("grant-cap", *who, "--clear")
    assert "yearly_cap_fen" not in cleared["grant"]
    line = gongji.fails(EXIT_REFUSED, "grant-cap", "--authorizer", "demo:zhaoqiang", "--beneficiary", "demo:xiaoli",
                        "--yearly-cap-fen", "1")  # fmt: skip
    assert reason(line) == "GRANT_NOT_FOUND", line
    assert "not allowed with argument" in gongji.usage("grant-cap", *who, "--yearly-cap-fen", "1", "--clear")

    revoked = gongji.ok("revoke", *who, "--requester", "demo:xiaoli")
    assert revoked["grant"]["end_reason"] == "REVOKED_BY_BENEFICIARY"
    line = gongji.fails(EXIT_REFUSED, "revoke", *who)
    assert reason(line) == "GRANT_NOT_FOUND", line


def test_bind_unbind_and_family(gongji: Client) -> None:
    member = ("--holder", "demo:zhangwei", "--member", "demo:liufang")
    details = ("--relationship", "spouse", "--name", "刘芳", "--birth-date", "1982-02-02", "--phone", "13800138000",
               "--reason", "代妻子出示医保码")  # fmt: skip
    line = gongji.fails(EXIT_REFUSED, "bind", *member, *details)
    assert reason(line) == "FACE_VERIFICATION_REQUIRED", line
    assert "invalid day" in gongji.usage("bind", *member, *details[:-2], "--birth-date", "1982-2-2")
    bound = gongji.ok("bind", *member, *details, "--face-ref", "FV-CLI-0001")
    assert bound["binding"]["active"] is True

    family = gongji.ok("family", "--person", "demo:zhangwei")
    assert family["bound_member_count"] == 1
    line = gongji.fails(EXIT_REFUSED, "family", "--person", "12345")
    assert "person_id" in line and reason(line) == "INVALID_ARGUMENT", line

    unbound = gongji.ok("unbind", *member)
    assert unbound["binding"]["active"] is False
    line = gongji.fails(EXIT_REFUSED, "unbind", "--holder", "demo:zhaoqiang", "--member", "demo:liufang")
    assert reason(line) == "BINDING_NOT_FOUND", line


# ---- WalletService -------------------------------------------------------------------------------------
def _relatives(gongji: Client, balance_fen: int = 50_000) -> tuple[str, str]:
    """A parent, employee-insured with `balance_fen` in the account, and their resident-insured child with
    an open wallet: fresh people, so that no other test's transfers count towards their limits."""
    parent, child = new_person_id(dt.date(1960, 1, 1)), new_person_id(dt.date(1990, 1, 1))
    for who, born, scheme in ((parent, "1960-01-01", "employee"), (child, "1990-01-01", "resident")):
        gongji.ok("enroll", "--person", who, "--name", "测试", "--birth-date", born, "--region", "610100",
                  "--scheme", scheme)  # fmt: skip
    gongji.ok("credit", "--person", parent, "--amount-fen", str(balance_fen))
    assert gongji.ok("open-wallet", "--person", child)["replayed"] is False
    return parent, child


def _china(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=CHINA)


def test_open_wallet_and_get_wallet(gongji: Client) -> None:
    person = new_person_id()
    gongji.ok("enroll", "--person", person, "--name", "测试", "--birth-date", "1985-06-01", "--region", "610100",
              "--scheme", "resident")  # fmt: skip
    line = gongji.fails(EXIT_REFUSED, "get-wallet", "--person", person)
    assert reason(line) == "WALLET_NOT_OPEN", line
    opened = gongji.ok("open-wallet", "--person", person)
    assert (opened["replayed"], opened["wallet"]["person_id"], opened["wallet"]["balance_fen"]) == (False, person, "0")
    again = gongji.ok("open-wallet", "--person", person)
    assert again["replayed"] is True and again["wallet"]["opened_at"] == opened["wallet"]["opened_at"]
    assert gongji.ok("get-wallet", "--person", person)["wallet"]["pending_in_fen"] == "0"
    # The demo data opened 王秀英's wallet (the README sends to it).
    assert gongji.ok("get-wallet", "--person", "demo:xiuying")["wallet"]["person_id"] == demo.XIUYING.person_id
    line = gongji.fails(EXIT_REFUSED, "open-wallet", "--person", new_person_id())
    assert reason(line) == "PERSON_NOT_FOUND", line
    line = gongji.fails(EXIT_REFUSED, "get-wallet", "--person", "12345")
    assert "person_id" in line and reason(line) == "INVALID_ARGUMENT", line
    line = gongji.fails(
        EXIT_REFUSED, "get-wallet", "--person", person, "--app-token", gongji.servers.tokens["operator"]
    )
    assert reason(line) == "NOT_ALLOWED", line  # the app backend's call only


def test_send_accept_and_list_transfers(gongji: Client, servers: Servers) -> None:
    servers.clock.set(_china(china_today(), 10))
    parent, child = _relatives(gongji)
    send = ("send-transfer", "--sender", parent, "--recipient", child, "--relationship", "Child")
    request_id = f"cli-send-{uuid.uuid4().hex[:8]}"
    sent = gongji.ok(*send, "--amount-fen", "20000", "--request-id", request_id)
    t = sent["transfer"]
    assert (sent["replayed"], t["state"], t["amount_fen"], t["relationship"]) == (
        False, "TRANSFER_STATE_PENDING", "20000", "RELATIONSHIP_CHILD",
    )  # fmt: skip
    assert "resolved_at" not in t
    assert gongji.ok("get-wallet", "--person", child)["wallet"]["pending_in_fen"] == "20000"
    assert gongji.ok("account", "--person", parent)["account"]["balance_fen"] == "30000"
    again = gongji.ok(*send, "--amount-fen", "20000", "--request-id", request_id)
    assert (again["replayed"], again["transfer"]["transfer_id"]) == (True, t["transfer_id"])
    line = gongji.fails(EXIT_REFUSED, *send, "--amount-fen", "20001", "--request-id", request_id)
    assert reason(line) == "IDEMPOTENCY_KEY_REUSED", line
    line = gongji.fails(EXIT_REFUSED, *send, "--amount-fen", "100")
    assert reason(line) == "TRANSFER_PENDING", line

    accepted = gongji.ok("accept-transfer", "--transfer", t["transfer_id"], "--recipient", child)
    assert (accepted["replayed"], accepted["transfer"]["state"]) == (False, "TRANSFER_STATE_POSTED")
    assert accepted["transfer"]["resolved_at"]
    assert gongji.ok("accept-transfer", "--transfer", t["transfer_id"], "--recipient", child)["replayed"] is True
    line = gongji.fails(EXIT_REFUSED, "decline-transfer", "--transfer", t["transfer_id"], "--recipient", child)
    assert reason(line) == "TRANSFER_RESOLVED", line
    wallet = gongji.ok("get-wallet", "--person", child)["wallet"]
    assert (wallet["balance_fen"], wallet["pending_in_fen"]) == ("20000", "0")
    (out,) = gongji.ok("ledger", "--person", parent, "--page-size", "1")["entries"]
    assert (out["kind"], out["amount_fen"], out["balance_after_fen"]) == ("TRANSFER_OUT", "-20000", "30000")

    line = gongji.fails(EXIT_REFUSED, *send, "--amount-fen", "200001")
    assert reason(line) == "TRANSFER_OVER_LIMIT", line
    line = gongji.fails(EXIT_REFUSED, "send-transfer", "--sender", parent, "--recipient", child, "--relationship",
                        "parent", "--amount-fen", "100")  # fmt: skip
    assert reason(line) == "RELATIONSHIP_IMPLAUSIBLE", line  # the child is younger than the sender
    assert "argument --relationship: invalid choice: 'cousin'" in gongji.usage(
        "send-transfer", "--sender", parent, "--recipient", child, "--relationship", "cousin", "--amount-fen", "1"
    )
    assert "invalid whole number '1.5'" in gongji.usage(*send, "--amount-fen", "1.5")

    listed = gongji.ok("list-transfers", "--person", child, "--page-size", "1")
    assert [x["transfer_id"] for x in listed["transfers"]] == [t["transfer_id"]]
    assert listed["next_page_token"]
    rest = gongji.ok("list-transfers", "--person", child, "--page-token", listed["next_page_token"])
    assert rest == {"transfers": [], "next_page_token": ""}
    line = gongji.fails(EXIT_REFUSED, "list-transfers", "--person", child, "--page-size", "101")
    assert "page_size" in line and reason(line) == "INVALID_ARGUMENT", line


def test_quiet_hours_decline_and_the_return_at_06_00(gongji: Client, servers: Servers) -> None:
    day = china_today() + dt.timedelta(days=10)  # a day of its own: the other wallet tests send today
    parent, child = _relatives(gongji)
    send = ("send-transfer", "--sender", parent, "--recipient", child, "--relationship", "child")
    servers.clock.set(_china(day, 22))
    line = gongji.fails(EXIT_REFUSED, *send, "--amount-fen", "1000")
    assert reason(line) == "TRANSFER_QUIET_HOURS", line
    servers.clock.set(_china(day + dt.timedelta(days=1), 5, 59))
    assert reason(gongji.fails(EXIT_REFUSED, *send, "--amount-fen", "1000")) == "TRANSFER_QUIET_HOURS"

    day += dt.timedelta(days=1)
    servers.clock.set(_china(day, 6))
    first = gongji.ok(*send, "--amount-fen", "1000")["transfer"]
    declined = gongji.ok("decline-transfer", "--transfer", first["transfer_id"], "--recipient", child)
    assert (declined["replayed"], declined["transfer"]["state"]) == (False, "TRANSFER_STATE_VOIDED")
    assert gongji.ok("decline-transfer", "--transfer", first["transfer_id"], "--recipient", child)["replayed"]
    line = gongji.fails(EXIT_REFUSED, "accept-transfer", "--transfer", first["transfer_id"], "--recipient", child)
    assert reason(line) == "TRANSFER_RESOLVED", line

    servers.clock.set(_china(day, 7))  # later than the first: transfers list by the time they were sent
    second = gongji.ok(*send, "--amount-fen", "3000")["transfer"]
    assert second["due_at"] == f"{day.isoformat()}T22:00:00Z"  # 06:00 China time the next day
    servers.clock.set(_china(day + dt.timedelta(days=1), 6, 1))
    line = gongji.fails(EXIT_REFUSED, "accept-transfer", "--transfer", second["transfer_id"], "--recipient", child)
    assert reason(line) == "TRANSFER_RESOLVED", line  # past its due time: the money went back instead
    newest = gongji.ok("list-transfers", "--person", parent)["transfers"]
    assert [x["state"] for x in newest] == ["TRANSFER_STATE_EXPIRED", "TRANSFER_STATE_VOIDED"]
    assert gongji.ok("account", "--person", parent)["account"]["balance_fen"] == "50000"
    wallet = gongji.ok("get-wallet", "--person", child)["wallet"]
    assert (wallet["balance_fen"], wallet["pending_in_fen"]) == ("0", "0")

    line = gongji.fails(EXIT_REFUSED, "accept-transfer", "--transfer", str(uuid.uuid4()), "--recipient", child)
    assert reason(line) == "TRANSFER_NOT_FOUND", line
    line = gongji.fails(EXIT_REFUSED, "accept-transfer", "--transfer", second["transfer_id"], "--recipient", parent)
    assert reason(line) == "TRANSFER_NOT_FOUND", line  # only its recipient may end it
    line = gongji.fails(EXIT_REFUSED, "decline-transfer", "--transfer", "not-a-transfer", "--recipient", child)
    assert "transfer_id" in line and reason(line) == "INVALID_ARGUMENT", line


# ---- AccountService -----------------------------------------------------------------------------------
def test_enroll_credit_and_account(gongji: Client) -> None:
    person = new_person_id()
    enrolled = gongji.ok("enroll", "--person", person, "--name", "测试", "--birth-date", "1985-06-01",
                         "--region", "610100", "--scheme", "employee")  # fmt: skip
    assert enrolled["created"] is True
    assert (enrolled["account"]["scheme"], enrolled["account"]["status"]) == ("SCHEME_EMPLOYEE", "PERSON_STATUS_ACTIVE")
    assert "argument --scheme: invalid choice: 'planet'" in gongji.usage(
        "enroll", "--person", person, "--name", "测试", "--birth-date", "1985-06-01", "--region", "610100",
        "--scheme", "planet",
    )  # fmt: skip
    line = gongji.fails(EXIT_REFUSED, "enroll", "--person", person, "--name", "测试", "--birth-date", "1985-06-01",
                        "--region", "61", "--scheme", "employee")  # fmt: skip
    assert "region_code" in line and reason(line) == "INVALID_ARGUMENT", line

    credited = gongji.ok("credit", "--person", person, "--amount-fen", "5000", "--memo", "2026-11 个人账户划入")
    assert credited["balance_fen"] == "5000"
    line = gongji.fails(EXIT_REFUSED, "credit", "--person", new_person_id(), "--amount-fen", "5000")
    assert reason(line) == "PERSON_NOT_FOUND", line

    assert gongji.ok("account", "--person", person)["account"]["balance_fen"] == "5000"
    assert gongji.ok("account", "--person", person, "--as", "app")["account"]["balance_fen"] == "5000"
    line = gongji.fails(EXIT_REFUSED, "account", "--person", new_person_id())
    assert reason(line) == "PERSON_NOT_FOUND", line


def test_policy_set_and_policies(gongji: Client) -> None:
    policy = gongji.ok("policy-set", "--region", "45", "--scope", "province", "--allow", "spouse,PARENT,child")
    assert policy["policy"]["allowed_relationships"] == [
        "RELATIONSHIP_SPOUSE",
        "RELATIONSHIP_PARENT",
        "RELATIONSHIP_CHILD",
    ]
    line = gongji.fails(EXIT_REFUSED, "policy-set", "--region", "45", "--scope", "region", "--allow", "parent_in_law")
    assert "policy.allowed_relationships" in line and reason(line) == "INVALID_ARGUMENT", line
    assert "invalid choice: 'planet'" in gongji.usage("policy-set", "--region", "45", "--scope", "planet", "--allow",
                                                      "spouse")  # fmt: skip
    assert "invalid choice: 'cousin'" in gongji.usage("policy-set", "--region", "45", "--scope", "region", "--allow",
                                                      "spouse,cousin")  # fmt: skip

    assert "45" in [p["region_key"] for p in gongji.ok("policies")["policies"]]
    app_token = gongji.servers.tokens["app"]
    line = gongji.fails(EXIT_REFUSED, "policies", "--operator-token", app_token)
    assert reason(line) == "NOT_ALLOWED", line


def test_policy_set_wholly_self_paid_rules(gongji: Client) -> None:
    patient = new_person_id()
    gongji.ok("enroll", "--person", patient, "--name", "测试", "--birth-date", "1985-06-01", "--region", "460100",
              "--scheme", "employee")  # fmt: skip
    gongji.ok("credit", "--person", patient, "--amount-fen", "10000")
    base = ("policy-set", "--region", "460100", "--scope", "region", "--allow", "spouse")
    policy = gongji.ok(*base, "--wholly-self-paid", "pharmacy=cash", "--wholly-self-paid", "Inpatient = own")
    assert policy["policy"]["wholly_self_paid_rules"] == [
        {"med_type": "MED_TYPE_INPATIENT", "account_pays": True, "mutual_aid_pays": False},
        {"med_type": "MED_TYPE_PHARMACY", "account_pays": False, "mutual_aid_pays": False},
    ]
    bill = ("quote", "--patient", patient, "--in-scope-fen", "100", "--wholly-self-paid-fen", "500")
    at_pharmacy = gongji.ok(*bill, "--med-type", "pharmacy")
    assert (at_pharmacy["acct_pay_fen"], at_pharmacy["psn_cash_pay_fen"]) == ("100", "500"), "cash pays 全自费"
    assert at_pharmacy["cash_parts"]["wholly_self_paid_fen"] == "500"
    outpatient = gongji.ok(*bill, "--med-type", "outpatient")  # no rule: the accounts pay
    assert (outpatient["acct_pay_fen"], outpatient["psn_cash_pay_fen"]) == ("600", "0")
    # accounts: the default again, which the answer leaves out.
    policy = gongji.ok(*base, "--wholly-self-paid", "pharmacy=accounts")
    assert policy["policy"]["wholly_self_paid_rules"] == []
    assert gongji.ok(*bill, "--med-type", "pharmacy")["psn_cash_pay_fen"] == "0"

    line = gongji.fails(EXIT_REFUSED, *base, "--wholly-self-paid", "pharmacy=cash", "--wholly-self-paid",
                        "pharmacy=own")  # fmt: skip
    assert "policy.wholly_self_paid_rules[1].med_type" in line and reason(line) == "INVALID_ARGUMENT", line
    for bad in ("pharmacy=nobody", "dental=cash", "pharmacy"):
        assert f"argument --wholly-self-paid: invalid rule '{bad}': MED_TYPE=WHO" in gongji.usage(
            *base, "--wholly-self-paid", bad
        )


def test_ledger(gongji: Client) -> None:
    entries = gongji.ok("ledger", "--person", "demo:defu", "--page-size", "1")["entries"]
    assert [e["kind"] for e in entries] == ["CREDIT"]
    assert gongji.ok("ledger", "--person", "demo:defu", "--as", "operator")["entries"]
    line = gongji.fails(EXIT_REFUSED, "ledger", "--person", "demo:defu", "--page-size", "1000")
    assert "page_size" in line and reason(line) == "INVALID_ARGUMENT", line
    assert "out of range (a 32-bit integer)" in gongji.usage(
        "ledger", "--person", "demo:defu", "--page-size", str(2**31)
    )


# ---- EventService -------------------------------------------------------------------------------------
def test_events(gongji: Client) -> None:
    """JSON lines in order; the consumer's token sees ID numbers masked, the operator's whole; a cursor
    the stream never gave is refused."""
    settled = _settle(gongji, 100)
    lines: list[dict[str, Any]] = []
    for _ in range(50):  # the server's sequencer gives the settlement's event its position within 0.2 s
        ran = gongji.run("events", "--after", "0")
        assert (ran.code, ran.err) == (0, ""), ran
        lines = [json.loads(line) for line in ran.out.splitlines()]
        if any(e.get("settlement", {}).get("settlement_id") == settled["settlement_id"] for e in lines):
            break
        time.sleep(0.1)
    positions = [int(e["position"]) for e in lines]
    assert positions == list(range(1, len(lines) + 1))
    (event,) = [e for e in lines if e.get("settlement", {}).get("settlement_id") == settled["settlement_id"]]
    assert event["type"] == "settlement.settled" and event["settlement"]["patient_id"] == mask_id(demo.XIAOLI.person_id)
    assert demo.XIAOLI.person_id not in ran.out
    whole = gongji.run("events", "--after", str(int(event["position"]) - 1), "--max-events", "1", "--as", "operator")
    assert json.loads(whole.out)["settlement"]["patient_id"] == demo.XIAOLI.person_id
    line = gongji.fails(EXIT_REFUSED, "events", "--after", str(10**12))
    assert reason(line) == "CURSOR_AHEAD", line


def test_premium_rates_pay_refund_and_report(gongji: Client) -> None:
    year = china_today().year
    rate = gongji.ok("premium-rate-set", "--region", "45", "--year", str(year + 1), "--amount-fen", "38000",
                     "--opens", f"{year}-01-01", "--closes", f"{year}-12-31")  # fmt: skip
    assert rate["rate"]["amount_fen"] == "38000"
    line = gongji.fails(EXIT_REFUSED, "premium-rate-set", "--region", "45", "--year", str(year + 1), "--amount-fen",
                        "38000", "--opens", f"{year}-12-31", "--closes", f"{year}-01-01")  # fmt: skip
    assert "closes_on" in line, line
    assert "invalid day '2026-9-1'" in gongji.usage("premium-rate-set", "--region", "45", "--amount-fen", "1",
                                                    "--opens", "2026-9-1", "--closes", "2026-12-31")  # fmt: skip

    rates = gongji.ok("premium-rates", "--year", str(year + 1))["rates"]
    assert {("45", "38000"), (demo.PREMIUM_REGION, str(demo.PREMIUM_FEN))} <= {
        (r["region_key"], r["amount_fen"]) for r in rates
    }
    line = gongji.fails(EXIT_AUTH, "premium-rates", "--operator-token", "gj_not_a_token")
    assert reason(line) == "CREDENTIALS_INVALID", line

    paid = gongji.ok("premium-pay", "--payer", "demo:xiaoming", "--beneficiary", "demo:xiuying")
    payment = paid["payment"]
    assert (payment["beneficiary_id"], payment["amount_fen"]) == (demo.XIUYING.person_id, str(demo.PREMIUM_FEN))
    line = gongji.fails(EXIT_REFUSED, "premium-pay", "--payer", "demo:defu", "--beneficiary", "demo:xiuying")
    assert reason(line) == "GRANT_NOT_FOUND", line  # 王德福 holds no grant to her

    refunded = gongji.ok("premium-refund", "--payment", payment["payment_id"], "--reason", "paid twice")
    assert refunded["payment"]["refunded_at"]
    line = gongji.fails(EXIT_REFUSED, "premium-refund", "--payment", str(uuid.uuid4()), "--reason", "no such")
    assert reason(line) == "PREMIUM_PAYMENT_NOT_FOUND", line

    today = china_today().isoformat()
    days = gongji.ok("premium-report", "--from", today, "--to", today)["days"]
    assert {(d["region_code"], d["payment_count"], d["refund_count"]) for d in days} == {("610100", "1", "1")}
    line = gongji.fails(EXIT_REFUSED, "premium-report", "--from", "2020-01-01", "--to", "2020-12-31")
    assert reason(line) == "INVALID_ARGUMENT", line
    assert "invalid day" in gongji.usage("premium-report", "--from", "2020-13-01", "--to", "2020-12-31")


# ---- the common options, by flag and by environment, anywhere on the line ------------------------------
def test_target_and_tokens_before_or_after_the_subcommand_or_from_the_environment(
    gongji: Client, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"127.0.0.1:{servers.port}"
    before = _main(gongji.capsys, ["client", "--target", target, *gongji.flags(), "policies"])
    after = _main(gongji.capsys, ["client", "policies", "--target", target, *gongji.flags()])
    assert (before.code, after.code) == (0, 0), (before, after)
    assert json.loads(before.out) == json.loads(after.out)
    # Given before and not after, the value before holds (the subcommand's default does not overwrite it).
    split = _main(gongji.capsys, ["client", "--target", target, "policies", *gongji.flags()])
    assert split.code == 0, split

    monkeypatch.setenv("GONGJI_TARGET", target)
    monkeypatch.setenv("GONGJI_OPERATOR_TOKEN", servers.tokens["operator"])
    assert gongji.ok("policies", target=False, tokens=False)["default_policy"]
    # A flag wins over its variable.
    line = gongji.fails(EXIT_AUTH, "policies", "--operator-token", "gj_wrong", target=False, tokens=False)
    assert reason(line) == "CREDENTIALS_INVALID", line
    line = gongji.fails(EXIT_AUTH, "policies", "--operator-token", "令牌 x", target=False, tokens=False)
    assert line.startswith("error: the operator token is not a bearer token"), line
    line = gongji.fails(EXIT_UNREACHABLE, "policies", "--target", f"127.0.0.1:{free_port()}", tokens=False)
    assert "(UNAVAILABLE); is `make run` serving on 127.0.0.1:" in line, line


def test_tokens_from_the_demo_file_or_missing(
    gongji: Client, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = gongji.fails(EXIT_AUTH, "policies", tokens=False)
    assert line.startswith("error: no operator token for this call; set --operator-token or GONGJI_OPERATOR_TOKEN")
    monkeypatch.setenv("GONGJI_DATA_DIR", str(servers.data_dir))
    assert gongji.ok("policies", tokens=False)["default_policy"]
    assert gongji.ok("settle", "--patient", "demo:xiaoli", "--amount-fen", "1", tokens=False)["settlement"]
    broken = servers.data_dir.parent / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "demo-tokens.json").write_text("{not json")
    monkeypatch.setenv("GONGJI_DATA_DIR", str(broken))
    line = gongji.fails(EXIT_AUTH, "policies", tokens=False)
    assert line.startswith("error: cannot read the demo tokens in "), line


def test_tls_and_mtls(gongji: Client, servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = {k: str(v) for k, v in servers.pki.items()}
    tls = f"127.0.0.1:{servers.tls_port}"
    assert gongji.ok("policies", "--target", tls, "--ca-file", pki["ca"])["default_policy"]
    assert gongji.ok("--target", tls, "--tls", "--ca-file", pki["ca"], "--server-name", "localhost", "policies")[
        "default_policy"
    ]
    gongji.fails(EXIT_UNREACHABLE, "policies", "--target", tls)  # plaintext to a TLS server
    gongji.fails(EXIT_UNREACHABLE, "policies", "--target", tls, "--tls")  # the system's roots know not our CA
    monkeypatch.setenv("GONGJI_CLIENT_TLS", "1")
    gongji.fails(EXIT_UNREACHABLE, "policies", "--target", f"127.0.0.1:{servers.port}")  # TLS to plaintext
    monkeypatch.delenv("GONGJI_CLIENT_TLS")
    gongji.fails(EXIT_UNREACHABLE, "policies", "--target", tls, "--ca-file", pki["other_ca"])
    gongji.fails(EXIT_UNREACHABLE, "policies", "--target", tls, "--ca-file", pki["ca"], "--server-name", "other.test")
    line = gongji.fails(EXIT_USAGE, "policies", "--target", tls, "--ca-file", pki["ca"] + ".missing")
    assert line == f"error: cannot read the CA file {pki['ca']}.missing: No such file or directory", line

    line = gongji.fails(EXIT_USAGE, "policies", "--target", tls, "--ca-file", pki["client_key"])
    assert line == f"error: the CA file {pki['client_key']} is not PEM: no -----BEGIN CERTIFICATE----- in it", line

    mtls = f"127.0.0.1:{servers.mtls_port}"
    client_cert = ("--cert-file", pki["client_cert"], "--key-file", pki["client_key"])
    assert gongji.ok("policies", "--target", mtls, "--ca-file", pki["ca"], *client_cert)["default_policy"]
    gongji.fails(EXIT_UNREACHABLE, "policies", "--target", mtls, "--ca-file", pki["ca"])  # no client certificate
    line = gongji.fails(EXIT_USAGE, "policies", "--target", mtls, "--ca-file", pki["ca"], "--cert-file",
                        pki["client_cert"])  # fmt: skip
    assert "--cert-file and --key-file go together" in line

    for name, value in (("CA", pki["ca"]), ("CERT", pki["client_cert"]), ("KEY", pki["client_key"])):
        monkeypatch.setenv(f"GONGJI_CLIENT_{name}_FILE", value)
    monkeypatch.setenv("GONGJI_TARGET", mtls)
    assert gongji.ok("policies", target=False)["default_policy"]


# ---- the installed entry point: what a user sees --------------------------------------------------------
def _entry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
    return subprocess.run(
        [GONGJI, "client", *args], env=base | (env or {}), cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_entry_point_unreachable_bad_enum_and_missing_tokens(servers: Servers, tmp_path: Path) -> None:
    gone = _entry("--target", f"127.0.0.1:{free_port()}", "policies", "--operator-token", "x")
    assert gone.returncode == EXIT_UNREACHABLE, gone
    assert gone.stderr.count("\n") == 1 and gone.stderr.startswith("error: "), gone.stderr
    assert "GONGJI_TARGET" in gone.stderr

    cousin = _entry(
        "grant", "--authorizer", "demo:xiaoming", "--beneficiary", "demo:xiaoli", "--relationship", "cousin"
    )
    assert cousin.returncode == EXIT_USAGE, cousin
    assert "invalid choice: 'cousin'" in cousin.stderr.splitlines()[-1]
    assert "Traceback" not in cousin.stderr

    untrusted = _entry("--target", f"127.0.0.1:{servers.tls_port}", "--ca-file", str(servers.pki["other_ca"]),
                       "policies", "--operator-token", servers.tokens["operator"])  # fmt: skip
    assert untrusted.returncode == EXIT_UNREACHABLE, untrusted
    assert untrusted.stderr.count("\n") == 1, "no log line of gRPC core: " + untrusted.stderr

    missing = _entry("--target", f"127.0.0.1:{servers.port}", "policies", env={"GONGJI_DATA_DIR": str(tmp_path)})
    assert missing.returncode == EXIT_AUTH, missing
    assert missing.stderr.count("\n") == 1 and "no operator token" in missing.stderr, missing.stderr

    where = {"GONGJI_TARGET": f"127.0.0.1:{servers.port}", "GONGJI_DATA_DIR": str(servers.data_dir)}
    good = _entry("settle", "--patient", "demo:xiaoli", "--amount-fen", "1", env=where)
    assert (good.returncode, good.stderr) == (0, ""), good
    assert json.loads(good.stdout)["settlement"]["amount_fen"] == "1"
