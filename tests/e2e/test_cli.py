"""The CLI as a user runs it: `gongji serve --demo`, the README's first call, restart, credentials."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from e2e_support import GONGJI, ROOT, client, serve, stop

from gongji import demo
from gongji.store import credentials


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
        # What alerts read exists at 0 before its first event, so that increase() sees that one too.
        assert f'gongji_real_name_mismatches_total{{institution="{demo.INSTITUTION_ID}"}} 0.0' in metrics
        assert 'gongji_settlements_total{outcome="VOUCHER_PATIENT_MISMATCH"} 0.0' in metrics
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


def _gongji(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GONGJI, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_credential_list_and_revoke(env: dict[str, str]) -> None:
    """An operator lists credentials and revokes one by label while two workers serve: the terminal's
    next settlement is refused at once, and its other calls on every worker long before the cache's
    30 s would have run out."""
    proc = serve(env, "--workers", "2")
    try:
        tokens = json.loads((Path(env["GONGJI_DATA_DIR"]) / "demo-tokens.json").read_text())
        for _ in range(4):  # new connections, spread over both workers: their caches are warm
            client(env, "quote", "--patient", "demo:xiaoli", "--amount-fen", "100")
        client(env, "settle", "--patient", "demo:xiaoli", "--amount-fen", "100")

        listed = _gongji(env, "credential", "list")
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == [
            "id",
            "label",
            "kind",
            "institution",
            "terminal",
            "created",
            "last",
            "used",
            "revoked",
        ]
        terminal = next(r for r in rows if "demo terminal" in r)
        assert demo.INSTITUTION_ID in terminal
        assert terminal.split()[-1] == "-", "not revoked"
        for token in tokens.values():  # neither a token nor its hash, in any spelling
            assert token not in listed.stdout
            assert credentials.token_hash(token).hex() not in listed.stdout.lower()

        for _ in range(2):
            created = _gongji(env, "credential", "create", "--kind", "app", "--label", "twice")
            assert created.returncode == 0, created.stderr
        ambiguous = _gongji(env, "credential", "revoke", "twice")
        assert ambiguous.returncode == 1
        assert "2 live credentials have this label" in ambiguous.stderr
        assert "Traceback" not in ambiguous.stderr
        unknown = _gongji(env, "credential", "revoke", "no such label")
        assert (unknown.returncode, "Traceback" in unknown.stderr) == (1, False)

        revoked = _gongji(env, "credential", "revoke", "demo terminal")
        assert revoked.returncode == 0, revoked.stderr
        terminal_id = terminal.split()[0]
        assert revoked.stdout.strip() == f"revoked credential {terminal_id}"
        again = _gongji(env, "credential", "revoke", terminal_id)
        assert again.returncode == 1
        assert "revoked already" in again.stderr

        settle = _gongji(env, "client", "--target", env["GONGJI_GRPC_LISTEN"], "settle", "--patient", "demo:xiaoli",
                         "--amount-fen", "100")  # fmt: skip
        assert settle.returncode == 4, "authentication"
        assert settle.stderr.startswith("error: unknown or revoked credentials (CREDENTIALS_INVALID)"), settle.stderr
        assert settle.stderr.count("\n") == 1, settle.stderr
        for _ in range(4):
            quote = _gongji(env, "client", "--target", env["GONGJI_GRPC_LISTEN"], "quote", "--patient", "demo:xiaoli",
                            "--amount-fen", "100")  # fmt: skip
            assert quote.returncode == 4
            assert "(CREDENTIALS_INVALID)" in quote.stderr, quote.stderr
    finally:
        log = stop(proc)
    assert "Traceback" not in log

    # The workers wrote their credentials' last use as they stopped.
    listed = _gongji(env, "credential", "list")
    terminal = next(r for r in listed.stdout.splitlines() if "demo terminal" in r)
    created_at, last_used, revoked_at = terminal.split()[-3:]
    assert last_used != "-", terminal
    assert created_at <= last_used <= revoked_at, terminal
