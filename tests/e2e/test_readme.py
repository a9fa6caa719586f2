"""The README, executed top to bottom as a reader would after `make run`: the first call, the family
examples, the 医保钱包 examples, buf curl and buf convert, in the README's order against one `gongji serve --demo`, each
documented output checked; then a restart, whose banner must tell the balances as they are now.

The commands are taken from the README's marked blocks as written. Only what differs between a reader's
machine and this test is rewritten: the port (the test serves on a free one), the data directory, and
`.venv/bin/` (the test's own environment).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ROOT, serve, stop

from gongji import demo
from gongji.api.validate import china_today
from gongji.domain.people import mask_id
from gongji.domain.wallet import CHINA, DEFAULT_WALLET_POLICY, in_quiet_hours

README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = str(Path(sys.executable).parent) + "/"


def _block(marker: str, lang: str = "sh") -> str:
    found = re.search(rf"<!-- {marker} -->\n```{lang}\n(.*?)```", README, re.S)
    assert found, f"README.md has a {marker} block"
    return found[1]


def _commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments left out."""
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class Reader:
    """Runs README lines as a shell would, on this test's server."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env | {"GONGJI_TARGET": env["GONGJI_GRPC_LISTEN"]}
        self.port = env["GONGJI_GRPC_LISTEN"].rsplit(":", 1)[1]

    def _localise(self, line: str) -> str:
        line = line.replace(".venv/bin/", BIN).replace("127.0.0.1:50051", f"127.0.0.1:{self.port}")
        return line.replace(".gongji/demo-tokens.json", f"{self.env['GONGJI_DATA_DIR']}/demo-tokens.json")

    def run(self, script: str, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", self._localise(script)],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, f"{script}\n{done.stderr}"
        return done

    def json(self, command: str) -> Any:
        return json.loads(self.run(command).stdout)


def _documented_json(marker: str) -> dict[str, Any]:
    """The README's shown answer, `...` standing for the fields it leaves out."""
    text = re.sub(r",\s*\.\.\.", "", _block(marker, "json"))
    shown: dict[str, Any] = json.loads(text)
    return shown


def _contains(answer: Any, shown: Any) -> bool:
    if isinstance(shown, dict):
        return isinstance(answer, dict) and all(k in answer and _contains(answer[k], v) for k, v in shown.items())
    return bool(answer == shown)


def _check_family_examples(results: list[Any]) -> None:
    """What each comment of the family-examples block says."""
    family, bound, voucher, settled, unbound, granted, capped, named, revoked, policy, policies, *premium = results
    assert family["bound_member_count"] == 1
    assert bound["binding"]["active"] is True
    assert voucher["person_id"] == demo.LIUFANG.person_id
    assert voucher["requester_id"] == demo.ZHANGWEI.person_id
    assert settled["settlement"]["acct_mulaid_pay_fen"] == "1200"
    assert settled["settlement"]["authorizer_id"] == demo.XIAOMING.person_id
    assert unbound["binding"]["active"] is False
    assert granted["grant"]["status"] == "GRANT_STATUS_LIVE"
    assert (capped["grant"]["yearly_cap_fen"], capped["grant"]["cap_left_fen"]) == ("10000", "10000")
    # Her own account is empty since the first call: 陈静's grant pays all 25.00.
    s = named["settlement"]
    assert s["authorizer_id"] == demo.CHENJING.person_id
    assert (s["acct_pay_fen"], s["acct_mulaid_pay_fen"], s["psn_cash_pay_fen"]) == ("0", "2500", "0")
    assert revoked["grant"]["end_reason"] == "REVOKED_BY_BENEFICIARY"
    assert policy["policy"]["allowed_relationships"] == [
        "RELATIONSHIP_SPOUSE",
        "RELATIONSHIP_PARENT",
        "RELATIONSHIP_CHILD",
    ]
    assert [p["region_key"] for p in policies["policies"]] == ["61"]

    rate, rates, paid, ledger = premium
    assert {k: rate["rate"][k] for k in ("region_key", "year", "amount_fen", "opens_on", "closes_on")} == {
        "region_key": "61",
        "year": 2027,
        "amount_fen": "38000",
        "opens_on": "2026-09-01",
        "closes_on": "2026-12-31",
    }
    next_year = china_today().year + 1
    listed = {(r["region_key"], r["year"], r["amount_fen"]) for r in rates["rates"]}
    assert {("61", 2027, "38000"), (demo.PREMIUM_REGION, next_year, str(demo.PREMIUM_FEN))} <= listed
    # 西安's own rate wins over the province's; 王小明 paid 15.00 (first call) and 12.00 (his son) before.
    payment = paid["payment"]
    assert (payment["payer_id"], payment["beneficiary_id"]) == (demo.XIAOMING.person_id, demo.XIUYING.person_id)
    assert (payment["year"], payment["amount_fen"], payment["region_key"]) == (next_year, "40000", "610100")
    assert paid["balance_fen"] == str(80_000 - 1_500 - 1_200 - demo.PREMIUM_FEN)
    (entry,) = ledger["entries"]
    assert (entry["kind"], entry["amount_fen"], entry["premium_payment_id"]) == (
        "PREMIUM",
        str(-demo.PREMIUM_FEN),
        payment["payment_id"],
    )
    assert entry["note"] == f"premium for {mask_id(demo.XIUYING.person_id)}, {next_year}"
    assert demo.XIUYING.person_id not in json.dumps(ledger, ensure_ascii=False), "the relative masked"


def _check_wallet_examples(reader: Reader) -> None:
    """What each comment of the wallet-examples block says. The server decides by the real clock: from
    22:00 to 06:00 China time the send is refused (the README says so), and the rest is not tried."""
    send, accept, wallet, ledger, settle = _commands(_block("wallet-examples"))
    before = dt.datetime.now(CHINA)
    done = reader.run(send, ok=False)
    quiet = [in_quiet_hours(t, DEFAULT_WALLET_POLICY) for t in (before, dt.datetime.now(CHINA))]
    if done.returncode != 0:
        assert any(quiet), done.stderr
        assert done.stderr.rstrip().endswith("(TRANSFER_QUIET_HOURS)"), done.stderr
        return
    assert not all(quiet), "a send in the quiet hours was refused"
    sent = json.loads(done.stdout)["transfer"]
    assert (sent["state"], sent["amount_fen"], sent["relationship"]) == (
        "TRANSFER_STATE_PENDING",
        "20000",
        "RELATIONSHIP_PARENT",
    )
    assert (sent["sender_id"], sent["recipient_id"]) == (demo.DEFU.person_id, demo.XIUYING.person_id)
    accepted = reader.json(accept)
    assert (accepted["transfer"]["transfer_id"], accepted["transfer"]["state"]) == (
        sent["transfer_id"],
        "TRANSFER_STATE_POSTED",
    )
    held = reader.json(wallet)["wallet"]
    assert (held["balance_fen"], held["pending_in_fen"]) == ("20000", "0")
    (entry,) = reader.json(ledger)["entries"]
    assert (entry["kind"], entry["amount_fen"], entry["balance_after_fen"]) == ("TRANSFER_OUT", "-20000", "130000")
    assert entry["counterpart_id_masked"] == mask_id(demo.XIUYING.person_id)
    paid = reader.json(settle)["settlement"]
    assert (paid["wallet_pay_fen"], paid["wallet_balc_fen"], paid.get("psn_cash_pay_fen", "0")) == (
        "5000",
        "15000",
        "0",
    )
    assert paid.get("acct_pay_fen", "0") == "0", "a resident has no personal account"


def _check_hold_examples(reader: Reader) -> None:
    """The hold-examples block: a held split out of the balance at once, then captured exactly."""
    held_quote, capture = _commands(_block("hold-examples"))
    quoted = reader.json(held_quote)
    hold = quoted["hold"]
    assert (hold["state"], hold["acct_pay_fen"], quoted["acct_pay_fen"]) == ("HOLD_STATE_PENDING", "3500", "3500")
    assert hold["patient_id"] == demo.DEFU.person_id
    settled = reader.json(capture)["settlement"]
    assert (settled["amount_fen"], settled["acct_pay_fen"]) == ("3500", "3500")
    assert settled["balc_fen"] == quoted.get("balc_fen", "0"), "the balance the hold left is the one settled to"


def _check_buf(reader: Reader) -> None:
    if shutil.which("buf", path=BIN) is None:
        pytest.fail("buf is one of the test tools (pyproject.toml, extra 'test')")
    account, refusal = _commands(_block("buf-curl"))[1:]
    token_line = _commands(_block("buf-curl"))[0]
    got = json.loads(reader.run(f"{token_line}\n{account}").stdout)
    assert got["account"]["balanceFen"] == str(80_000 - 1_500 - 1_200 - demo.PREMIUM_FEN)
    refused = reader.run(f"{token_line}\n{refusal}", ok=False)
    error = json.loads(refused.stderr or refused.stdout)
    assert error["code"] == "invalid_argument"
    assert "check character (GB 11643) of these 17 digits is 3, not 4" in error["message"]
    assert [d["type"] for d in error["details"]] == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]

    convert = _block("buf-convert")
    (command,) = _commands(convert)
    documented = json.loads(convert.strip().splitlines()[-1].lstrip("# "))
    assert command.split('"')[1] == error["details"][0]["value"] + "=", "the README decodes what buf printed"
    assert json.loads(reader.run(command).stdout) == documented == {"reason": "INVALID_ARGUMENT", "domain": "gongji"}


def test_the_readme_top_to_bottom_after_make_run(env: dict[str, str]) -> None:
    reader = Reader(env)
    proc = serve(env)
    try:
        (first_call,) = _commands(_block("first-call"))
        answer = reader.json(first_call)
        shown = _documented_json("first-call-answer")
        assert _contains(answer, shown), f"the README shows {shown}, the call answered {answer}"

        _check_family_examples([reader.json(line) for line in _commands(_block("family-examples"))])
        _check_wallet_examples(reader)
        _check_hold_examples(reader)
        _check_buf(reader)
    finally:
        stop(proc)

    # A restart: the banner tells the balances as they are now, not as they were on the first start.
    proc = serve(env)
    log = stop(proc)
    xiaoming = (80_000 - 1_500 - 1_200 - demo.PREMIUM_FEN) // 100
    assert f"李小丽's own account holds 0.00 yuan and 王小明's {xiaoming}.00" in log, log
