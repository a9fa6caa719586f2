"""The bill as the national platform sends it: its parts, the kind of care (med_type) and the insurance
(insutype), and what a personal account may pay of each part (docs/domain.md, "The bill's parts").

A POS may send only the amount: it is read as one part within the policy scope (`Reading.AMOUNT`),
which the accounts may pay whole, as gongji has always settled it. A POS that sends the parts
(`Reading.PARTS`) has the wholly self-paid items (全自费) judged by the patient's region policy for the
kind of care: the accounts pay them, or the own account only, or cash does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gongji import errors
from gongji.domain.people import Scheme


class MedType(enum.StrEnum):
    """医疗类别 (med_type): the kinds of care gongji settles, by the platform's codes."""

    OUTPATIENT = "11"  # 普通门诊
    EMERGENCY = "13"  # 急诊
    CHRONIC_OUTPATIENT = "14"  # 门诊慢特病
    INPATIENT = "21"  # 普通住院
    PHARMACY = "41"  # 定点药店购药


class Insutype(enum.StrEnum):
    """险种类型 (insutype): the insurance a settlement is made under, by the platform's codes."""

    EMPLOYEE_BASIC = "310"  # 职工基本医疗保险
    RESIDENT_BASIC = "390"  # 城乡居民基本医疗保险


def insutype_of(scheme: Scheme) -> Insutype:
    """The insutype a patient of `scheme` settles under. The twin of `gongji_insutype`."""
    return Insutype.EMPLOYEE_BASIC if scheme is Scheme.EMPLOYEE else Insutype.RESIDENT_BASIC


def insutype_refusal(scheme: Scheme, insutype: Insutype | None) -> type[errors.InsutypeMismatch] | None:
    """Why a settlement under `insutype` (None: the terminal did not say) may not be made for a patient
    of `scheme`, or None. The twin of `gongji_insutype_refusal`."""
    return errors.InsutypeMismatch if insutype is not None and insutype is not insutype_of(scheme) else None


# 清算类别 (clr_type) of a settlement, as reconciliation (3201) groups it: outpatient care, inpatient
# care, pharmacy purchases; a settlement that did not say its med_type has none ("").
CLEARING_CLASS = {
    MedType.OUTPATIENT: "11",
    MedType.EMERGENCY: "11",
    MedType.CHRONIC_OUTPATIENT: "11",
    MedType.INPATIENT: "21",
    MedType.PHARMACY: "41",
}
CLEARING_CLASSES = frozenset({"", *CLEARING_CLASS.values()})


class Reading(enum.StrEnum):
    """How a settlement read its bill."""

    AMOUNT = "AMOUNT"  # only the amount: all of it within the policy scope, as before the parts
    PARTS = "PARTS"  # the parts the terminal sent


@dataclass(frozen=True, slots=True)
class Parts:
    """A bill's personal burden, or what one source paid of it, by part."""

    in_scope_fen: int = 0  # 政策范围内自付 (including 先行自付)
    over_limit_fen: int = 0  # 超限价自付 (overlmt_selfpay)
    wholly_self_paid_fen: int = 0  # 全自费 (fulamt_ownpay_amt)

    @property
    def fen(self) -> int:
        return self.in_scope_fen + self.over_limit_fen + self.wholly_self_paid_fen

    def __sub__(self, other: Parts) -> Parts:
        return Parts(
            self.in_scope_fen - other.in_scope_fen,
            self.over_limit_fen - other.over_limit_fen,
            self.wholly_self_paid_fen - other.wholly_self_paid_fen,
        )


NO_PARTS = Parts()


@dataclass(frozen=True, slots=True)
class WhollySelfPaid:
    """What may pay a kind of care's wholly self-paid items, by the patient's region policy: the
    personal account (the own account and mutual aid), and mutual aid. Mutual aid is personal-account
    money too: it never pays what the own account may not."""

    account: bool = True
    mutual_aid: bool = True

    def __post_init__(self) -> None:
        assert self.account or not self.mutual_aid, self


# What a region that says nothing allows: the accounts pay wholly self-paid items, as they paid a bill
# sent as its amount only. A POS that starts to send the parts does not change what a patient pays
# until the region says so.
ACCOUNTS_PAY = WhollySelfPaid()
