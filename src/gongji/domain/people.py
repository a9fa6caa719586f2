"""Insured people, their schemes and statuses, relationships, and how their ID numbers are shown."""

from __future__ import annotations

import datetime as dt
import enum
import re
import unicodedata
from dataclasses import dataclass

from gongji import limits


class Scheme(enum.StrEnum):
    EMPLOYEE = "EMPLOYEE"  # 职工医保: has a personal account
    RESIDENT = "RESIDENT"  # 居民医保: has none


class PersonStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"  # 停保
    TERMINATED = "TERMINATED"  # 终止


class Relationship(enum.StrEnum):
    """Read from the requester's side: CHILD means the other person is the requester's child."""

    SPOUSE = "SPOUSE"
    PARENT = "PARENT"
    CHILD = "CHILD"
    SIBLING = "SIBLING"
    GRANDPARENT = "GRANDPARENT"
    GRANDCHILD = "GRANDCHILD"
    PARENT_IN_LAW = "PARENT_IN_LAW"
    OTHER = "OTHER"


# The close relatives (近亲属) whose costs and resident premium an employee's personal account may pay
# since 国办发〔2024〕38号, and who may receive 医保钱包 transfers since 2025: spouse, parents, children,
# siblings, grandparents and grandchildren, on the father's and the mother's side alike. What a region
# with no policy of its own allows.
CLOSE_RELATIVES = frozenset(
    {
        Relationship.SPOUSE,
        Relationship.PARENT,
        Relationship.CHILD,
        Relationship.SIBLING,
        Relationship.GRANDPARENT,
        Relationship.GRANDCHILD,
    }
)


class DocumentType(enum.StrEnum):
    RESIDENT_ID_CARD = "RESIDENT_ID_CARD"  # 居民身份证: its number is the person_id
    HK_MO_TW_RESIDENCE_PERMIT = "HK_MO_TW_RESIDENCE_PERMIT"
    FOREIGN_PERMANENT_RESIDENCE_ID = "FOREIGN_PERMANENT_RESIDENCE_ID"
    PASSPORT = "PASSPORT"
    BIRTH_CERTIFICATE = "BIRTH_CERTIFICATE"  # 出生医学证明, for babies without an ID card


@dataclass(frozen=True, slots=True)
class Person:
    person_id: str
    name: str
    birth_date: dt.date
    region_code: str
    scheme: Scheme
    status: PersonStatus
    document_type: DocumentType = DocumentType.RESIDENT_ID_CARD
    document_number: str | None = None  # None: the resident ID card whose number is person_id

    @property
    def document(self) -> tuple[DocumentType, str]:
        return self.document_type, self.document_number or self.person_id

    @property
    def province(self) -> str:
        return self.region_code[:2]

    @property
    def has_personal_account(self) -> bool:
        return self.scheme is Scheme.EMPLOYEE


_PERSON_ID = re.compile(r"[0-9A-Z]+")
_RESIDENT_ID = re.compile(r"[0-9]{17}[0-9X]")
_REGION_CODE = re.compile(r"[1-9][0-9]{5}")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def resident_id_check_char(first17: str) -> str:
    """The check character of an 18-character resident ID number (GB 11643)."""
    assert len(first17) == 17 and first17.isdigit(), "17 digits"
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def person_id_problem(person_id: str) -> str | None:
    """Why `person_id` is not a plausible social-security number, or None when it is.

    Numbers in the 18-character resident-ID shape must carry a valid check character, which catches
    typing errors at the counter; other shapes (foreigners' numbers) are only checked for their alphabet.
    """
    if not limits.PERSON_ID_LEN_MIN <= len(person_id) <= limits.PERSON_ID_LEN_MAX:
        return f"must be {limits.PERSON_ID_LEN_MIN} to {limits.PERSON_ID_LEN_MAX} characters"
    if not _PERSON_ID.fullmatch(person_id):
        return "must be digits and capital letters"
    if _RESIDENT_ID.fullmatch(person_id) and (expected := resident_id_check_char(person_id[:17])) != person_id[17]:
        # Saying the right one leaks nothing: it is computed from the 17 digits the caller sent.
        return f"the check character (GB 11643) of these 17 digits is {expected}, not {person_id[17]}"
    return None


def region_code_problem(region_code: str) -> str | None:
    if not _REGION_CODE.fullmatch(region_code):
        return "must be a 6-digit administrative-division code such as 610100"
    return None


def mask_id(person_id: str) -> str:
    """`610102199203154021` -> `6101**********4021`: safe for logs, metrics and other people's screens."""
    if len(person_id) <= 8:
        return "*" * len(person_id)
    return person_id[:4] + "*" * (len(person_id) - 8) + person_id[-4:]


_MIDDLE_DOTS = str.maketrans({c: "·" for c in "•‧・･∙⋅"})


def normalize_name(name: str) -> str:
    """A name as compared for identity: NFKC (full-width letters fold), trimmed, inner spaces
    collapsed, the middle dots of minority and foreign names unified, letters case-folded."""
    folded = unicodedata.normalize("NFKC", name).translate(_MIDDLE_DOTS)
    return " ".join(folded.split()).casefold()


def mask_name(name: str) -> str:
    """`王小明` -> `王*明`, `张伟` -> `张*`: as the app shows family members."""
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def age_on(birth_date: dt.date, day: dt.date) -> int:
    """Full years on `day`; a birthday on `day` counts."""
    before_birthday = (day.month, day.day) < (birth_date.month, birth_date.day)
    return day.year - birth_date.year - (1 if before_birthday else 0)
