"""Who may grant mutual aid to whom, without a database."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from gongji import errors
from gongji.domain.eligibility import (
    IMMEDIATE_FAMILY,
    HeldGrant,
    RegionPolicy,
    Scope,
    check_grant,
    in_scope,
    live_grant,
)
from gongji.domain.people import Person, PersonStatus, Relationship, Scheme

XIAOMING = Person("610113198805124033", "王小明", dt.date(1988, 5, 12), "610100", Scheme.EMPLOYEE, PersonStatus.ACTIVE)
XIAOLI = Person("61010219920315402X", "李小丽", dt.date(1992, 3, 15), "610100", Scheme.EMPLOYEE, PersonStatus.ACTIVE)
CHILD = Person("610113201909080017", "王小宝", dt.date(2019, 9, 8), "610100", Scheme.RESIDENT, PersonStatus.ACTIVE)


def test_close_relatives_are_allowed_by_default() -> None:
    check_grant(XIAOMING, XIAOLI, Relationship.SPOUSE)
    check_grant(XIAOMING, CHILD, Relationship.CHILD)
    older = dataclasses.replace(XIAOLI, birth_date=dt.date(1960, 1, 1))
    check_grant(XIAOMING, older, Relationship.PARENT)
    check_grant(XIAOMING, XIAOLI, Relationship.SIBLING)
    check_grant(XIAOMING, dataclasses.replace(XIAOLI, birth_date=dt.date(1940, 1, 1)), Relationship.GRANDPARENT)
    grandchild = dataclasses.replace(CHILD, birth_date=dt.date(2019, 9, 8))
    check_grant(dataclasses.replace(XIAOMING, birth_date=dt.date(1955, 1, 1)), grandchild, Relationship.GRANDCHILD)


def test_the_2023_set_narrows_the_default() -> None:
    narrow = RegionPolicy(allowed=IMMEDIATE_FAMILY)
    check_grant(XIAOMING, XIAOLI, Relationship.SPOUSE, narrow)
    for relationship in (Relationship.SIBLING, Relationship.GRANDPARENT):
        with pytest.raises(errors.RelationshipNotAllowed):
            check_grant(XIAOMING, dataclasses.replace(XIAOLI, birth_date=dt.date(1940, 1, 1)), relationship, narrow)


@pytest.mark.parametrize(
    ("grandparent_born", "plausible"),
    [(dt.date(1964, 5, 12), True), (dt.date(1964, 5, 13), False), (dt.date(1980, 1, 1), False)],
)
def test_a_grandparent_is_24_full_years_older(grandparent_born: dt.date, plausible: bool) -> None:
    """XIAOMING was born 1988-05-12: a grandparent born 1964-05-12 is 24 on that day, one born a day
    later only 23. Read from either side: the grandparent as beneficiary, or as authorizer."""
    grandparent = dataclasses.replace(XIAOLI, birth_date=grandparent_born)
    for authorizer, beneficiary, relationship in (
        (XIAOMING, grandparent, Relationship.GRANDPARENT),
        (grandparent, XIAOMING, Relationship.GRANDCHILD),
    ):
        if plausible:
            check_grant(authorizer, beneficiary, relationship)
        else:
            with pytest.raises(errors.RelationshipImplausible, match="at least 24 years older"):
                check_grant(authorizer, beneficiary, relationship)


@pytest.mark.parametrize(
    ("authorizer", "beneficiary", "relationship", "refusal"),
    [
        (
            dataclasses.replace(XIAOMING, status=PersonStatus.SUSPENDED),
            XIAOLI,
            Relationship.SPOUSE,
            errors.PersonNotActive,
        ),
        (dataclasses.replace(XIAOMING, scheme=Scheme.RESIDENT), XIAOLI, Relationship.SPOUSE, errors.NotEmployeeInsured),
        (
            XIAOMING,
            dataclasses.replace(XIAOLI, status=PersonStatus.TERMINATED),
            Relationship.SPOUSE,
            errors.BeneficiaryNotInsured,
        ),
        (
            XIAOMING,
            dataclasses.replace(XIAOLI, status=PersonStatus.SUSPENDED),
            Relationship.SPOUSE,
            errors.PersonNotActive,
        ),
        (XIAOMING, XIAOLI, Relationship.PARENT_IN_LAW, errors.RelationshipNotAllowed),
        (XIAOMING, XIAOLI, Relationship.OTHER, errors.RelationshipNotAllowed),
        (XIAOLI, XIAOMING, Relationship.CHILD, errors.RelationshipImplausible),
        (XIAOMING, CHILD, Relationship.PARENT, errors.RelationshipImplausible),
        (XIAOMING, dataclasses.replace(XIAOLI, region_code="440100"), Relationship.SPOUSE, errors.RegionOutOfScope),
    ],
)
def test_refusals(
    authorizer: Person, beneficiary: Person, relationship: Relationship, refusal: type[errors.GongjiError]
) -> None:
    with pytest.raises(refusal):
        check_grant(authorizer, beneficiary, relationship)


def test_region_policy_is_data() -> None:
    close = RegionPolicy(Scope.NATIONAL, frozenset({Relationship.SPOUSE, Relationship.SIBLING}))
    check_grant(XIAOMING, dataclasses.replace(XIAOLI, region_code="440100"), Relationship.SIBLING, close)
    with pytest.raises(errors.RelationshipNotAllowed):
        check_grant(XIAOMING, XIAOLI, Relationship.PARENT_IN_LAW, RegionPolicy(allowed=frozenset(Relationship)))


def test_scopes() -> None:
    assert in_scope("610100", "610300", Scope.PROVINCE)
    assert not in_scope("610100", "610300", Scope.REGION)
    assert not in_scope("610100", "440100", Scope.PROVINCE)
    assert in_scope("610100", "440100", Scope.NATIONAL)


def test_live_grant_is_the_named_one_else_the_oldest_usable() -> None:
    t = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    ok = (PersonStatus.ACTIVE, Scheme.EMPLOYEE)
    held = [
        HeldGrant(7, "a", "LIVE", t, *ok),
        HeldGrant(5, "b", "LIVE", t, *ok),  # same instant: the lower grant_id wins
        HeldGrant(3, "c", "REVOKED", t - dt.timedelta(days=1), *ok),
        HeldGrant(2, "d", "LIVE", t - dt.timedelta(days=1), PersonStatus.SUSPENDED, Scheme.EMPLOYEE),
        HeldGrant(1, "e", "LIVE", t - dt.timedelta(days=1), PersonStatus.ACTIVE, Scheme.RESIDENT),
    ]
    assert live_grant(held) == 5
    assert live_grant(held, "a") == 7
    assert live_grant(held, "c") is None
    assert live_grant(held, "d") is None
    assert live_grant([]) is None
