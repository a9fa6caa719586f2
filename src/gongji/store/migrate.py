"""Ordered SQL migrations, applied once each under an advisory lock, with a recorded checksum.

A small runner of our own instead of a library: the well-kept migration tools (alembic, yoyo) bring a
second database driver (SQLAlchemy/psycopg) next to asyncpg, and the asyncpg-native ones are thin and
barely maintained. What we need is about sixty lines: files `NNNN_name.sql` in `migrations/`, each
applied in its own transaction, its SHA-256 recorded, and a changed file refused instead of silently
diverging from what production ran.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import asyncpg.pool

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every gongji process.
_ADVISORY_LOCK_KEY = 0x6A6F6E676A69  # "gongji"
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
create table if not exists schema_migration (
    version    integer primary key,
    name       text not null,
    sha256     text not null,
    applied_at timestamptz not null default now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def bundled() -> list[Migration]:
    found = []
    for entry in resources.files("gongji.store").joinpath("migrations").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    assert len(set(versions)) == len(versions), f"duplicate migration versions: {versions}"
    return found


async def migrate(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply what is missing; return what was applied. Safe to run from several processes at once."""
    todo = bundled() if migrations is None else migrations
    applied_now: list[Migration] = []
    await conn.execute("select pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("select version, name, sha256 from schema_migration")
        applied = {r["version"]: r for r in rows}
        for m in todo:
            done = applied.get(m.version)
            if done is not None:
                if done["sha256"] != m.sha256:
                    raise MigrationError(f"migration {m.version:04d}_{m.name} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "insert into schema_migration (version, name, sha256) values ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.sha256,
                )
            log.info("applied migration %04d_%s", m.version, m.name)
            applied_now.append(m)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now
