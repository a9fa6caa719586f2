"""The CLI as a user runs it: `gongji serve --demo`, the README's first call, restart, credentials."""

from __future__ import annotations

import re
import shlex
import subprocess
import urllib.request

from e2e_support import GONGJI, ROOT, client, serve, stop

from gongji import demo


def test_make_run_first_call_restart_and_credentials(env: dict[str, str]) -> None:
    proc = serve(env)
    try:
        reply = client(env, "settle", "--patient", "demo:xiaoli", "--amount-fen", "3500")
        s = reply["settlement"]
        assert isinstance(s, dict)
        assert (s["acct_pay_fen"], s["acct_mulaid_pay_fen"], s["psn_cash_pay_fen"]) == ("2000", "1500", "0")
        assert s["authorizer_id"] == demo.XIAOMING.person_id

        metrics = urllib.request.urlopen(f"http://{env['GONGJI_METRICS_LISTEN']}/metrics", timeout=5).read().decode()
        assert 'gongji_settlements_total{outcome="OK"} 1.0' in metrics
        assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Settle"' in metrics
        assert demo.XIAOLI.person_id not in metrics

        created = subprocess.run(
            [GONGJI, "credential", "create", "--kind", "terminal", "--institution", "H61010300999", "--terminal", "T9"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=60,
        )
        token = created.stdout.decode().strip()
        assert token.startswith("gj_")
        other = client(
            env | {"GONGJI_TERMINAL_TOKEN": token}, "settle", "--patient", demo.LIUFANG.person_id, "--amount-fen", "100"
        )
        assert other["settlement"]["institution_id"] == "H61010300999"  # type: ignore[index]
    finally:
        log = stop(proc)
    assert "stopped" in log
    for person in demo.PEOPLE:
        assert person.person_id not in log, "no ID number in the server's log"

    # Balances survive a restart, and the demo data is not loaded twice.
    proc = serve(env)
    try:
        account = client(env, "account", "--person", demo.XIAOMING.person_id)["account"]
        assert account["balance_fen"] == str(80_000 - 1_500)  # type: ignore[index]
    finally:
        stop(proc)


def _readme_examples() -> list[list[str]]:
    """The command lines of the README's family-examples block, as argument lists."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- family-examples -->\n```sh\n(.*?)```", text, re.S)
    assert block, "README.md has a family-examples block"
    lines = [ln for ln in block[1].splitlines() if ln.strip() and not ln.startswith("#")]
    assert all(ln.startswith(".venv/bin/gongji client ") for ln in lines)
    return [shlex.split(ln)[2:] for ln in lines]


def test_readme_family_examples_run_as_written(env: dict[str, str]) -> None:
    proc = serve(env)
    try:
        results = [client(env, *args) for args in _readme_examples()]
    finally:
        stop(proc)
    family, bound, voucher, settled, unbound, granted, named, revoked, policy, policies = results
    assert family["bound_member_count"] == 1
    assert bound["binding"]["active"] is True  # type: ignore[index]
    assert voucher["person_id"] == demo.LIUFANG.person_id
    assert voucher["requester_id"] == demo.ZHANGWEI.person_id
    assert settled["settlement"]["acct_mulaid_pay_fen"] == "1200"  # type: ignore[index]
    assert unbound["binding"]["active"] is False  # type: ignore[index]
    assert granted["grant"]["status"] == "GRANT_STATUS_LIVE"  # type: ignore[index]
    assert named["settlement"]["authorizer_id"] == demo.CHENJING.person_id  # type: ignore[index]
    assert named["settlement"]["acct_mulaid_pay_fen"] == "500"  # type: ignore[index]
    assert revoked["grant"]["end_reason"] == "REVOKED_BY_BENEFICIARY"  # type: ignore[index]
    assert "RELATIONSHIP_SIBLING" in policy["policy"]["allowed_relationships"]  # type: ignore[index]
    assert [p["region_key"] for p in policies["policies"]] == ["61"]  # type: ignore[index,union-attr]
