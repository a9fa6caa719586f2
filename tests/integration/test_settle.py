"""Quote and Settle through gRPC against the real server and database."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable

import asyncpg
import grpc
import pytest
from support import CHILD, RESIDENT, SUSPENDED, Api, bearer, field_violations, new_person_id, refused

from gongji import limits
from gongji.v1 import settlement_pb2

pytestmark = pytest.mark.usefixtures("books")

OK = grpc.StatusCode


async def test_worked_example_employee_spouse(api: Api) -> None:
    """小明 grants his wife 小丽 (employee): her own balance first, then 小明's, then cash."""
    xiaoming = await api.enroll(balance_fen=1_000)
    xiaoli = await api.enroll(balance_fen=2_000)
    await api.grant(xiaoming, xiaoli)

    first = (await api.settle(xiaoli, 1_500)).settlement
    assert (first.acct_pay_fen, first.acct_mulaid_pay_fen, first.psn_cash_pay_fen) == (1_500, 0, 0)
    assert first.authorizer_id == ""
    assert first.balc_fen == 500

    second = (await api.settle(xiaoli, 1_000)).settlement
    assert (second.acct_pay_fen, second.acct_mulaid_pay_fen, second.psn_cash_pay_fen) == (500, 500, 0)
    assert second.authorizer_id == xiaoming
    assert second.balc_fen == 0

    third = (await api.settle(xiaoli, 800)).settlement
    assert (third.acct_pay_fen, third.acct_mulaid_pay_fen, third.psn_cash_pay_fen) == (0, 500, 300)

    fourth = (await api.settle(xiaoli, 800)).settlement  # 小明's balance is 0: cash
    assert (fourth.acct_pay_fen, fourth.acct_mulaid_pay_fen, fourth.psn_cash_pay_fen) == (0, 0, 800)
    assert fourth.authorizer_id == ""
    assert (await api.balance(xiaoming), await api.balance(xiaoli)) == (0, 0)


async def test_worked_example_resident_spouse(api: Api) -> None:
    """小丽 is resident-insured: 小明's account is used directly, then cash."""
    xiaoming = await api.enroll(balance_fen=1_000)
    xiaoli = await api.enroll(scheme=RESIDENT)
    await api.grant(xiaoming, xiaoli)
    s = (await api.settle(xiaoli, 1_500)).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.balc_fen) == (0, 1_000, 500, 0)
    assert s.authorizer_id == xiaoming
    assert s.patient_id == xiaoli
    assert s.institution_id == "H61010300101"
    assert await api.balance(xiaoming) == 0


async def test_settlement_is_recorded_once_with_its_ledger(api: Api, pool: asyncpg.Pool) -> None:
    xiaoming = await api.enroll(balance_fen=5_000)
    xiaoli = await api.enroll(balance_fen=100)
    await api.grant(xiaoming, xiaoli)
    s = (await api.settle(xiaoli, 300)).settlement
    rows = await pool.fetch(
        "select person_id, amount_fen, kind, counterpart_id from ledger_entry where settlement_id = $1 order by kind",
        uuid.UUID(s.settlement_id),
    )
    assert [tuple(r) for r in rows] == [
        (xiaoming, -200, "MUTUAL_AID", xiaoli),
        (xiaoli, -100, "SETTLEMENT", None),
    ]


async def test_opting_out_of_the_personal_account_pays_cash(api: Api) -> None:
    parent = await api.enroll(balance_fen=1_000)
    patient = await api.enroll(balance_fen=1_000)
    await api.grant(parent, patient)
    s = (await api.settle(patient, 700, use_personal_account=False)).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (0, 0, 700)
    assert (await api.balance(parent), await api.balance(patient)) == (1_000, 1_000)


async def test_named_authorizer_and_oldest_grant(api: Api) -> None:
    mother = await api.enroll(balance_fen=1_000, birth=dt.date(1970, 1, 1))
    father = await api.enroll(balance_fen=1_000, birth=dt.date(1968, 1, 1))
    child = await api.enroll(scheme=RESIDENT, birth=dt.date(2015, 1, 1))
    await api.grant(mother, child, CHILD)
    await api.grant(father, child, CHILD)
    assert (await api.settle(child, 100)).settlement.authorizer_id == mother  # oldest live grant
    assert (await api.settle(child, 100, authorizer_id=father)).settlement.authorizer_id == father
    stranger = await api.enroll(balance_fen=1_000)
    await refused(api.settle(child, 100, authorizer_id=stranger), OK.FAILED_PRECONDITION, "GRANT_NOT_FOUND")
    assert (await api.balance(mother), await api.balance(father), await api.balance(stranger)) == (900, 900, 1_000)


async def test_quote_commits_nothing_and_leaves_the_voucher_usable(api: Api, pool: asyncpg.Pool) -> None:
    authorizer = await api.enroll(balance_fen=1_000)
    patient = await api.enroll(balance_fen=300)
    await api.grant(authorizer, patient)
    q = await api.quote(patient, 2_000)
    assert (q.acct_pay_fen, q.acct_mulaid_pay_fen, q.psn_cash_pay_fen, q.authorizer_id) == (300, 1_000, 700, authorizer)
    assert (await api.balance(authorizer), await api.balance(patient)) == (1_000, 300)
    voucher = await api.voucher(patient)
    await _quote(api, patient, voucher)
    s = (await api.settle(patient, 2_000, voucher=voucher)).settlement  # the quoted voucher still settles
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (300, 1_000, 700)


async def test_idempotent_replay_moves_nothing(api: Api) -> None:
    patient = await api.enroll(balance_fen=1_000)
    voucher = await api.voucher(patient)
    first = await api.settle(patient, 400, voucher=voucher, request_id="pos-replay-1")
    again = await api.settle(patient, 400, voucher=voucher, request_id="pos-replay-1")
    assert not first.replayed
    assert again.replayed
    assert again.settlement == first.settlement
    assert await api.balance(patient) == 600
    # A retry that rescanned a fresh voucher is the same request too.
    third = await api.settle(patient, 400, request_id="pos-replay-1")
    assert third.replayed
    assert third.settlement.settlement_id == first.settlement.settlement_id
    assert await api.balance(patient) == 600


async def test_retry_after_the_voucher_expired_still_replays(api: Api) -> None:
    """A POS that retries after the e-voucher's lifetime gets its original answer, not a refusal."""
    patient = await api.enroll(balance_fen=1_000)
    # Two seconds: a token's expiry is whole seconds from the second it was issued in, so a one-second
    # voucher may live only a few milliseconds (the first settle lost that race once, behind PgBouncer).
    voucher = await api.voucher(patient, ttl_seconds=2)
    first = await api.settle(patient, 400, voucher=voucher, request_id="pos-late-retry-1")
    await asyncio.sleep(2.1)  # past the expiry, which is at most two seconds after issuing
    again = await api.settle(patient, 400, voucher=voucher, request_id="pos-late-retry-1")
    assert again.replayed
    assert again.settlement == first.settlement
    await refused(api.settle(patient, 400, voucher=voucher), OK.FAILED_PRECONDITION, "VOUCHER_ALREADY_USED")
    assert await api.balance(patient) == 600


async def test_same_key_with_different_content_is_refused(api: Api) -> None:
    patient = await api.enroll(balance_fen=1_000)
    await api.settle(patient, 400, request_id="pos-reuse-1")
    await refused(api.settle(patient, 401, request_id="pos-reuse-1"), OK.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    await refused(
        api.settle(patient, 400, request_id="pos-reuse-1", use_personal_account=False),
        OK.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert await api.balance(patient) == 600


async def test_request_ids_are_per_institution(api: Api) -> None:
    patient = await api.enroll(balance_fen=1_000)
    a = await api.settle(patient, 100, request_id="pos-shared-1")
    b = await api.settle(patient, 100, request_id="pos-shared-1", token=api.tokens.terminal_b)
    assert not b.replayed
    assert a.settlement.settlement_id != b.settlement.settlement_id
    assert b.settlement.institution_id == "H61010300202"
    assert await api.balance(patient) == 800


async def test_real_name_rule(api: Api) -> None:
    """Presenting the authorizer's own voucher for a family member is refused (欺诈骗保)."""
    xiaoming = await api.enroll(balance_fen=1_000)
    xiaoli = await api.enroll(balance_fen=0)
    await api.grant(xiaoming, xiaoli)
    his_voucher = await api.voucher(xiaoming)
    await refused(api.settle(xiaoli, 500, voucher=his_voucher), OK.PERMISSION_DENIED, "VOUCHER_PATIENT_MISMATCH")
    await refused(_quote(api, xiaoli, his_voucher), OK.PERMISSION_DENIED, "VOUCHER_PATIENT_MISMATCH")
    assert await api.balance(xiaoming) == 1_000
    # His voucher is untouched by the refusal: he can still use it himself.
    assert (await api.settle(xiaoming, 100, voucher=his_voucher)).settlement.acct_pay_fen == 100


async def _quote(api: Api, patient: str, voucher: str) -> settlement_pb2.QuoteResponse:
    """A Quote with a given voucher (api.quote issues a fresh one)."""
    reply: settlement_pb2.QuoteResponse = await api.settlement.Quote(
        settlement_pb2.QuoteRequest(voucher=voucher, patient_id=patient, amount_fen=100),
        metadata=bearer(api.tokens.terminal_a),
    )
    return reply


async def test_voucher_refusals(api: Api) -> None:
    patient = await api.enroll(balance_fen=1_000)
    used = await api.voucher(patient)
    await api.settle(patient, 100, voucher=used)
    await refused(api.settle(patient, 100, voucher=used), OK.FAILED_PRECONDITION, "VOUCHER_ALREADY_USED")

    head, payload, mac = (await api.voucher(patient)).rsplit(".", 2)
    forged = f"{head}.{payload}.{'A' * len(mac)}"
    await refused(api.settle(patient, 100, voucher=forged), OK.FAILED_PRECONDITION, "VOUCHER_INVALID")
    await refused(api.settle(patient, 100, voucher="not-a-voucher"), OK.FAILED_PRECONDITION, "VOUCHER_INVALID")

    short_lived = await api.voucher(patient, ttl_seconds=1)
    await asyncio.sleep(2.1)
    await refused(api.settle(patient, 100, voucher=short_lived), OK.FAILED_PRECONDITION, "VOUCHER_EXPIRED")
    assert await api.balance(patient) == 900


async def test_unknown_and_inactive_patients(api: Api) -> None:
    ghost = new_person_id()
    patient = await api.enroll(balance_fen=1_000)
    voucher = await api.voucher(patient)
    await refused(api.settle(ghost, 100, voucher=voucher), OK.NOT_FOUND, "PERSON_NOT_FOUND")
    await api.set_status(patient, SUSPENDED)
    await refused(api.settle(patient, 100, voucher=voucher), OK.FAILED_PRECONDITION, "PERSON_NOT_ACTIVE")
    assert await api.balance(patient) == 1_000


@pytest.mark.parametrize("amount_fen", [0, -1, -(2**63), limits.AMOUNT_FEN_MAX + 1, 2**63 - 1])
async def test_bad_amounts_are_refused_and_write_nothing(api: Api, pool: asyncpg.Pool, amount_fen: int) -> None:
    patient = await api.enroll(balance_fen=1_000)
    before = await pool.fetchval("select count(*) from ledger_entry")
    error = await refused(api.settle(patient, amount_fen), OK.INVALID_ARGUMENT, "INVALID_AMOUNT")
    assert field_violations(error) == ["amount_fen"]
    assert await pool.fetchval("select count(*) from ledger_entry") == before
    assert await api.balance(patient) == 1_000


async def test_malformed_fields_are_named(api: Api) -> None:
    patient = await api.enroll(balance_fen=1_000)
    error = await refused(
        api.settle("not an id", 100, voucher="", request_id="bad id with spaces"),
        OK.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert set(field_violations(error)) == {"patient_id", "voucher", "request_id"}
    error = await refused(api.settle(patient, 100, authorizer_id=patient), OK.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["authorizer_id"]


async def test_balc_is_the_balance_after_even_when_the_account_is_not_used(api: Api) -> None:
    """Regression (found by the model-based test): a patient who opted out of the personal account
    (个人账户使用标志 off) was answered, and recorded, with balc_fen 0 as if the account were empty."""
    patient = await api.enroll(balance_fen=1_000)
    voucher = await api.voucher(patient)
    quote = await api.settlement.Quote(
        settlement_pb2.QuoteRequest(voucher=voucher, patient_id=patient, amount_fen=300, use_personal_account=False),
        metadata=bearer(api.tokens.terminal_a),
    )
    assert (quote.psn_cash_pay_fen, quote.balc_fen) == (300, 1_000)
    s = (await api.settle(patient, 300, voucher=voucher, use_personal_account=False)).settlement
    assert (s.acct_pay_fen, s.psn_cash_pay_fen, s.balc_fen) == (0, 300, 1_000)
    used = (await api.settle(patient, 300)).settlement
    assert (used.acct_pay_fen, used.balc_fen) == (300, 700)
    resident = await api.enroll(scheme=RESIDENT)
    assert (await api.settle(resident, 300, use_personal_account=False)).settlement.balc_fen == 0


async def test_a_settlement_is_one_statement(api: Api, server_pool: asyncpg.Pool) -> None:
    """Settle makes one database round trip, with grants and mutual aid in play, and its connection
    goes back to the pool without asyncpg's session reset (store/db.py, Connection): every statement the
    server's pool sends while the call runs is logged (asyncpg's query loggers, on every connection of
    the pool), and the only one is the call's own, bar the periodic ones should one fall in the window."""
    authorizer = await api.enroll(balance_fen=5_000)
    patient = await api.enroll(balance_fen=1_000)
    await api.grant(authorizer, patient)
    await api.settle(patient, 100)  # the terminal's credential is now cached, as in steady state
    voucher = await api.voucher(patient)
    sent: list[tuple[int, str]] = []  # (which connection, the query)
    loggers: dict[int, Callable[[asyncpg.connection.LoggedQuery], None]] = {}

    def logger(conn_id: int) -> Callable[[asyncpg.connection.LoggedQuery], None]:
        return loggers.setdefault(conn_id, lambda record: sent.append((conn_id, record.query)))

    async def on_every_connection(change: str) -> None:
        held = [await server_pool.acquire() for _ in range(server_pool.get_max_size())]
        for conn in held:
            getattr(conn, change)(logger(id(conn._con)))  # type: ignore[union-attr]
            await server_pool.release(conn)

    await on_every_connection("add_query_logger")
    try:
        await asyncio.sleep(0.1)  # loggers are called soon after, not during, a statement
        assert any("pg_advisory_unlock_all" in q for _, q in sent), "the loggers see a release's reset"
        sent.clear()
        s = (await api.settle(patient, 1_500, voucher=voucher)).settlement
        await asyncio.sleep(0.1)
        during = list(sent)
    finally:
        await on_every_connection("remove_query_logger")
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen) == (900, 600)
    # What the settlement's connection sent, up to its next borrower's first statement. Others may send
    # in the window too, on their own connections or on this one once it is back in the pool: the health
    # probe, the batched write of credentials' last use (once a minute) and the outbox's sequencer.
    settling = [c for c, q in during if "gongji_settle(" in q]
    assert len(settling) == 1, during
    own = []
    for c, q in during:
        if c != settling[0]:
            continue
        periodic = q.strip() == "select true" or "last_used_at" in q or "gongji_sequence_events" in q
        if own and (periodic or q.strip().upper().startswith("BEGIN")):
            break
        own.append(q)
    assert len(own) == 1, own  # no reset on release either
    assert "gongji_settle(" in own[0]
