"""Signed checkpoints of the hash chains (issue 19): the forgeries a chain alone cannot show, the newest
entries deleted and a whole chain built again over a forged entry, are found against a checkpoint taken
before them, and a checkpoint changed after it was signed is refused. Real server, real PostgreSQL; each
forgery is made in a transaction rolled back afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import Api

from gongji import checkpoints
from gongji.store import audit

pytestmark = pytest.mark.usefixtures("books")

SIGNER = checkpoints.Signer("t1", Ed25519PrivateKey.generate())
KEYS = checkpoints.public_keys([SIGNER.public_key_text()])


@pytest.fixture
async def patient(api: Api) -> str:
    """A patient whose own account paid three settlements."""
    patient = await api.enroll(balance_fen=1_000)
    for amount in (200, 300, 400):
        await api.settle(patient, amount)
    return patient


@pytest.fixture
async def checkpoint(patient: str, pool: asyncpg.Pool) -> dict[str, Any]:
    """A checkpoint taken after the patient's settlements, written out and read back as a verifier does."""
    async with pool.acquire() as conn:
        document = await checkpoints.take(conn, SIGNER)
    return checkpoints.opened(json.loads(json.dumps(document)), KEYS)


async def newest(conn: asyncpg.Connection, person_id: str) -> asyncpg.Record:
    return await conn.fetchrow(
        "select entry_id, settlement_id from ledger_entry where person_id = $1 order by entry_id desc limit 1",
        person_id,
    )


async def relink(conn: asyncpg.Connection, person_id: str) -> None:
    """What a forger who knows the link's definition does: build the person's chain again."""
    rows = await conn.fetch("select entry_id from ledger_entry where person_id = $1 order by entry_id", person_id)
    prev = None
    for r in rows:
        prev = await conn.fetchval(
            "update ledger_entry set link = gongji_ledger_link($1, ledger_entry) where entry_id = $2 returning link",
            prev,
            r["entry_id"],
        )


async def test_the_books_hold_a_checkpoint_and_grow_past_it(
    api: Api, patient: str, checkpoint: dict[str, Any], pool: asyncpg.Pool
) -> None:
    assert checkpoint["chains"] == len(checkpoint["heads"]) > 0
    assert checkpoint["entries"] == sum(h[2] for h in checkpoint["heads"])
    await api.settle(patient, 50)
    assert await checkpoints.misfits(pool, checkpoint) == []


async def test_the_newest_entries_deleted_are_found(
    patient: str, checkpoint: dict[str, Any], forger: asyncpg.Connection
) -> None:
    """The newest settlement erased with its entry and the balance given back: the books tell one story
    and the chain still fits (nothing after the entry links to it); the checkpoint misses its head."""
    head = await newest(forger, patient)
    amount = await forger.fetchval("select amount_fen from ledger_entry where entry_id = $1", head["entry_id"])
    await forger.execute("delete from ledger_entry where entry_id = $1", head["entry_id"])
    await forger.execute("delete from settlement where settlement_id = $1", head["settlement_id"])
    await forger.execute("update account set balance_fen = balance_fen - $2 where person_id = $1", patient, amount)
    assert await audit.differences(forger) == []
    assert await audit.chain_breaks(forger) == []
    found = await checkpoints.misfits(forger, checkpoint)
    assert found == [
        f"checkpoint of {checkpoint['taken_at']}: ledger entry {head['entry_id']}, a chain's head then, "
        "is gone (deleted since, with the entries after it)"
    ]


async def test_a_chain_built_again_over_a_forged_entry_is_found(
    patient: str, checkpoint: dict[str, Any], forger: asyncpg.Connection
) -> None:
    """A forger changes what the first settlement's entry says and computes every link of the person's
    chain again: the chain fits itself, only the checkpoint's head link tells."""
    head = await newest(forger, patient)
    first = await forger.fetchval("select min(entry_id) from ledger_entry where person_id = $1", patient)
    await forger.execute("update ledger_entry set note = 'nothing to see' where entry_id = $1", first)
    await relink(forger, patient)
    assert await audit.chain_breaks(forger) == []
    found = await checkpoints.misfits(forger, checkpoint)
    assert len(found) == 1 and f"ledger entry {head['entry_id']} of {patient}" in found[0]
    assert "was changed and the chain built again" in found[0]


async def test_an_entry_deleted_before_the_head_is_found(
    patient: str, checkpoint: dict[str, Any], forger: asyncpg.Connection
) -> None:
    """An older entry deleted, the chain built again and the link of the head forged back to what it was
    (as if the forger could): the head holds fewer entries before it than it did."""
    head = await newest(forger, patient)
    link = await forger.fetchval("select link from ledger_entry where entry_id = $1", head["entry_id"])
    first = await forger.fetchval("select min(entry_id) from ledger_entry where person_id = $1", patient)
    await forger.execute("delete from ledger_entry where entry_id = $1", first)
    await forger.execute("update ledger_entry set link = $2 where entry_id = $1", head["entry_id"], link)
    found = await checkpoints.misfits(forger, checkpoint)
    assert len(found) == 1 and "has another number of entries before it" in found[0], found


async def test_a_checkpoint_changed_after_signing_is_refused(pool: asyncpg.Pool, patient: str) -> None:
    async with pool.acquire() as conn:
        document = await checkpoints.take(conn, SIGNER)
    assert patient not in json.dumps(document)  # entries by id, never people
    forged = json.loads(json.dumps(document))
    forged["checkpoint"]["heads"] = forged["checkpoint"]["heads"][1:]  # a deleted chain's head dropped
    with pytest.raises(checkpoints.CheckpointInvalid, match="signature does not match"):
        checkpoints.opened(forged, KEYS)
    other = checkpoints.Signer("t1", Ed25519PrivateKey.generate())
    with pytest.raises(checkpoints.CheckpointInvalid, match="signature does not match"):
        checkpoints.opened(document, checkpoints.public_keys([other.public_key_text()]))
    with pytest.raises(checkpoints.CheckpointInvalid, match="key 't1', which is not given"):
        checkpoints.opened(document, {})
    with pytest.raises(checkpoints.CheckpointInvalid, match="not a gongji checkpoint"):
        checkpoints.opened({"checkpoint": {}}, KEYS)
