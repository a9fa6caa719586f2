"""Schema as history, code as current: ordered SQL migrations applied once each, then the server-side
functions re-applied whenever they change, all under one advisory lock and in one transaction.

The shape is Flyway's: versioned migrations (`V__`) and repeatable ones (`R__`).

- **Numbered migrations** (`migrations/NNNN_name.sql`) are history: tables, indexes, constraints and
  data moves. Each runs once, its SHA-256 recorded; once released it is never edited, and a changed
  file is refused instead of silently diverging from what production ran.
- **Code** (`sql/*.sql`, in the order of CODE_FILES) is current: every server-side function (and the
  triggers that call them), one file per concept, always the version in force. After the numbered
  migrations, each file whose SHA-256 differs from the one recorded is run again (`create or
  replace`). A reader finds today's `gongji_settle` in one place, and a rule change is a diff of that
  file rather than a copy of every function into a new migration. A change of a function's signature
  or of the columns it returns is an explicit `drop function` in a numbered migration, which runs
  first.

Everything one start has to apply commits together: a server of the previous version still running
(a rolling upgrade) sees the old schema with the old functions or the new with the new, never a
migration that dropped a function without the code that brings it back. Holding one table's lock
while waiting for the next would deadlock with a request that holds them the other way round, so the
tables the pending migrations alter are locked first, in one statement, in the order requests take
them (TABLE_ORDER), under a lock timeout: an upgrade under load fails whole and is tried again rather
than stall or abort settlements. A migration that cannot run in a transaction (CREATE INDEX
CONCURRENTLY) would need a step of its own outside this runner.

A small runner of our own instead of a library: the well-kept migration tools (alembic, yoyo) bring a
second database driver (SQLAlchemy/psycopg) next to asyncpg, and the asyncpg-native ones are thin and
barely maintained. What we need is about a hundred lines.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import asyncpg.pool

from gongji import limits

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


_CREATE_CODE_TABLE = """
create table if not exists schema_code (
    name       text primary key,
    sha256     text not null,
    applied_at timestamptz not null default now()
)"""

# The order in which requests take their tables (a settlement: its key, the voucher, the grant, the
# accounts, the counts, then writes), which a migration's upfront LOCK TABLE follows.
TABLE_ORDER = (
    "credential", "institution", "reversal", "idempotency_key", "person", "voucher", "kinship_binding",
    "mutual_aid_grant", "region_policy", "premium_rate", "account", "grant_usage", "beneficiary_usage",
    "settlement", "refund", "credit", "premium_payment", "ledger_entry",
)  # fmt: skip
_ALTERED = re.compile(r"^\s*alter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?(\w+)", re.IGNORECASE | re.MULTILINE)
# A foreign key to a table locks it too (SHARE ROW EXCLUSIVE, which holds off its writers): taken up
# front with the altered ones, in the same order, or a settlement writing it could wait on a table the
# migration holds while the migration waits on it.
_REFERENCED = re.compile(r"\breferences\s+(\w+)", re.IGNORECASE)
_UPGRADE_LOCK_TIMEOUT = "10s"

# The code files, in the order they are applied (a later file may use an earlier one's functions).
CODE_FILES = (
    "settle.sql",
    "premium.sql",
    "lifecycle.sql",
    "credentials.sql",
    "wallet.sql",
    "hold.sql",
    "chain.sql",
    "events.sql",
)


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


@dataclass(frozen=True, slots=True)
class Code:
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_code() -> list[Code]:
    folder = resources.files("gongji.store").joinpath("sql")
    return [Code(name, folder.joinpath(name).read_text(encoding="utf-8")) for name in CODE_FILES]


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
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    migrations: list[Migration] | None = None,
    code: list[Code] | None = None,
) -> list[Migration]:
    """Apply the numbered migrations that are missing, then the code that changed; return the
    migrations applied. Safe to run from several processes at once: they take turns."""
    await conn.execute("select pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        async with conn.transaction():
            applied_now = await _apply_migrations(conn, bundled() if migrations is None else migrations)
            await _apply_code(conn, bundled_code() if code is None else code)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now


async def _apply_migrations(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, todo: list[Migration]
) -> list[Migration]:
    await conn.execute(_CREATE_TABLE)
    rows = await conn.fetch("select version, name, sha256 from schema_migration")
    applied = {r["version"]: r for r in rows}
    applied_now: list[Migration] = []
    await _lock_altered_tables(conn, [m for m in todo if m.version not in applied])
    for m in todo:
        done = applied.get(m.version)
        if done is not None:
            if done["sha256"] != m.sha256:
                raise MigrationError(f"migration {m.version:04d}_{m.name} changed after it was applied")
            continue
        await conn.execute(m.sql, timeout=limits.MIGRATION_STATEMENT_TIMEOUT_S)
        await conn.execute(
            "insert into schema_migration (version, name, sha256) values ($1, $2, $3)", m.version, m.name, m.sha256
        )
        log.info("applied migration %04d_%s", m.version, m.name)
        applied_now.append(m)
    return applied_now


async def _lock_altered_tables(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, pending: list[Migration]
) -> None:
    """Take every table the pending migrations alter (or reference by a foreign key) at once, in
    TABLE_ORDER, before any of them runs."""
    altered = {name.lower() for m in pending for name in (*_ALTERED.findall(m.sql), *_REFERENCED.findall(m.sql))}
    existing = {r["relname"] for r in await conn.fetch(_EXISTING_TABLES, sorted(altered))}
    ordered = [t for t in TABLE_ORDER if t in existing] + sorted(existing - set(TABLE_ORDER))
    if ordered:
        await conn.execute(f"set local lock_timeout = '{_UPGRADE_LOCK_TIMEOUT}'")
        await conn.execute(f"lock table {', '.join(ordered)} in access exclusive mode")


_EXISTING_TABLES = """
select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = current_schema() and c.relkind = 'r' and c.relname = any($1::text[])"""


async def _apply_code(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, todo: list[Code]) -> None:
    await conn.execute(_CREATE_CODE_TABLE)
    recorded = {r["name"]: r["sha256"] for r in await conn.fetch("select name, sha256 from schema_code")}
    for code in todo:
        if recorded.get(code.name) == code.sha256:
            continue
        await conn.execute(code.sql, timeout=limits.MIGRATION_STATEMENT_TIMEOUT_S)
        await conn.execute(
            "insert into schema_code (name, sha256) values ($1, $2)"
            " on conflict (name) do update set sha256 = excluded.sha256, applied_at = now()",
            code.name,
            code.sha256,
        )
        log.info("applied code sql/%s", code.name)
