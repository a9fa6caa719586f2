"""Insured people and their personal accounts."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import asyncpg.pool

from gongji.domain.eligibility import Scope, in_scope
from gongji.domain.people import DocumentType, Person, PersonStatus, Scheme
from gongji.store import db

PERSON_COLUMNS = "person_id, name, birth_date, region_code, scheme, status, document_type, document_number"

_SELECT_PERSON = f"select {PERSON_COLUMNS} from person where person_id = $1"

_SELECT_ACCOUNT = """
select p.person_id, p.name, p.birth_date, p.region_code, p.scheme, p.status, p.document_type, p.document_number,
       a.balance_fen,
       (select coalesce(sum(t.amount_fen), 0) from wallet_transfer t
         where t.sender_id = p.person_id and t.state = 'PENDING')::bigint as transfer_pending_out_fen,
       (select coalesce(sum(h.acct_pay_fen), 0) from settlement_hold h
         where h.patient_id = p.person_id and h.state = 'PENDING')::bigint
       + (select coalesce(sum(h.acct_mulaid_pay_fen), 0) from settlement_hold h
           where h.authorizer_id = p.person_id and h.state = 'PENDING')::bigint as held_fen
  from person p left join account a on a.person_id = p.person_id
 where p.person_id = $1"""

_UPSERT_PERSON = """
insert into person as p (person_id, name, birth_date, region_code, scheme, status, document_type, document_number)
values ($1, $2, $3, $4, $5, $6, $7, $8)
on conflict (person_id) do update
   set name = excluded.name, birth_date = excluded.birth_date, region_code = excluded.region_code,
       scheme = excluded.scheme, status = excluded.status,
       document_type = case when $9 then p.document_type else excluded.document_type end,
       document_number = case when $9 then p.document_number else excluded.document_number end,
       updated_at = now()
returning (xmax = 0) as created"""

_ENSURE_ACCOUNT = "insert into account (person_id) values ($1) on conflict do nothing"

# Grants touching a person, locked, so that ending them serializes with settlements drawing on them.
_LIVE_GRANTS_OF = """
select g.grant_id, g.scope, a.region_code as authorizer_region, b.region_code as beneficiary_region,
       a.status as authorizer_status, b.status as beneficiary_status, a.scheme as authorizer_scheme
  from mutual_aid_grant g
  join person a on a.person_id = g.authorizer_id
  join person b on b.person_id = g.beneficiary_id
 where (g.authorizer_id = $1 or g.beneficiary_id = $1) and g.status = 'LIVE'
 order by g.grant_id
   for no key update of g"""

_END_GRANTS = """
update mutual_aid_grant set status = 'ENDED', ended_at = now(), end_reason = $2
 where grant_id = any($1::bigint[]) and status = 'LIVE'"""


@dataclass(frozen=True, slots=True)
class AccountView:
    person: Person
    balance_fen: int | None  # None: no personal account (resident-insured)
    transfer_pending_out_fen: int = 0  # sent to a 医保钱包, not yet accepted (out of balance_fen)
    held_fen: int = 0  # held at the till by pending holds, own or as authorizer (out of balance_fen)


def person_from_row(row: asyncpg.Record) -> Person:
    return Person(
        person_id=row["person_id"],
        name=row["name"],
        birth_date=row["birth_date"],
        region_code=row["region_code"],
        scheme=Scheme(row["scheme"]),
        status=PersonStatus(row["status"]),
        document_type=DocumentType(row["document_type"]),
        document_number=row["document_number"],
    )


async def _fetchrow(conn: asyncpg.Connection | asyncpg.Pool, query: str, *args: object) -> asyncpg.Record | None:
    """On a pool, one statement whose connection returns without a reset (db.fetchrow)."""
    if isinstance(conn, asyncpg.Pool):
        return await db.fetchrow(conn, query, *args)
    row: asyncpg.Record | None = await conn.fetchrow(query, *args)
    return row


async def get_person(conn: asyncpg.Connection | asyncpg.Pool, person_id: str) -> Person | None:
    row = await _fetchrow(conn, _SELECT_PERSON, person_id)
    return None if row is None else person_from_row(row)


async def get_account(conn: asyncpg.Connection | asyncpg.Pool, person_id: str) -> AccountView | None:
    row = await _fetchrow(conn, _SELECT_ACCOUNT, person_id)
    if row is None:
        return None
    person = person_from_row(row)
    balance = row["balance_fen"] if person.has_personal_account else None
    return AccountView(person, balance, row["transfer_pending_out_fen"], row["held_fen"])


async def enroll(pool: asyncpg.Pool, person: Person, *, keep_document: bool = False) -> tuple[bool, int]:
    """Create or update `person`; return (created, grants ended by the change).

    With `keep_document`, an update leaves the identity document on record as it is. A grant ends by
    itself when either side stops being ACTIVE, the authorizer stops being employee-insured, or the two
    are no longer in the grant's scope, as the authorizer's region policy set it when the grant was made
    (docs/domain.md). The grants are locked, so settlements drawing on them finish first or see them ended.
    """
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            _UPSERT_PERSON,
            person.person_id,
            person.name,
            person.birth_date,
            person.region_code,
            person.scheme.value,
            person.status.value,
            person.document_type.value,
            person.document_number,
            keep_document,
        )
        if person.has_personal_account:
            # An account stays once opened (a scheme change keeps the money); only employees get one.
            await conn.execute(_ENSURE_ACCOUNT, person.person_id)
        if created:
            return True, 0
        return False, await _end_ineligible_grants(conn, person.person_id)


async def _end_ineligible_grants(conn: asyncpg.pool.PoolConnectionProxy, person_id: str) -> int:
    """End the live grants of `person_id` that its new state makes ineligible; return how many."""
    ended: dict[str, list[int]] = {"PERSON_NOT_ACTIVE": [], "NOT_EMPLOYEE_INSURED": [], "REGION_OUT_OF_SCOPE": []}
    for g in await conn.fetch(_LIVE_GRANTS_OF, person_id):
        if g["authorizer_status"] != "ACTIVE" or g["beneficiary_status"] != "ACTIVE":
            ended["PERSON_NOT_ACTIVE"].append(g["grant_id"])
        elif g["authorizer_scheme"] != Scheme.EMPLOYEE:
            ended["NOT_EMPLOYEE_INSURED"].append(g["grant_id"])
        elif not in_scope(g["authorizer_region"], g["beneficiary_region"], Scope(g["scope"])):
            ended["REGION_OUT_OF_SCOPE"].append(g["grant_id"])
    for reason, ids in ended.items():
        if ids:
            await conn.execute(_END_GRANTS, ids, reason)
    return sum(len(ids) for ids in ended.values())
