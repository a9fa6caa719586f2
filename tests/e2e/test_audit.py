"""`gongji audit` as an operator runs it: exit 0 on clean books, 1 naming the account that is off."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
from support import Api, cancel

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


async def test_audit_finds_a_refund_that_is_off(api: Api, pool: asyncpg.Pool, db_url: str) -> None:
    person = await api.enroll(balance_fen=1_000)
    s = (await api.settle(person, 300)).settlement
    refund = (await cancel(api, s.settlement_id, 100)).refund
    assert _audit(db_url).returncode == 0
    # The refund's record says cash although the account got the money back.
    shift = "update refund set acct_pay_fen = acct_pay_fen {} 100, psn_cash_pay_fen = psn_cash_pay_fen {} 100"
    await pool.execute(shift.format("-", "+") + " where refund_id = $1", uuid.UUID(refund.refund_id))
    try:
        off = _audit(db_url)
    finally:
        await pool.execute(shift.format("+", "-") + " where refund_id = $1", uuid.UUID(refund.refund_id))
    assert off.returncode == 1
    assert f"refund {refund.refund_id}: ledger does not match" in off.stdout
    # And a settlement whose refunded total disagrees with its refunds.
    await pool.execute("update settlement set refunded_fen = 0 where settlement_id = $1", uuid.UUID(s.settlement_id))
    try:
        off = _audit(db_url)
    finally:
        await pool.execute(
            "update settlement set refunded_fen = 100 where settlement_id = $1", uuid.UUID(s.settlement_id)
        )
    assert f"settlement {s.settlement_id}: refunds do not add up" in off.stdout
    assert _audit(db_url).returncode == 0
