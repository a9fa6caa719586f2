"""The metrics an SRE watches, read from the process's registry after real calls through the server."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest
from support import INSTITUTION_A, STATEMENT_CACHE_SIZE, Api, account_row_held, bearer, refused

from gongji import metrics
from gongji.api import settlement
from gongji.store import db, settlements
from gongji.v1 import settlement_pb2

pytestmark = pytest.mark.usefixtures("books")

S = grpc.StatusCode
SETTLE = {"grpc_type": "unary", "grpc_service": "gongji.v1.SettlementService", "grpc_method": "Settle"}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def handled(code: str) -> float:
    return value("grpc_server_handled_total", **SETTLE, grpc_code=code)


async def _until(predicate: object, what: str) -> None:
    """Wait, bounded in count (at most 10 s), for something the server does after the client returns."""
    for _ in range(200):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def _settle_waits_for_a_lock(pool: asyncpg.Pool) -> None:
    async def waiting() -> bool:
        n = await pool.fetchval(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
            " and query like '%gongji_settle(%' and pid <> pg_backend_pid()"
        )
        return bool(n)

    for _ in range(200):  # bounded: at most 10 s for the settlement to reach the held row
        if await waiting():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the settlement never waited for the held row lock")


async def _family(api: Api) -> tuple[str, str]:
    authorizer = await api.enroll(balance_fen=1_000)
    patient = await api.enroll(balance_fen=100)
    await api.grant(authorizer, patient)
    return authorizer, patient


@pytest.mark.parametrize(("cut_off_by", "code"), [("deadline", "DEADLINE_EXCEEDED"), ("client_cancel", "CANCELLED")])
async def test_a_call_cut_off_behind_a_lock_is_counted_with_its_code(
    api: Api, pool: asyncpg.Pool, cut_off_by: str, code: str
) -> None:
    authorizer, patient = await _family(api)
    voucher = await api.voucher(patient)
    before = {c: handled(c) for c in ("OK", "CANCELLED", "DEADLINE_EXCEEDED")}
    started = value("grpc_server_started_total", **SETTLE)
    latencies = value("grpc_server_handling_seconds_count", **SETTLE)
    async with account_row_held(pool, authorizer):
        if cut_off_by == "deadline":
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.settle(patient, 500, voucher=voucher, deadline_s=1.0)
            assert caught.value.code() == S.DEADLINE_EXCEEDED
        else:
            call = api.settlement.Settle(
                settlement_pb2.SettleRequest(
                    request_id=f"m-{uuid.uuid4()}", voucher=voucher, patient_id=patient, amount_fen=500
                ),
                metadata=bearer(api.tokens.terminal_a),
            )
            await _settle_waits_for_a_lock(pool)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        await _until(lambda: handled(code) > before[code], f"{code} counted")
    assert handled(code) == before[code] + 1
    other = {c for c in before if c != code}
    assert {c: handled(c) for c in other} == {c: before[c] for c in other}, "counted once, under its own code"
    assert value("grpc_server_started_total", **SETTLE) == started + 1
    assert value("grpc_server_handling_seconds_count", **SETTLE) == latencies + 1


async def test_lock_wait_and_transaction_time_are_observed(api: Api, pool: asyncpg.Pool) -> None:
    authorizer, patient = await _family(api)
    voucher = await api.voucher(patient)
    counts = {lock: value("gongji_settle_lock_wait_seconds_count", lock=lock) for lock in metrics.LOCK_KINDS}
    waited = value("gongji_settle_lock_wait_seconds_sum", lock="account")
    transactions = value("gongji_settle_transaction_seconds_count")
    async with account_row_held(pool, authorizer):
        settling = asyncio.ensure_future(api.settle(patient, 500, voucher=voucher))
        await _settle_waits_for_a_lock(pool)
    assert (await settling).settlement.acct_mulaid_pay_fen == 400
    assert {lock: value("gongji_settle_lock_wait_seconds_count", lock=lock) - counts[lock] for lock in counts} == {
        lock: 1 for lock in counts
    }
    # The settlement was seen waiting for the held row, so its measured wait is more than nothing.
    assert value("gongji_settle_lock_wait_seconds_sum", lock="account") > waited
    assert value("gongji_settle_transaction_seconds_count") == transactions + 1


async def test_what_a_settle_that_raised_measured_is_recorded() -> None:
    """The store measures and the servicer records, also for a Settle whose every run found a stale
    peek and raised: its connection wait and all its retries count, no transaction time, no lock wait."""
    counts = {lock: value("gongji_settle_lock_wait_seconds_count", lock=lock) for lock in metrics.LOCK_KINDS}
    waits, retries = value("gongji_db_pool_acquire_seconds_count"), value("gongji_settle_retries_total")
    transactions = value("gongji_settle_transaction_seconds_count")
    raised = settlements.SettleTiming(pool_wait_s=0.001, retries=settlements.SETTLE_ATTEMPTS_MAX)
    settlement._observe_settle_timing(raised)
    assert value("gongji_db_pool_acquire_seconds_count") == waits + 1
    assert value("gongji_settle_retries_total") == retries + settlements.SETTLE_ATTEMPTS_MAX
    assert value("gongji_settle_transaction_seconds_count") == transactions
    assert {lock: value("gongji_settle_lock_wait_seconds_count", lock=lock) for lock in counts} == counts


async def test_voucher_refusals_real_name_mismatches_and_replays(api: Api) -> None:
    someone = await api.enroll(balance_fen=1_000)
    patient = await api.enroll(balance_fen=1_000)
    mismatch = value("gongji_real_name_mismatches_total", institution=INSTITUTION_A)
    refusals = value("gongji_voucher_refusals_total", method="Settle", reason="VOUCHER_PATIENT_MISMATCH")
    invalid = value("gongji_voucher_refusals_total", method="Quote", reason="VOUCHER_INVALID")
    replays = value("gongji_idempotent_replays_total", method="Settle")
    credit_replays = value("gongji_idempotent_replays_total", method="Credit")

    # Someone else's e-voucher presented for the patient: the real-name rule refuses it.
    await refused(
        api.settle(patient, 100, voucher=await api.voucher(someone)), S.PERMISSION_DENIED, "VOUCHER_PATIENT_MISMATCH"
    )
    forged = settlement_pb2.QuoteRequest(voucher="GJ1.k1.AAAA.BBBB", patient_id=patient, amount_fen=100)
    await refused(
        api.settlement.Quote(forged, metadata=bearer(api.tokens.terminal_a)), S.FAILED_PRECONDITION, "VOUCHER_INVALID"
    )
    request_id = f"m-{uuid.uuid4()}"
    voucher = await api.voucher(patient)
    assert not (await api.settle(patient, 100, voucher=voucher, request_id=request_id)).replayed
    assert (await api.settle(patient, 100, voucher=voucher, request_id=request_id)).replayed
    credit_id = f"m-{uuid.uuid4()}"
    await api.credit(patient, 50, request_id=credit_id)
    await api.credit(patient, 50, request_id=credit_id)

    assert value("gongji_real_name_mismatches_total", institution=INSTITUTION_A) == mismatch + 1
    assert value("gongji_voucher_refusals_total", method="Settle", reason="VOUCHER_PATIENT_MISMATCH") == refusals + 1
    assert value("gongji_voucher_refusals_total", method="Quote", reason="VOUCHER_INVALID") == invalid + 1
    assert value("gongji_idempotent_replays_total", method="Settle") == replays + 1
    assert value("gongji_idempotent_replays_total", method="Credit") == credit_replays + 1

    exposition = generate_latest(REGISTRY).decode()
    for person in (someone, patient):
        assert person not in exposition, "no ID number in any label"


async def test_pool_gauges_are_read_at_scrape_time(db_url: str, server_pool: asyncpg.Pool) -> None:
    """A pool of one with its connection lent out and a caller waiting for it."""
    small = await db.create_pool(
        db_url, min_size=1, max_size=1, command_timeout_s=30, statement_cache_size=STATEMENT_CACHE_SIZE
    )
    metrics.watch_pool(small)
    try:
        async with small.acquire():
            waiter = asyncio.ensure_future(small.fetchval("select 1"))
            await _until(lambda: value("gongji_db_pool_waiting") == 1, "a caller waits for the pool")
            assert value("gongji_db_pool_connections_in_use") == 1
            assert value("gongji_db_pool_max_connections") == 1
        assert await waiter == 1
        assert value("gongji_db_pool_waiting") == 0
        assert value("gongji_db_pool_connections_in_use") == 0
    finally:
        metrics.watch_pool(server_pool)
        await small.close()
    assert value("gongji_db_pool_max_connections") == server_pool.get_max_size()


async def test_argument_refusals_are_settle_outcomes_and_every_series_exists_before_its_first_event(
    api: Api,
) -> None:
    patient = await api.enroll(balance_fen=100)
    before = value("gongji_settlements_total", outcome="INVALID_AMOUNT")
    await refused(api.settle(patient, -1), S.INVALID_ARGUMENT, "INVALID_AMOUNT")
    assert value("gongji_settlements_total", outcome="INVALID_AMOUNT") == before + 1

    # Codes no test provokes, and a limit no test reaches through this method: there, at 0.
    report = {"grpc_type": "unary", "grpc_service": "gongji.v1.AccountService", "grpc_method": "ReportPremiums"}
    assert REGISTRY.get_sample_value("grpc_server_handled_total", report | {"grpc_code": "DATA_LOSS"}) == 0.0
    assert REGISTRY.get_sample_value("grpc_server_started_total", report) is not None
    assert REGISTRY.get_sample_value("gongji_edge_refusals_total", {"reason": "REQUEST_MESSAGE_TIMEOUT"}) is not None
    assert REGISTRY.get_sample_value("gongji_real_name_mismatches_total", {"institution": INSTITUTION_A}) is not None
