"""Where care happens (异地就医): every settlement records the patient's insured region and the
institution's, and region policy decides whether mutual aid pays for care away from home. Real
server, real PostgreSQL. The terminals of the suite are at H61010300101 and H61010300202, so in 610100."""

from __future__ import annotations

import datetime as dt

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY
from support import RESIDENT, Api, bearer

from gongji.api.validate import china_today
from gongji.store import credentials
from gongji.store.credentials import Kind
from gongji.v1 import settlement_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
LOCAL, IN_PROVINCE, OTHER_PROVINCE = (
    types_pb2.CARE_SCOPE_LOCAL,
    types_pb2.CARE_SCOPE_OUT_OF_REGION,
    types_pb2.CARE_SCOPE_OUT_OF_PROVINCE,
)
SPOUSE = [types_pb2.RELATIONSHIP_SPOUSE, types_pb2.RELATIONSHIP_CHILD]


async def _family(api: Api, region: str, own_fen: int = 100) -> tuple[str, str]:
    authorizer = await api.enroll(region=region, balance_fen=10_000)
    patient = await api.enroll(region=region, balance_fen=own_fen)
    await api.grant(authorizer, patient)
    return patient, authorizer


async def test_a_settlement_records_where_care_happened(api: Api) -> None:
    for region, scope in (("610100", LOCAL), ("610200", IN_PROVINCE), ("450100", OTHER_PROVINCE)):
        patient, _ = await _family(api, region)
        s = (await api.settle(patient, 500)).settlement
        assert (s.insured_region, s.care_region, s.care_scope) == (region, "610100", scope)
        # The national default: mutual aid pays for care away from home too.
        assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (100, 400, 0)
        q = await api.quote(patient, 500)
        assert (q.care_region, q.care_scope) == ("610100", scope)


async def test_a_region_may_keep_mutual_aid_home(api: Api, pool: asyncpg.Pool) -> None:
    """Kunming (530100) keeps mutual aid from paying for care in other provinces; Tongchuan (610200) for
    care in its province's other 统筹区. The patient's own account pays either way. (Policies of 统筹区 no
    other test uses, removed after.)"""
    await api.set_policy("530100", types_pb2.GRANT_SCOPE_PROVINCE, SPOUSE, mutual_aid_out_of_province=False)
    away, authorizer = await _family(api, "530100")
    s = (await api.settle(away, 500)).settlement
    assert (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (100, 0, 400)
    assert s.mutual_aid_limited_by == types_pb2.MUTUAL_AID_LIMIT_CARE_REGION
    assert await api.balance(authorizer) == 10_000
    # A named authorizer is not an error: mutual aid just does not pay here.
    s = (await api.settle(away, 50, authorizer_id=authorizer)).settlement
    assert (s.acct_mulaid_pay_fen, s.psn_cash_pay_fen) == (0, 50)
    q = await api.quote(away, 500)
    assert (q.acct_mulaid_pay_fen, q.mutual_aid_limited_by) == (0, types_pb2.MUTUAL_AID_LIMIT_CARE_REGION)
    # Without a grant there is nothing the region held back.
    alone = await api.enroll(region="530100", scheme=RESIDENT)
    assert (await api.settle(alone, 500)).settlement.mutual_aid_limited_by == types_pb2.MUTUAL_AID_LIMIT_UNSPECIFIED

    policy = await api.set_policy("610200", types_pb2.GRANT_SCOPE_PROVINCE, SPOUSE, mutual_aid_out_of_region=False)
    assert (policy.policy.mutual_aid_out_of_region, policy.policy.mutual_aid_out_of_province) == (False, True)
    tongchuan, _ = await _family(api, "610200")
    s = (await api.settle(tongchuan, 500)).settlement
    assert (s.acct_mulaid_pay_fen, s.care_scope) == (0, IN_PROVINCE)
    xian, _ = await _family(api, "610100")
    s = (await api.settle(xian, 500)).settlement
    assert (s.acct_mulaid_pay_fen, s.care_scope) == (400, LOCAL)  # at home it pays
    await pool.execute("delete from region_policy where region_key in ('530100', '610200')")


async def test_an_institution_may_be_given_its_region(api: Api, pool: asyncpg.Pool) -> None:
    """An institution id that is not a national code has no region of its own: its care counts as local
    until an operator gives it one."""
    token = await credentials.create(pool, Kind.TERMINAL, "care", institution_id="CLINICX", terminal_id="POS-1")
    patient, _ = await _family(api, "450100")
    s = (await api.settle(patient, 100, token=token)).settlement
    assert (s.care_region, s.care_scope) == ("", LOCAL)
    await credentials.create(
        pool, Kind.TERMINAL, "care 2", institution_id="CLINICX", terminal_id="POS-2", institution_region="440300"
    )
    s = (await api.settle(patient, 100, token=token)).settlement
    assert (s.care_region, s.care_scope) == ("440300", OTHER_PROVINCE)


async def test_reconcile_and_metrics_split_by_care(api: Api) -> None:
    day = china_today().isoformat()
    request = settlement_pb2.ReconcileRequest(date=day)

    async def totals() -> dict[int, tuple[int, int]]:
        reply = await api.settlement.Reconcile(request, metadata=bearer(api.tokens.terminal_a))
        assert sum(t.settlement_count for t in reply.care_totals) == reply.settlement_count
        return {t.care_scope: (t.settlement_count, t.amount_fen) for t in reply.care_totals}

    def counted(scope: str) -> float:
        return REGISTRY.get_sample_value("gongji_settlements_by_care_total", {"care_scope": scope}) or 0.0

    before, metric_before = await totals(), {s: counted(s) for s in ("LOCAL", "OUT_OF_PROVINCE")}
    home, _ = await _family(api, "610100")
    away, _ = await _family(api, "450100")
    await api.settle(home, 300)
    await api.settle(away, 700)
    await api.settle(away, 11)
    after = await totals()
    for scope, (count, amount) in ((LOCAL, (1, 300)), (OTHER_PROVINCE, (2, 711))):
        was = before.get(scope, (0, 0))
        assert (after[scope][0] - was[0], after[scope][1] - was[1]) == (count, amount)
    assert counted("LOCAL") - metric_before["LOCAL"] == 1
    assert counted("OUT_OF_PROVINCE") - metric_before["OUT_OF_PROVINCE"] == 2
    assert dt.date.fromisoformat(day)  # the day reconciled is China's
