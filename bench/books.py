"""After the load: the books must explain every balance, and every answered request is in them once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
from common import BIN


async def _books_counts(db_url: str, settlements: list[str], refunds: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        return {
            "settlements_in_books": await conn.fetchval(
                "select count(*) from settlement where institution_id like 'HBENCH0%'"
            ),
            "seen_settlements_in_books": await conn.fetchval(
                "select count(*) from settlement where settlement_id = any($1::uuid[])", settlements
            ),
            "refunds_in_books": await conn.fetchval("select count(*) from refund where institution_id like 'HBENCH0%'"),
            "seen_refunds_in_books": await conn.fetchval(
                "select count(*) from refund where refund_id = any($1::uuid[])", refunds
            ),
        }
    finally:
        await conn.close()


def check_books(db_url: str, out: Path) -> dict[str, Any]:
    """gongji audit (every balance, settlement and refund against the ledger), and every settlement and
    refund a client got an answer for found in the books exactly once."""
    audit = subprocess.run(
        [str(BIN / "gongji"), "audit"],
        env=os.environ | {"GONGJI_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    settlements: list[str] = []
    refunds: list[str] = []
    for path in out.glob("*.seen.json"):
        if path.name.startswith("edge_ceiling"):
            continue  # the bare server's answers are not real settlements
        seen = json.loads(path.read_text())
        settlements += seen["settlements"]
        refunds += seen["refunds"]
    counts = asyncio.run(_books_counts(db_url, settlements, refunds))
    exactly_once = (
        len(set(settlements)) == len(settlements) == counts["seen_settlements_in_books"]
        and len(set(refunds)) == len(refunds) == counts["seen_refunds_in_books"]
    )
    return {
        "audit_exit_code": audit.returncode,
        "audit_differences": [line for line in audit.stdout.splitlines() if line.strip()],
        "settlements_answered": len(settlements),
        "refunds_answered": len(refunds),
        **counts,
        # Settled, but the answer reached no client before it stopped (a POS would retry or reverse).
        "settlements_unanswered_at_stop": counts["settlements_in_books"] - len(set(settlements)),
        "exactly_once": exactly_once,
    }
