"""Region policy as data, per province or 统筹区: grant scope and allowed relationships, caps, cards, what
mutual aid pays for, and the limits on 医保钱包 transfers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import asyncpg.pool

from gongji.domain.bill import MedType
from gongji.domain.eligibility import DEFAULT_POLICY, RegionPolicy, Scope
from gongji.domain.people import Relationship
from gongji.domain.vouchers import CARDS, CertType
from gongji.domain.wallet import DEFAULT_WALLET_POLICY, WalletPolicy, WalletScope
from gongji.domain.waterfall import DEFAULT_WALLET_ORDER, WalletOrder
from gongji.store import db

T = TypeVar("T")
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool

_COLUMNS = """scope, allowed_relationships, beneficiary_yearly_cap_fen, authorizer_floor_fen, accepted_cert_types,
           mutual_aid_out_of_region, mutual_aid_out_of_province, wholly_self_paid_no_account,
           wholly_self_paid_no_mutual_aid, wallet_relationships, wallet_scope, wallet_sends_per_day,
           wallet_send_max_fen, wallet_quiet_from, wallet_quiet_until, wallet_expires_at, wallet_order"""
# The most specific policy wins: the 统筹区's own, else its province's (gongji_region_policy, the rule
# a settlement's caps read too); no row when neither is set.
_FOR_REGION = f"select {_COLUMNS} from gongji_region_policy($1) where region_key is not null"
_UPSERT = f"""
insert into region_policy (region_key, {_COLUMNS})
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
on conflict (region_key) do update
   set scope = excluded.scope, allowed_relationships = excluded.allowed_relationships,
       beneficiary_yearly_cap_fen = excluded.beneficiary_yearly_cap_fen,
       authorizer_floor_fen = excluded.authorizer_floor_fen, accepted_cert_types = excluded.accepted_cert_types,
       mutual_aid_out_of_region = excluded.mutual_aid_out_of_region,
       mutual_aid_out_of_province = excluded.mutual_aid_out_of_province,
       wholly_self_paid_no_account = excluded.wholly_self_paid_no_account,
       wholly_self_paid_no_mutual_aid = excluded.wholly_self_paid_no_mutual_aid,
       wallet_relationships = excluded.wallet_relationships, wallet_scope = excluded.wallet_scope,
       wallet_sends_per_day = excluded.wallet_sends_per_day, wallet_send_max_fen = excluded.wallet_send_max_fen,
       wallet_quiet_from = excluded.wallet_quiet_from, wallet_quiet_until = excluded.wallet_quiet_until,
       wallet_expires_at = excluded.wallet_expires_at, wallet_order = excluded.wallet_order, updated_at = now()
returning region_key, {_COLUMNS}, updated_at"""
_COUNT = "select count(*) from region_policy"
_LIST = f"select region_key, {_COLUMNS}, updated_at from region_policy order by region_key limit $1"


@dataclass(frozen=True, slots=True)
class PolicyRow:
    region_key: str
    policy: RegionPolicy
    updated_at: dt.datetime


def _policy(r: asyncpg.Record) -> RegionPolicy:
    return RegionPolicy(
        Scope(r["scope"]),
        frozenset(Relationship(x) for x in r["allowed_relationships"]),
        r["beneficiary_yearly_cap_fen"],
        r["authorizer_floor_fen"],
        # null: every card (a policy set before cards were a choice, or one accepting them all)
        CARDS if r["accepted_cert_types"] is None else frozenset(CertType(c) for c in r["accepted_cert_types"]),
        r["mutual_aid_out_of_region"] is not False,  # null: a policy set before this was a choice
        r["mutual_aid_out_of_province"] is not False,
        # null: none excluded (a policy set before this was a choice, or one excluding none)
        frozenset(MedType(m) for m in r["wholly_self_paid_no_account"] or ()),
        frozenset(MedType(m) for m in r["wholly_self_paid_no_mutual_aid"] or ()),
        _wallet(r),
        # null: the default place (a policy set before this was a choice, or one keeping the default)
        DEFAULT_WALLET_ORDER if r["wallet_order"] is None else WalletOrder(r["wallet_order"]),
    )


def _wallet(r: asyncpg.Record) -> WalletPolicy:
    """The wallet limits of a policy row: each null column is the published value (as
    gongji_wallet_policy reads them for a send)."""
    d = DEFAULT_WALLET_POLICY
    relationships = r["wallet_relationships"]
    return WalletPolicy(
        d.relationships if relationships is None else frozenset(Relationship(x) for x in relationships),
        d.scope if r["wallet_scope"] is None else WalletScope(r["wallet_scope"]),
        _or(r["wallet_sends_per_day"], d.sends_per_day),
        _or(r["wallet_send_max_fen"], d.send_max_fen),
        _or(r["wallet_quiet_from"], d.quiet_from),
        _or(r["wallet_quiet_until"], d.quiet_until),
        _or(r["wallet_expires_at"], d.expires_at),
    )


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _wallet_columns(w: WalletPolicy) -> list[object]:
    """The wallet_* columns for `w`: null where it says the published value, so that a region that set
    nothing of its own follows the published values (as accepted_cert_types is null for every card)."""
    d = DEFAULT_WALLET_POLICY
    return [
        None if w.relationships == d.relationships else sorted(r.value for r in w.relationships),
        *(
            None if value == default else value
            for value, default in (
                (w.scope.value, d.scope.value),
                (w.sends_per_day, d.sends_per_day),
                (w.send_max_fen, d.send_max_fen),
                (w.quiet_from, d.quiet_from),
                (w.quiet_until, d.quiet_until),
                (w.expires_at, d.expires_at),
            )
        ),
    ]


def _row(r: asyncpg.Record) -> PolicyRow:
    return PolicyRow(r["region_key"], _policy(r), r["updated_at"])


async def for_region(conn: Conn, region_code: str) -> RegionPolicy:
    row = await conn.fetchrow(_FOR_REGION, region_code)
    return DEFAULT_POLICY if row is None else _policy(row)


async def set_policy(pool: asyncpg.Pool, region_key: str, policy: RegionPolicy, max_policies: int) -> PolicyRow | None:
    """Store the policy; None when it would be one more than `max_policies`."""
    async with pool.acquire() as conn, conn.transaction():
        # Policy changes are rare: one at a time keeps the count exact.
        await conn.execute("lock table region_policy in share row exclusive mode")
        exists = await conn.fetchval("select 1 from region_policy where region_key = $1", region_key)
        if not exists and await conn.fetchval(_COUNT) >= max_policies:
            return None
        allowed = sorted(r.value for r in policy.allowed)
        row = await conn.fetchrow(
            _UPSERT,
            region_key,
            policy.scope.value,
            allowed,
            policy.beneficiary_yearly_cap_fen,
            policy.authorizer_floor_fen,
            None if policy.accepted_cards == CARDS else sorted(c.value for c in policy.accepted_cards),
            policy.mutual_aid_out_of_region,
            policy.mutual_aid_out_of_province,
            sorted(policy.wholly_self_paid_no_account) or None,
            sorted(policy.wholly_self_paid_no_mutual_aid) or None,
            *_wallet_columns(policy.wallet),
            None if policy.wallet_order == DEFAULT_WALLET_ORDER else policy.wallet_order.value,
        )
        assert row is not None
        return _row(row)


async def list_all(pool: asyncpg.Pool, limit: int) -> list[PolicyRow]:
    return [_row(r) for r in await db.fetch(pool, _LIST, limit)]
