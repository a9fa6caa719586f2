"""`gongji audit` as an operator runs it: exit 0 on clean books, 1 naming the account that is off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from support import Api

GONGJI = str(Path(sys.executable).with_name("gongji"))


def _audit(db_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")} | {"GONGJI_DATABASE_URL": db_url}
    return subprocess.run([GONGJI, "audit"], env=env, capture_output=True, text=True, timeout=120, check=False)


async def test_audit_passes_then_names_the_account_that_is_off(api: Api, pool: asyncpg.Pool, db_url: str) -> None:
    person = await api.enroll(balance_fen=1_000)
    await api.settle(person, 300)
    clean = _audit(db_url)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "audit: 0 differences" in clean.stderr

    # Someone edits a balance behind the ledger's back.
    await pool.execute("update account set balance_fen = balance_fen + 1 where person_id = $1", person)
    try:
        off = _audit(db_url)
    finally:
        await pool.execute("update account set balance_fen = balance_fen - 1 where person_id = $1", person)
    assert off.returncode == 1
    assert f"account {person}: balance 701 fen, ledger 700 fen" in off.stdout
    assert _audit(db_url).returncode == 0
