"""Issued e-vouchers: whom they name, who asked, when they expire, and whether they were used."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

_INSERT = """
insert into voucher (voucher_id, person_id, requester_id, expires_at) values ($1, $2, $3, $4)"""


async def record(
    pool: asyncpg.Pool, voucher_id: uuid.UUID, person_id: str, requester_id: str, expires_at: dt.datetime
) -> None:
    await pool.execute(_INSERT, voucher_id, person_id, requester_id, expires_at)
