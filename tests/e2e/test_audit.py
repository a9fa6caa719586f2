"""`gongji audit` as an operator runs it: exit 0 on clean books, 1 naming the account that is off."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
from support import CHILD, RESIDENT, Api, cancel, reverse

from gongji.api.validate import china_today
from gongji.v1 import settlement_pb2

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


async def test_audit_finds_a_premium_that_is_off(api: Api, pool: asyncpg.Pool, db_url: str) -> None:
    region, year = "618701", china_today().year + 1
    await api.set_premium_rate(region, year, 400, dt.date(year - 1, 1, 1), dt.date(year, 12, 31))
    parent = await api.enroll(region=region, balance_fen=1_000, birth=dt.date(1980, 1, 1))
    child = await api.enroll(region=region, scheme=RESIDENT, birth=dt.date(2015, 1, 1))
    await api.grant(parent, child, CHILD)
    payment_id = uuid.UUID((await api.pay_premium(parent, child, year)).payment.payment_id)
    assert _audit(db_url).returncode == 0
    # Marked refunded without the money going back, and then with an amount the ledger never moved.
    for broken, mended in (
        (
            "update premium_payment set refunded_at = now(), refund_reason = 'x', refund_credential_id = 1",
            "update premium_payment set refunded_at = null, refund_reason = null, refund_credential_id = null",
        ),
        ("update premium_payment set amount_fen = 401", "update premium_payment set amount_fen = 400"),
    ):
        await pool.execute(broken + " where payment_id = $1", payment_id)
        try:
            off = _audit(db_url)
        finally:
            await pool.execute(mended + " where payment_id = $1", payment_id)
        assert off.returncode == 1
        assert f"premium payment {payment_id}: ledger does not match" in off.stdout
    await api.refund_premium(str(payment_id))
    assert _audit(db_url).returncode == 0


async def test_audit_finds_a_reversed_refund_that_is_off(api: Api, pool: asyncpg.Pool, db_url: str) -> None:
    authorizer = await api.enroll(balance_fen=1_000, birth=dt.date(1960, 1, 1))
    patient = await api.enroll(balance_fen=100, birth=dt.date(1990, 1, 1))
    await api.grant(authorizer, patient, CHILD)
    s = (await api.settle(patient, 600)).settlement
    refund = (await cancel(api, s.settlement_id, 500, request_id="audit-rr-1")).refund
    await reverse(api, "audit-rr-1", kind=settlement_pb2.ORIGINAL_KIND_CANCEL)
    assert _audit(db_url).returncode == 0
    refund_id = uuid.UUID(refund.refund_id)
    # Unmarked as reversed although its money was taken back (and the settlement's total follows it);
    # then marked reversed with no reversal to name it.
    for broken, mended, found in (
        (
            "update refund set reversed_at = null where refund_id = $1",
            "update refund set reversed_at = now() where refund_id = $1",
            f"refund {refund.refund_id}: ledger does not match",
        ),
        (
            "delete from refund_reversal where refund_id = $1",
            "insert into refund_reversal (institution_id, request_id, refund_id)"
            " select institution_id, request_id, refund_id from refund where refund_id = $1",
            f"refund {refund.refund_id}: reversed does not match its reversal",
        ),
    ):
        await pool.execute(broken, refund_id)
        try:
            off = _audit(db_url)
        finally:
            await pool.execute(mended, refund_id)
        assert off.returncode == 1
        assert found in off.stdout
    # The caps forgetting the mutual aid the reversal counted again.
    shift = "update grant_usage set used_fen = used_fen {} 500 where grant_id in"
    mine = " (select grant_id from mutual_aid_grant where authorizer_id = $1)"
    await pool.execute(shift.format("-") + mine, authorizer)
    try:
        off = _audit(db_url)
    finally:
        await pool.execute(shift.format("+") + mine, authorizer)
    assert "caps count" in off.stdout
    assert _audit(db_url).returncode == 0


async def test_audit_chain_names_the_first_entry_rewritten(api: Api, pool: asyncpg.Pool, db_url: str) -> None:
    """`gongji audit --chain`: an entry's words changed behind the books' back move no money, so the plain
    audit stays clean; the hash chain names that entry, and the chain holds again once it is put back."""
    person = await api.enroll(balance_fen=1_000)
    for amount in (100, 200):
        await api.settle(person, amount)
    first = await pool.fetchval("select min(entry_id) from ledger_entry where person_id = $1", person)
    line = f"ledger of {person}: the hash chain breaks at entry {first}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")} | {"GONGJI_DATABASE_URL": db_url}

    def audit_chain() -> subprocess.CompletedProcess[str]:
        return subprocess.run([GONGJI, "audit", "--chain"], env=env, capture_output=True, text=True, timeout=120)

    assert line not in audit_chain().stdout
    await pool.execute("update ledger_entry set note = 'adjusted' where entry_id = $1", first)
    try:
        assert _audit(db_url).returncode == 0, "the plain audit sees no money out of place"
        off = audit_chain()
    finally:
        await pool.execute("update ledger_entry set note = null where entry_id = $1", first)
    assert off.returncode == 1 and line in off.stdout, off.stdout + off.stderr
    assert line not in audit_chain().stdout


async def test_a_checkpoint_kept_elsewhere_finds_a_head_rewritten(
    api: Api, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    """`gongji checkpoint --out` signs the chains' heads; `gongji audit --checkpoint`, given only the public
    key, names a head written again since (its chain still fits itself), and refuses a checkpoint that
    another key signed."""
    person = await api.enroll(balance_fen=1_000)
    await api.settle(person, 100)
    head = await pool.fetchval("select max(entry_id) from ledger_entry where person_id = $1", person)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")} | {"GONGJI_DATABASE_URL": db_url}
    signing = clean | {"GONGJI_CHECKPOINT_KEY": base64.b64encode(os.urandom(32)).decode()}

    def gongji(*args: str, env: dict[str, str] = clean) -> subprocess.CompletedProcess[str]:
        return subprocess.run([GONGJI, *args], env=env, capture_output=True, text=True, timeout=120, check=False)

    saved = tmp_path / "checkpoint.json"
    taken = gongji("checkpoint", "--out", str(saved), env=signing)
    assert taken.returncode == 0 and taken.stderr.startswith("checkpoint: "), taken.stderr
    public_key = gongji("checkpoint", "--public-key", env=signing).stdout.strip()
    line = f"ledger entry {head} of {person}, a chain's head then, has another link"
    audited = gongji("audit", "--checkpoint", str(saved), "--public-key", public_key)
    assert line not in audited.stdout, audited.stdout

    async def relink(entry_id: int, note: str | None, prev: bytes | None) -> None:
        await pool.execute("update ledger_entry set note = $2 where entry_id = $1", entry_id, note)
        await pool.execute(
            "update ledger_entry set link = gongji_ledger_link($2, ledger_entry) where entry_id = $1", entry_id, prev
        )

    before = await pool.fetchrow(
        "select l.note, (select p.link from ledger_entry p where p.person_id = l.person_id and p.entry_id < l.entry_id"
        " order by p.entry_id desc limit 1) as prev from ledger_entry l where l.entry_id = $1",
        head,
    )
    await relink(head, "adjusted", before["prev"])
    try:
        off = gongji("audit", "--checkpoint", str(saved), "--public-key", public_key)
    finally:
        await relink(head, before["note"], before["prev"])
    assert off.returncode == 1 and line in off.stdout, off.stdout + off.stderr
    assert f"breaks at entry {head}" not in off.stdout  # the chain alone fits: only the checkpoint tells

    other = gongji("audit", "--checkpoint", str(saved), "--public-key", "c1:" + base64.b64encode(bytes(32)).decode())
    assert other.returncode == 2 and "signature does not match" in other.stderr, other.stderr


def test_a_crafted_or_unverifiable_checkpoint_is_one_line_not_a_traceback(db_url: str, tmp_path: Path) -> None:
    """Whatever the file holds, `gongji audit --checkpoint` says what is wrong in one line and exits 2; and a
    verifier with no key of its own is told to pass the public key, never given a new key of its own
    that would refuse every genuine checkpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
    env |= {"GONGJI_DATABASE_URL": db_url, "GONGJI_DATA_DIR": str(tmp_path / "data")}
    key = "c1:" + base64.b64encode(bytes(32)).decode()
    files = {
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "binary.json": "\udcff",
        "list.json": json.dumps({"checkpoint": [1], "key_id": "c1", "signature": "é"}),
        "empty.json": "",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8", errors="surrogateescape")
        ran = subprocess.run(
            [GONGJI, "audit", "--checkpoint", str(tmp_path / name), "--public-key", key],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode == 2 and "Traceback" not in ran.stderr, (name, ran.stderr)
        assert len(ran.stderr.strip().splitlines()) == 1, (name, ran.stderr)
    unkeyed = subprocess.run(
        [GONGJI, "audit", "--checkpoint", str(tmp_path / "empty.json")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert unkeyed.returncode == 2 and "pass --public-key" in unkeyed.stderr, unkeyed.stderr
    assert not (tmp_path / "data" / "checkpoint.key").exists()
