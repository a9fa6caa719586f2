"""Signed checkpoints of the ledger's hash chains (docs/books.md).

The hash chains (store/sql/chain.sql) show an entry changed, deleted or reordered in the middle of an
account's history. They cannot show two things by themselves: the newest entries of an account deleted
(with the balance adjusted to match), or a whole chain computed again over forged entries by someone who
can write to the database, since the link's definition is no secret. A checkpoint closes both: the head
of every chain (its newest entry, that entry's link, and how many entries the chain holds), read in one
snapshot and signed with an Ed25519 key from config. An operator keeps each checkpoint where the
database's writers cannot reach (docs/books.md); `gongji audit --chain --checkpoint FILE` later checks
that the books still hold every head as it was, and names each that they do not.

The document is JSON: {"checkpoint": {...}, "key_id": ..., "signature": ...}. The signature is Ed25519
over the UTF-8 bytes of the "checkpoint" value written with sorted keys and no spaces (`canonical`),
so that anyone with the public key can check it with any Ed25519 library. Its heads name entries by
their ids, never people: a checkpoint holds no personal data.

Ed25519 (from `cryptography`), not an HMAC: a verifier needs only the public key, and holding it lets no
one sign a checkpoint of their own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import asyncpg.pool
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION = 1


class CheckpointInvalid(Exception):
    """The file is not a checkpoint this key signed: unreadable, of another format, signed with an
    unknown key, or its signature does not match (changed since it was signed)."""


@dataclass(frozen=True, slots=True)
class Signer:
    key_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def from_bytes(cls, key_id: str, key: bytes) -> Signer:
        return cls(key_id, Ed25519PrivateKey.from_private_bytes(key))

    def verifiers(self) -> dict[str, Ed25519PublicKey]:
        """The key that verifies this signer's checkpoints, by its id (as public_keys answers)."""
        return {self.key_id: self.private_key.public_key()}

    def public_key_text(self) -> str:
        """`id:base64` of the public key, as `--public-key` takes it."""
        raw = self.private_key.public_key().public_bytes_raw()
        return f"{self.key_id}:{base64.b64encode(raw).decode()}"


def public_keys(texts: list[str]) -> dict[str, Ed25519PublicKey]:
    """Parse `id:base64` public keys."""
    keys: dict[str, Ed25519PublicKey] = {}
    for text in texts:
        key_id, sep, b64 = text.partition(":")
        try:
            raw = base64.b64decode(b64, validate=True)
            if not sep or not key_id or len(raw) != 32:
                raise ValueError
            keys[key_id] = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, binascii.Error):
            raise ValueError(f"a public key is 'id:base64' of 32 bytes, not {text[:40]!r}") from None
    return keys


def canonical(checkpoint: dict[str, Any]) -> bytes:
    return json.dumps(checkpoint, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def take(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, signer: Signer) -> dict[str, Any]:
    """The heads of every chain, read in one snapshot, signed."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch("select book, entry_id, entries, link from gongji_chain_heads()")
        taken_at = await conn.fetchval("select now()")
    heads = [[r["book"], r["entry_id"], r["entries"], r["link"].hex()] for r in rows]
    checkpoint = {
        "version": VERSION,
        "taken_at": taken_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "chains": len(heads),
        "entries": sum(h[2] for h in heads),
        # One line of sight over every head, for a log or a ticket: sha256 of the canonical heads.
        "root": hashlib.sha256(canonical({"heads": heads})).hexdigest(),
        "heads": heads,
    }
    signature = signer.private_key.sign(canonical(checkpoint))
    return {"checkpoint": checkpoint, "key_id": signer.key_id, "signature": base64.b64encode(signature).decode()}


def opened(document: Any, keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """The checkpoint of a document whose signature one of `keys` verifies; CheckpointInvalid otherwise."""
    try:
        checkpoint, key_id, signature = document["checkpoint"], document["key_id"], document["signature"]
        key = keys.get(key_id)
        if key is None:
            raise CheckpointInvalid(f"signed with key {key_id!r}, which is not given")
        key.verify(base64.b64decode(signature, validate=True), canonical(checkpoint))
    except (TypeError, KeyError, ValueError) as exc:  # binascii.Error is a ValueError
        raise CheckpointInvalid(f"not a gongji checkpoint ({type(exc).__name__})") from None
    except InvalidSignature:
        raise CheckpointInvalid(
            "the signature does not match: the checkpoint was changed after it was signed"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("version") != VERSION:
        version = checkpoint.get("version") if isinstance(checkpoint, dict) else None
        raise CheckpointInvalid(f"checkpoint version {version!r}, this gongji reads {VERSION}")
    return dict(checkpoint)


_WHY = {
    "MISSING": "is gone (deleted since, with the entries after it)",
    "REWRITTEN": "has another link: it, or an entry before it, was changed and the chain built again",
    "COUNT": "has another number of entries before it: one was deleted or inserted",
}


async def misfits(conn: asyncpg.Connection | asyncpg.Pool, checkpoint: dict[str, Any]) -> list[str]:
    """The heads of a verified checkpoint that the books no longer hold as they were, one line each,
    naming the person as `gongji audit` does (for operators, never for logs). Empty when every head
    is there, as it was."""
    heads = checkpoint["heads"]
    rows = await conn.fetch(
        "select book, entry_id, person_id, why from gongji_checkpoint_misfits($1, $2, $3, $4)",
        [h[0] for h in heads],
        [h[1] for h in heads],
        [h[2] for h in heads],
        [bytes.fromhex(h[3]) for h in heads],
    )
    return [
        f"checkpoint of {checkpoint['taken_at']}: {r['book']} entry {r['entry_id']}"
        f"{' of ' + r['person_id'] if r['person_id'] else ''}, a chain's head then, {_WHY[r['why']]}"
        for r in rows
    ]
