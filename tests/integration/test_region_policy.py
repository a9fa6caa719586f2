"""Region grant policy is data: an operator sets scope and allowed relationships per province or 统筹区.

These tests use Guangxi (45) and Hainan (46), which no other test uses, so the default policy the
other tests rely on stays in force for their regions.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import grpc
import pytest
from support import ACTIVE, RESIDENT, Api, bearer, field_violations, refused

from gongji.v1 import account_pb2, types_pb2

pytestmark = pytest.mark.usefixtures("books")
S = grpc.StatusCode
SPOUSE, PARENT, CHILD, SIBLING, GRANDPARENT, GRANDCHILD = (
    types_pb2.RELATIONSHIP_SPOUSE,
    types_pb2.RELATIONSHIP_PARENT,
    types_pb2.RELATIONSHIP_CHILD,
    types_pb2.RELATIONSHIP_SIBLING,
    types_pb2.RELATIONSHIP_GRANDPARENT,
    types_pb2.RELATIONSHIP_GRANDCHILD,
)
REGION, PROVINCE, NATIONAL = (
    types_pb2.GRANT_SCOPE_REGION,
    types_pb2.GRANT_SCOPE_PROVINCE,
    types_pb2.GRANT_SCOPE_NATIONAL,
)
OLD = dt.date(1950, 1, 1)
YOUNG = dt.date(2012, 1, 1)


@pytest.fixture(scope="module", autouse=True)
async def policies(api: Api) -> None:
    # Guangxi: close relatives allowed, nationwide. Hainan keeps the default except Sanya (460200),
    # which is limited to its own 统筹区.
    await api.set_policy("45", NATIONAL, [SPOUSE, PARENT, CHILD, SIBLING, GRANDCHILD])
    await api.set_policy("460200", REGION, [SPOUSE, PARENT, CHILD])


async def test_two_regions_two_policies(api: Api) -> None:
    nanning = await api.enroll(region="450100", birth=OLD)
    haikou = await api.enroll(region="460100", birth=OLD)
    sibling_in_xian = await api.enroll(region="610100", birth=OLD, scheme=RESIDENT)
    grandchild = await api.enroll(region="460100", birth=YOUNG, scheme=RESIDENT)
    # Guangxi's authorizer may grant a sibling in another province...
    g = (await api.grant(nanning, sibling_in_xian, SIBLING)).grant
    assert g.status == types_pb2.GRANT_STATUS_LIVE
    assert (await api.grant(nanning, grandchild, GRANDCHILD)).grant.status == types_pb2.GRANT_STATUS_LIVE
    # ...Hainan's (the default policy: the close relatives, within the province) may grant a sibling, but
    # no one outside the province; Sanya's own policy (the 2023 set) allows no sibling.
    haikou_sibling = await api.enroll(region="460100", birth=OLD, scheme=RESIDENT)
    assert (await api.grant(haikou, haikou_sibling, SIBLING)).grant.status == types_pb2.GRANT_STATUS_LIVE
    await refused(api.grant(haikou, sibling_in_xian, SPOUSE), S.FAILED_PRECONDITION, "REGION_OUT_OF_SCOPE")
    sanya = await api.enroll(region="460200", birth=OLD)
    await refused(
        api.grant(sanya, await api.enroll(region="460200", birth=OLD, scheme=RESIDENT), SIBLING),
        S.FAILED_PRECONDITION,
        "RELATIONSHIP_NOT_ALLOWED",
    )


async def test_a_regions_own_policy_wins_over_its_provinces(api: Api) -> None:
    sanya = await api.enroll(region="460200", birth=OLD)
    haikou_child = await api.enroll(region="460100", birth=YOUNG, scheme=RESIDENT)
    sanya_child = await api.enroll(region="460200", birth=YOUNG, scheme=RESIDENT)
    await refused(api.grant(sanya, haikou_child, CHILD), S.FAILED_PRECONDITION, "REGION_OUT_OF_SCOPE")
    assert (await api.grant(sanya, sanya_child, CHILD)).grant.status == types_pb2.GRANT_STATUS_LIVE


async def test_in_laws_and_others_are_refused_whatever_the_policy(api: Api) -> None:
    error = await refused(
        api.set_policy("45", NATIONAL, [SPOUSE, types_pb2.RELATIONSHIP_PARENT_IN_LAW]),
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert field_violations(error) == ["policy.allowed_relationships"]
    nanning = await api.enroll(region="450100", birth=OLD)
    in_law = await api.enroll(region="450100", birth=OLD, scheme=RESIDENT)
    for relationship in (types_pb2.RELATIONSHIP_PARENT_IN_LAW, types_pb2.RELATIONSHIP_OTHER):
        await refused(api.grant(nanning, in_law, relationship), S.FAILED_PRECONDITION, "RELATIONSHIP_NOT_ALLOWED")


async def test_bad_policies_are_named(api: Api) -> None:
    error = await refused(api.set_policy("4", 0, []), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {"policy.region_key", "policy.scope", "policy.allowed_relationships"}


async def test_list_policies_and_the_default(api: Api) -> None:
    reply = await api.account.ListRegionPolicies(
        account_pb2.ListRegionPoliciesRequest(), metadata=bearer(api.tokens.operator)
    )
    by_key = {p.region_key: p for p in reply.policies}
    assert by_key["45"].scope == NATIONAL
    assert SIBLING in by_key["45"].allowed_relationships
    assert by_key["460200"].scope == REGION
    assert reply.default_policy.scope == PROVINCE
    # The close relatives of 2024 are the default: grandparents and grandchildren, siblings included.
    assert set(reply.default_policy.allowed_relationships) == {SPOUSE, PARENT, CHILD, SIBLING, GRANDPARENT, GRANDCHILD}


async def test_moving_out_of_scope_ends_grants_by_the_authorizers_policy(api: Api) -> None:
    nanning = await api.enroll(region="450100", birth=OLD)
    haikou = await api.enroll(region="460100", birth=OLD)
    mover_a = await api.enroll(region="450100", birth=YOUNG, scheme=RESIDENT)
    mover_b = await api.enroll(region="460100", birth=YOUNG, scheme=RESIDENT)
    await api.grant(nanning, mover_a, CHILD)
    await api.grant(haikou, mover_b, CHILD)
    # Guangxi grants are national: moving to Xi'an keeps it. Hainan's are provincial: it ends.
    kept = await api.set_status(mover_a, ACTIVE, scheme=RESIDENT, region="610100")
    ended = await api.set_status(mover_b, ACTIVE, scheme=RESIDENT, region="610100")
    assert (kept.grants_ended, ended.grants_ended) == (0, 1)
    held = (await api.list_family(mover_b)).grants_held
    assert [(g.status, g.end_reason) for g in held] == [(types_pb2.GRANT_STATUS_ENDED, "REGION_OUT_OF_SCOPE")]


async def test_a_region_policy_beats_its_provinces_in_both_directions(api: Api) -> None:
    """Hunan (43) is national; Zhuzhou (430200) keeps to itself: the more specific entry wins."""
    await api.set_policy("43", NATIONAL, [SPOUSE, PARENT, CHILD])
    await api.set_policy("430200", REGION, [SPOUSE, PARENT, CHILD])
    changsha = await api.enroll(region="430100", birth=OLD)
    zhuzhou = await api.enroll(region="430200", birth=OLD)
    far_child = await api.enroll(region="610100", birth=YOUNG, scheme=RESIDENT)
    assert (await api.grant(changsha, far_child, CHILD)).grant.status == types_pb2.GRANT_STATUS_LIVE
    await refused(api.grant(zhuzhou, far_child, CHILD), S.FAILED_PRECONDITION, "REGION_OUT_OF_SCOPE")


async def test_a_grant_keeps_the_scope_it_was_made_under(api: Api) -> None:
    """Narrowing a policy does not end live grants, nor does an unrelated Enroll later."""
    await api.set_policy("42", NATIONAL, [SPOUSE, PARENT, CHILD])
    wuhan = await api.enroll(region="420100", birth=OLD, balance_fen=1_000)
    child = await api.enroll(region="610100", birth=YOUNG, scheme=RESIDENT)
    await api.grant(wuhan, child, CHILD)
    await api.set_policy("42", PROVINCE, [SPOUSE, PARENT, CHILD])
    assert (await api.set_status(child, ACTIVE, scheme=RESIDENT, region="610100")).grants_ended == 0
    assert (await api.set_status(child, ACTIVE, scheme=RESIDENT, region="440100")).grants_ended == 0
    assert (await api.settle(child, 300)).settlement.acct_mulaid_pay_fen == 300


async def test_many_bad_entries_still_get_a_clear_answer(api: Api) -> None:
    error = await refused(api.set_policy("45", NATIONAL, [99] * 200), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(field_violations(error)) == {"policy.allowed_relationships"}
    error = await refused(api.set_policy("610000", NATIONAL, [SPOUSE]), S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert field_violations(error) == ["policy.region_key"]


# ---- RegionPolicy.wallet: the limits on 医保钱包 transfers (tests/integration/test_wallet.py sends) ---
PUBLISHED_WALLET = account_pb2.WalletPolicy(
    relationships=sorted([SPOUSE, PARENT, CHILD, SIBLING, GRANDPARENT, GRANDCHILD]),
    scope=NATIONAL,
    sends_per_day=3,
    send_max_fen=200_000,
    quiet_from="22:00",
    quiet_until="06:00",
    expires_at="06:00",
)


async def test_the_wallet_policy_is_answered_whole_with_the_published_values(api: Api, pool: asyncpg.Pool) -> None:
    """Qinghai (63): a policy saying nothing of the wallet answers the published values; one saying some
    answers those and the published values for the rest; ListRegionPolicies answers the same."""
    try:
        reply = await api.set_policy("63", PROVINCE, [SPOUSE])
        assert reply.policy.wallet == PUBLISHED_WALLET
        wallet = account_pb2.WalletPolicy(
            relationships=[CHILD, SPOUSE, CHILD], scope=REGION, sends_per_day=0, quiet_from="23:59", expires_at="00:00"
        )
        reply = await api.set_policy("630100", PROVINCE, [SPOUSE], wallet=wallet)
        expected = account_pb2.WalletPolicy()
        expected.CopyFrom(PUBLISHED_WALLET)
        expected.relationships[:] = [SPOUSE, CHILD]
        expected.scope, expected.sends_per_day, expected.quiet_from, expected.expires_at = REGION, 0, "23:59", "00:00"
        assert reply.policy.wallet == expected
        listed = await api.account.ListRegionPolicies(
            account_pb2.ListRegionPoliciesRequest(), metadata=bearer(api.tokens.operator)
        )
        by_key = {p.region_key: p for p in listed.policies}
        assert (by_key["63"].wallet, by_key["630100"].wallet) == (PUBLISHED_WALLET, expected)
        assert listed.default_policy.wallet == PUBLISHED_WALLET
        # What a send reads (gongji_wallet_policy) is what was answered; the published values are stored
        # as null, so that a region that set none follows them.
        row = await pool.fetchrow("select * from gongji_wallet_policy('630100')")
        assert row is not None
        assert (row["scope"], row["sends_per_day"], row["quiet_from"], row["expires_at"]) == (
            "REGION", 0, dt.time(23, 59), dt.time(0, 0)
        )  # fmt: skip
        assert sorted(row["relationships"]) == ["CHILD", "SPOUSE"]
        stored = await pool.fetchrow("select * from region_policy where region_key = '630100'")
        assert stored is not None
        assert (stored["wallet_send_max_fen"], stored["wallet_quiet_until"]) == (None, None)
        # Set again without the wallet: the published values again.
        assert (await api.set_policy("630100", PROVINCE, [SPOUSE])).policy.wallet == PUBLISHED_WALLET
    finally:
        await pool.execute("delete from region_policy where region_key in ('63', '630100')")


_BAD_WALLETS: dict[str, account_pb2.WalletPolicy] = {
    "relationships": account_pb2.WalletPolicy(relationships=[types_pb2.RELATIONSHIP_PARENT_IN_LAW]),
    "relationships other": account_pb2.WalletPolicy(relationships=[SPOUSE, types_pb2.RELATIONSHIP_OTHER]),
    "relationships unknown": account_pb2.WalletPolicy(relationships=[99]),
    "relationships unspecified": account_pb2.WalletPolicy(relationships=[0]),
    "relationships too many": account_pb2.WalletPolicy(relationships=[SPOUSE] * 9),
    "scope": account_pb2.WalletPolicy(scope=7),
    "sends_per_day": account_pb2.WalletPolicy(sends_per_day=101),
    "sends_per_day negative": account_pb2.WalletPolicy(sends_per_day=-1),
    "send_max_fen": account_pb2.WalletPolicy(send_max_fen=0),
    "send_max_fen huge": account_pb2.WalletPolicy(send_max_fen=100_000_001),
    "quiet_from": account_pb2.WalletPolicy(quiet_from="24:00"),
    "quiet_until": account_pb2.WalletPolicy(quiet_until="6:00"),
    "expires_at": account_pb2.WalletPolicy(expires_at="06:00:00"),
    "expires_at letters": account_pb2.WalletPolicy(expires_at="６:００"),
}


@pytest.mark.parametrize("case", list(_BAD_WALLETS))
async def test_bad_wallet_limits_are_named_and_write_nothing(api: Api, pool: asyncpg.Pool, case: str) -> None:
    before = await pool.fetchval("select count(*) from region_policy where region_key = '63'")
    error = await refused(
        api.set_policy("63", PROVINCE, [SPOUSE], wallet=_BAD_WALLETS[case]), S.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert field_violations(error) == [f"policy.wallet.{case.split()[0]}"]
    assert await pool.fetchval("select count(*) from region_policy where region_key = '63'") == before == 0


async def test_the_wallet_limits_edges_are_accepted(api: Api, pool: asyncpg.Pool) -> None:
    try:
        for wallet in (
            account_pb2.WalletPolicy(sends_per_day=100, send_max_fen=100_000_000, quiet_from="23:59"),
            account_pb2.WalletPolicy(sends_per_day=0, send_max_fen=1, quiet_until="00:00", expires_at="23:59"),
            account_pb2.WalletPolicy(relationships=[*PUBLISHED_WALLET.relationships, SPOUSE, SPOUSE]),
        ):
            reply = await api.set_policy("63", PROVINCE, [SPOUSE], wallet=wallet)
            for name in ("sends_per_day", "send_max_fen", "quiet_from", "quiet_until", "expires_at"):
                if wallet.HasField(name) if name in ("sends_per_day", "send_max_fen") else getattr(wallet, name):
                    assert getattr(reply.policy.wallet, name) == getattr(wallet, name), name
    finally:
        await pool.execute("delete from region_policy where region_key = '63'")
