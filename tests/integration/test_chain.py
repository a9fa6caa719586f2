"""Books that prove their history (issue 19, part 1): each person's ledger and wallet entries form a hash
chain written with them, and `gongji audit --chain` (audit.chain_breaks) names the first entry that no
longer fits after someone with write access changed, deleted or reordered rows, balances adjusted or
not. Real server, real PostgreSQL; each forgery is made in a transaction rolled back afterwards, so the
shared books stay as the service wrote them.
"""

from __future__ import annotations

import asyncpg
import pytest
from support import Api

from gongji.store import audit

pytestmark = pytest.mark.usefixtures("books")


@pytest.fixture
async def family(api: Api) -> tuple[str, str]:
    """A patient whose own account paid four settlements, and an authorizer whose account paid part of
    the last by mutual aid."""
    patient = await api.enroll(balance_fen=1_000)
    authorizer = await api.enroll(balance_fen=5_000)
    await api.grant(authorizer, patient)
    for amount in (200, 300, 400):
        await api.settle(patient, amount)
    await api.settle(patient, 600)  # 100 left: mutual aid pays 500
    return patient, authorizer


async def entries(conn: asyncpg.Connection, person_id: str) -> list[int]:
    return [r["entry_id"] for r in await conn.fetch(
        "select entry_id from ledger_entry where person_id = $1 order by entry_id", person_id
    )]  # fmt: skip


def broken_at(found: list[str], person_id: str, entry_id: int, book: str = "ledger") -> bool:
    return f"{book} of {person_id}: the hash chain breaks at entry {entry_id}" in found


async def test_the_chains_the_service_writes_hold(family: tuple[str, str], pool: asyncpg.Pool) -> None:
    patient, authorizer = family
    async with pool.acquire() as conn:
        found = await audit.chain_breaks(conn)
    assert not [f for f in found if patient in f or authorizer in f], found


async def test_a_changed_amount_is_found_even_with_the_balance_adjusted(
    family: tuple[str, str], forger: asyncpg.Connection
) -> None:
    """A forger lowers what a settlement took from the account and books it as cash, giving the account
    the difference: balances, ledger and settlement tell one consistent story, so the plain audit is
    clean; the chain names the forged entry."""
    patient, _ = family
    first, second, *_ = await entries(forger, patient)
    await forger.execute("update ledger_entry set amount_fen = amount_fen + 100 where entry_id = $1", second)
    await forger.execute(
        "update ledger_entry set balance_after_fen = balance_after_fen + 100 where entry_id = any($1::bigint[])",
        [e for e in await entries(forger, patient) if e >= second],
    )
    await forger.execute("update account set balance_fen = balance_fen + 100 where person_id = $1", patient)
    await forger.execute(
        """update settlement s set acct_pay_fen = acct_pay_fen - 100, psn_cash_pay_fen = psn_cash_pay_fen + 100
            from ledger_entry l where l.entry_id = $1 and s.settlement_id = l.settlement_id""",
        second,
    )
    assert await audit.differences(forger) == [], "the plain audit sees a consistent story"
    found = await audit.chain_breaks(forger)
    assert broken_at(found, patient, second), found
    assert not broken_at(found, patient, first)


async def test_a_deleted_entry_breaks_the_chain_at_the_next(
    family: tuple[str, str], forger: asyncpg.Connection
) -> None:
    patient, _ = family
    ids = await entries(forger, patient)
    await forger.execute("delete from ledger_entry where entry_id = $1", ids[1])
    assert broken_at(await audit.chain_breaks(forger), patient, ids[2])


async def test_two_entries_swapped_are_found(family: tuple[str, str], forger: asyncpg.Connection) -> None:
    """Two entries' contents exchanged (the order of what happened rewritten): the first of them breaks."""
    patient, _ = family
    ids = await entries(forger, patient)
    a, b = ids[1], ids[2]
    await forger.execute(
        """update ledger_entry x set amount_fen = y.amount_fen, balance_after_fen = y.balance_after_fen,
                  settlement_id = y.settlement_id, created_at = y.created_at
             from ledger_entry y where (x.entry_id, y.entry_id) in (($1, $2), ($2, $1))""",
        a,
        b,
    )
    assert broken_at(await audit.chain_breaks(forger), patient, a)


async def test_a_forged_link_does_not_hide_a_forgery(family: tuple[str, str], forger: asyncpg.Connection) -> None:
    """A forger who also recomputes the forged entry's link, but not the links after it, is found at the
    next entry: each link commits to all before it."""
    patient, authorizer = family
    ids = await entries(forger, patient)
    await forger.execute("update ledger_entry set note = 'nothing to see' where entry_id = $1", ids[0])
    await forger.execute(
        "update ledger_entry set link = gongji_ledger_link(null, ledger_entry) where entry_id = $1", ids[0]
    )
    found = await audit.chain_breaks(forger)
    assert broken_at(found, patient, ids[1]) and not broken_at(found, patient, ids[0])
    aid = await entries(forger, authorizer)
    await forger.execute("update ledger_entry set counterpart_id = null where entry_id = $1", aid[-1])
    assert broken_at(await audit.chain_breaks(forger), authorizer, aid[-1])
