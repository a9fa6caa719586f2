"""The 医保钱包 at the till (issue 18): wallet money pays the patient's out-of-pocket costs at settlement,
where the patient's region policy places it (after the own account and before mutual aid by default);
refunds give it back, reversals and the reversal of a refund know it, reconciliation counts it. A real
server whose clock the test holds (the wallet is funded by transfers, which keep China's hours), and a
real PostgreSQL.

The region policies here are set for Guangxi (45), which no other test uses, and removed after.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from support import Api, bearer, cancel, refused, reverse
from wallet_support import Wallets, funded

from gongji.store import audit
from gongji.v1 import account_pb2, settlement_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
CHILD = types_pb2.RELATIONSHIP_CHILD
NANNING = "450100"


def sources(s: types_pb2.Settlement | settlement_pb2.QuoteResponse) -> tuple[int, int, int, int]:
    """What each source paid: own, wallet, mutual aid, cash."""
    return s.acct_pay_fen, s.wallet_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen


async def settle(api: Api, patient: str, amount_fen: int, **fields: Any) -> types_pb2.Settlement:
    reply = await api.settle(patient, amount_fen, **fields)
    return reply.settlement


async def wallet_entries(pool: asyncpg.Pool, person_id: str) -> list[tuple[str, int, int]]:
    rows = await pool.fetch(
        "select kind, amount_fen, balance_after_fen from wallet_entry where person_id = $1 order by entry_id",
        person_id,
    )
    return [(r["kind"], r["amount_fen"], r["balance_after_fen"]) for r in rows]


async def books_clean(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await audit.differences(conn) == []


@pytest.fixture
async def guangxi(pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await pool.execute("delete from region_policy where region_key in ('45', $1)", NANNING)


async def test_the_wallet_pays_after_the_own_account_and_before_mutual_aid(w: Wallets) -> None:
    """The default order: the own account, then the wallet, then the authorizer's account, then cash.
    The answer reports the wallet as its own source, with its balance after, and the wallet's entries
    show the payment."""
    patient, _ = await funded(w, 5_000, scheme=types_pb2.SCHEME_EMPLOYEE, own_fen=3_000)
    authorizer = await w.api.enroll(balance_fen=10_000)
    await w.api.grant(authorizer, patient)
    quoted = await w.api.quote(patient, 10_000)
    assert sources(quoted) == (3_000, 5_000, 2_000, 0)
    assert quoted.wallet_balc_fen == 0 and quoted.HasField("wallet_balc_fen")
    assert (await w.wallet(patient)).balance_fen == 5_000, "a quote moves nothing"

    s = await settle(w.api, patient, 10_000)
    assert sources(s) == (3_000, 5_000, 2_000, 0)
    assert (s.wallet_balc_fen, s.balc_fen, s.psn_acct_pay_fen) == (0, 0, 5_000)
    assert (s.wallet_parts.in_scope_fen, s.cash_parts.in_scope_fen) == (5_000, 0)
    assert (await w.wallet(patient)).balance_fen == 0
    assert await w.api.balance(authorizer) == 8_000
    assert (await wallet_entries(w.pool, patient))[-1] == ("SETTLEMENT", -5_000, 0)
    got = await w.api.settlement.GetSettlement(
        settlement_pb2.GetSettlementRequest(settlement_id=s.settlement_id), metadata=bearer(w.api.tokens.terminal_a)
    )
    assert sources(got.settlement) == sources(s) and got.settlement.wallet_balc_fen == 0
    await books_clean(w.pool)


async def test_a_resident_pays_from_the_wallet_and_the_rest_in_cash(w: Wallets) -> None:
    """A resident-insured patient has no personal account: the wallet is the first source."""
    patient, _ = await funded(w, 1_500)
    s = await settle(w.api, patient, 2_000)
    assert sources(s) == (0, 1_500, 0, 500)
    assert (s.balc_fen, s.wallet_balc_fen) == (0, 0)
    second = await settle(w.api, patient, 700)
    assert sources(second) == (0, 0, 0, 700), "an empty wallet pays nothing"
    assert second.wallet_balc_fen == 0
    await books_clean(w.pool)


async def test_no_wallet_reads_as_none_and_the_account_flag_keeps_the_wallet_out(w: Wallets) -> None:
    """A patient without a wallet has no wallet balance in the answer; a Settle that asks not to use the
    personal account leaves the wallet, which holds personal-account money, untouched."""
    plain = await w.api.enroll(balance_fen=1_000)
    s = await settle(w.api, plain, 600)
    assert sources(s) == (600, 0, 0, 0) and not s.HasField("wallet_balc_fen")
    patient, _ = await funded(w, 1_000)
    cash = await settle(w.api, patient, 400, use_personal_account=False)
    assert sources(cash) == (0, 0, 0, 400) and not cash.HasField("wallet_balc_fen")
    assert (await w.wallet(patient)).balance_fen == 1_000


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (account_pb2.WALLET_ORDER_BEFORE_ACCOUNT, (1_000, 3_000, 0, 0)),
        (account_pb2.WALLET_ORDER_AFTER_ACCOUNT, (2_000, 2_000, 0, 0)),
        (account_pb2.WALLET_ORDER_AFTER_MUTUAL_AID, (2_000, 0, 2_000, 0)),
    ],
)
@pytest.mark.usefixtures("guangxi")
async def test_the_region_policy_places_the_wallet(w: Wallets, order: int, expected: tuple[int, int, int, int]) -> None:
    """Where the wallet pays is the patient's region policy; the policy answers it as it applies."""
    policy = await w.api.set_policy(
        NANNING, types_pb2.GRANT_SCOPE_PROVINCE, [types_pb2.RELATIONSHIP_SPOUSE], wallet_order=order
    )
    assert policy.policy.wallet_order == order
    patient, _ = await funded(w, 3_000, scheme=types_pb2.SCHEME_EMPLOYEE, own_fen=2_000, region=NANNING)
    authorizer = await w.api.enroll(region=NANNING, balance_fen=10_000)
    await w.api.grant(authorizer, patient)
    s = await settle(w.api, patient, 4_000)
    assert sources(s) == expected
    await books_clean(w.pool)


@pytest.mark.usefixtures("guangxi")
async def test_an_unset_wallet_order_reads_as_the_default(w: Wallets) -> None:
    reply = await w.api.set_policy(NANNING, types_pb2.GRANT_SCOPE_PROVINCE, [types_pb2.RELATIONSHIP_SPOUSE])
    assert reply.policy.wallet_order == account_pb2.WALLET_ORDER_AFTER_ACCOUNT
    await refused(
        w.api.set_policy(NANNING, types_pb2.GRANT_SCOPE_PROVINCE, [types_pb2.RELATIONSHIP_SPOUSE], wallet_order=99),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_a_refund_gives_cash_then_mutual_aid_then_the_wallet_then_the_own_account(w: Wallets) -> None:
    """Refunds return last drawn first: cash, the authorizer's, the wallet, the own account; each part in
    the wallet's entries, and the books explain every balance after each step."""
    patient, _ = await funded(w, 1_000, scheme=types_pb2.SCHEME_EMPLOYEE, own_fen=1_000)
    authorizer = await w.api.enroll(balance_fen=1_000)
    await w.api.grant(authorizer, patient)
    s = await settle(w.api, patient, 3_500)
    assert sources(s) == (1_000, 1_000, 1_000, 500)
    first = (await cancel(w.api, s.settlement_id, 1_800)).refund
    assert (first.psn_cash_pay_fen, first.acct_mulaid_pay_fen, first.wallet_pay_fen, first.acct_pay_fen) == (
        500,
        1_000,
        300,
        0,
    )
    assert (await w.wallet(patient)).balance_fen == 300
    rest = (await cancel(w.api, s.settlement_id, 0)).refund
    assert (rest.wallet_pay_fen, rest.acct_pay_fen) == (700, 1_000)
    assert (await w.wallet(patient)).balance_fen == 1_000
    assert [e[0] for e in await wallet_entries(w.pool, patient)][-3:] == ["SETTLEMENT", "REFUND", "REFUND"]
    await books_clean(w.pool)


async def test_reversals_know_the_wallet(w: Wallets) -> None:
    """A reversal (2601) gives the wallet back its part; the reversal of a refund takes the wallet's
    part back, and is refused while the wallet has spent it, writing nothing."""
    patient, _ = await funded(w, 2_000)
    s = await settle(w.api, patient, 1_500, request_id="wallet-rev-1")
    assert sources(s) == (0, 1_500, 0, 0)
    undone = await reverse(w.api, "wallet-rev-1")
    assert undone.undone and undone.settlement.refunds[0].wallet_pay_fen == 1_500
    assert (await w.wallet(patient)).balance_fen == 2_000
    assert (await wallet_entries(w.pool, patient))[-1] == ("REVERSAL", 1_500, 2_000)

    paid = await settle(w.api, patient, 1_200)
    refund = await cancel(w.api, paid.settlement_id, 1_200, request_id="wallet-cancel-1")
    assert refund.refund.wallet_pay_fen == 1_200
    spent = await settle(w.api, patient, 1_500)
    assert spent.wallet_pay_fen == 1_500 and spent.wallet_balc_fen == 500
    await refused(
        reverse(w.api, "wallet-cancel-1", kind=settlement_pb2.ORIGINAL_KIND_CANCEL),
        S.FAILED_PRECONDITION,
        "REFUND_ALREADY_SPENT",
    )
    assert (await w.wallet(patient)).balance_fen == 500
    await cancel(w.api, spent.settlement_id, 0)
    taken = await reverse(w.api, "wallet-cancel-1", kind=settlement_pb2.ORIGINAL_KIND_CANCEL)
    assert taken.undone and taken.refund.wallet_pay_fen == 1_200
    assert (await w.wallet(patient)).balance_fen == 800
    assert (await wallet_entries(w.pool, patient))[-1] == ("REFUND_REVERSAL", -1_200, 800)
    await books_clean(w.pool)


async def test_reconciliation_counts_the_wallet(w: Wallets) -> None:
    """The day's totals have the wallet's sums: settled, refunded, and taken back by a refund's reversal."""
    patient, _ = await funded(w, 1_000)
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()

    async def totals() -> settlement_pb2.ReconcileResponse:
        reply: settlement_pb2.ReconcileResponse = await w.api.settlement.Reconcile(
            settlement_pb2.ReconcileRequest(date=today), metadata=bearer(w.api.tokens.terminal_a)
        )
        return reply

    before = await totals()
    s = await settle(w.api, patient, 1_300)
    await cancel(w.api, s.settlement_id, 500)
    after = await totals()
    assert after.wallet_pay_fen - before.wallet_pay_fen == 1_000
    assert after.refund_wallet_pay_fen - before.refund_wallet_pay_fen == 200
    assert after.acct_pay_fen + after.acct_mulaid_pay_fen + after.wallet_pay_fen + after.psn_cash_pay_fen == (
        after.amount_fen
    )


async def test_settlements_racing_on_one_wallet_spend_it_once(w: Wallets) -> None:
    """Many settlements of one patient at once, and an accept into the wallet among them: each fen of the
    wallet pays once, its balance never goes below zero, and the books explain it."""
    patient, parent = await funded(w, 3_000)
    pending = await w.send(parent, patient, 1_000, relationship=CHILD)
    results = await asyncio.gather(
        *(settle(w.api, patient, 700) for _ in range(10)), w.accept(pending.transfer), return_exceptions=True
    )
    paid = [r for r in results if isinstance(r, types_pb2.Settlement)]
    assert len(paid) == 10, results
    wallet_paid = sum(s.wallet_pay_fen for s in paid)
    assert wallet_paid + (await w.wallet(patient)).balance_fen == 4_000
    assert sum(s.wallet_pay_fen + s.psn_cash_pay_fen for s in paid) == 7_000
    assert all(s.wallet_balc_fen >= 0 for s in paid)
    await books_clean(w.pool)


async def test_refunds_and_settlements_of_one_family_never_deadlock(w: Wallets) -> None:
    """A settlement of the wallet's owner with a grant takes the wallet before the accounts, as refunds
    do; a refund of one settlement racing another settlement of the same family never deadlocks."""
    patient, _ = await funded(w, 2_000, scheme=types_pb2.SCHEME_EMPLOYEE, own_fen=500)
    authorizer = await w.api.enroll(balance_fen=20_000)
    await w.api.grant(authorizer, patient)
    first = await settle(w.api, patient, 3_000)
    assert sources(first) == (500, 2_000, 500, 0)
    racing = await asyncio.gather(
        *(settle(w.api, patient, 300) for _ in range(5)),
        cancel(w.api, first.settlement_id, 2_800),
        *(settle(w.api, authorizer, 200) for _ in range(5)),
    )
    assert len(racing) == 11
    await books_clean(w.pool)
