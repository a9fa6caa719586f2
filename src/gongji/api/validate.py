"""Field checks for requests: collect every violation, then raise one InvalidArgument (or InvalidAmount)."""

from __future__ import annotations

import datetime as dt
import enum
import re
import uuid
from typing import TypeVar
from zoneinfo import ZoneInfo

from gongji import errors, limits
from gongji.api import pages
from gongji.domain.people import person_id_problem, region_code_problem

E = TypeVar("E", bound=enum.Enum)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]+")
_PHONE = re.compile(rf"\+?[0-9]{{5,{limits.PHONE_LEN_MAX}}}")
_DOCUMENT_NUMBER = re.compile(r"[0-9A-Za-z]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ENTRY_ID = re.compile(r"[0-9]{1,19}")
# Identifiers are ASCII (the character classes below are code-point ranges, unlike \d, \w or
# str.isalnum(), which accept full-width and other scripts' digits and letters).
_INSTITUTION_ID = re.compile(rf"[A-Za-z0-9]{{1,{limits.INSTITUTION_ID_LEN_MAX}}}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Ages, dates and days are the calendar day in China: every 统筹区 keeps Beijing time (no daylight saving).
CHINA = ZoneInfo("Asia/Shanghai")


def china_today() -> dt.date:
    return dt.datetime.now(CHINA).date()


_REGION_KEY = re.compile(r"[1-9][0-9]([0-9]{4})?")
_REGION_CODE_SHAPE = re.compile(r"[0-9]{6}")

_REFERENCE = re.compile(rf"[A-Za-z0-9._:\-]{{4,{limits.FACE_VERIFICATION_REF_LEN_MAX}}}")


class Fields:
    def __init__(self) -> None:
        self._violations: list[errors.FieldViolation] = []
        self._amount_only = True

    def bad(self, field: str, description: str, *, amount: bool = False) -> None:
        # Each (field, description) once and at most a few dozen in all: a request with thousands of
        # bad entries must still get an answer that fits the client's metadata limit.
        violation = errors.FieldViolation(field, description)
        if violation not in self._violations and len(self._violations) < limits.FIELD_VIOLATIONS_MAX:
            self._violations.append(violation)
        self._amount_only &= amount

    def done(self) -> None:
        if self._violations:
            cls = errors.InvalidAmount if self._amount_only else errors.InvalidArgument
            raise cls(self._violations)

    def person_id(self, field: str, value: str) -> str:
        problem = person_id_problem(value) if value else "is required"
        if problem:
            self.bad(field, problem)
        return value

    def optional_person_id(self, field: str, value: str | None) -> str | None:
        return self.person_id(field, value) if value else None

    def region_code(self, field: str, value: str) -> str:
        problem = region_code_problem(value)
        if problem:
            self.bad(field, problem)
        return value

    def amount(self, field: str, value: int, maximum: int) -> int:
        if not 0 < value <= maximum:
            self.bad(field, f"must be a whole number of fen from 1 to {maximum}", amount=True)
        return value

    def request_id(self, field: str, value: str) -> str:
        if not 0 < len(value) <= limits.REQUEST_ID_LEN_MAX or not _REQUEST_ID.fullmatch(value):
            self.bad(field, f"must be 1 to {limits.REQUEST_ID_LEN_MAX} characters of A-Z a-z 0-9 . _ : -")
        return value

    def text(self, field: str, value: str, maximum: int, *, required: bool = True) -> str:
        if required and not value.strip():
            self.bad(field, "is required")
        elif len(value) > maximum or not value.isprintable():
            self.bad(field, f"must be at most {maximum} printable characters")
        return value

    def phone(self, field: str, value: str) -> str:
        if not _PHONE.fullmatch(value):
            self.bad(field, f"must be 5 to {limits.PHONE_LEN_MAX} digits, optionally after a +")
        return value

    def reference(self, field: str, value: str) -> str:
        """An optional reference to a completed check (e.g. face verification): empty, or 4 to 64
        characters of A-Z a-z 0-9 . _ : - (blank is not a reference)."""
        if value and not _REFERENCE.fullmatch(value):
            self.bad(field, f"must be 4 to {limits.FACE_VERIFICATION_REF_LEN_MAX} characters of A-Z a-z 0-9 . _ : -")
        return value

    def document_number(self, field: str, value: str, *, required: bool = True) -> str:
        if not value and not required:
            return value
        if not 0 < len(value) <= limits.DOCUMENT_NUMBER_LEN_MAX or not _DOCUMENT_NUMBER.fullmatch(value):
            self.bad(field, f"must be 1 to {limits.DOCUMENT_NUMBER_LEN_MAX} letters and digits")
        return value.upper()

    def date(self, field: str, value: str) -> dt.date:
        """A calendar date from 1900 up to today in China, written YYYY-MM-DD (nothing else)."""
        try:
            if not _DATE.fullmatch(value):
                raise ValueError(value)
            day = dt.date.fromisoformat(value)
            if not dt.date(1900, 1, 1) <= day <= china_today():
                raise ValueError(value)
        except ValueError:
            self.bad(field, "must be a date up to today, written YYYY-MM-DD")
            return dt.date(1900, 1, 1)
        return day

    def calendar_day(self, field: str, value: str, first: dt.date, last: dt.date) -> dt.date | None:
        """A calendar date from `first` to `last`, written YYYY-MM-DD (nothing else); None when bad."""
        try:
            if not _DATE.fullmatch(value):
                raise ValueError(value)
            day = dt.date.fromisoformat(value)
        except ValueError:
            self.bad(field, "must be a date written YYYY-MM-DD")
            return None
        if not first <= day <= last:
            self.bad(field, f"must be from {first} to {last}")
            return None
        return day

    def region_key(self, field: str, value: str, *, required: bool = True) -> str:
        """A province ('61') or a 6-digit 统筹区 code ('610100'); empty when not required."""
        if not value and not required:
            return value
        if not _REGION_KEY.fullmatch(value):
            self.bad(field, "must be a province ('61') or a 6-digit 统筹区 code ('610100')")
        elif len(value) == 6 and value.endswith("0000"):
            self.bad(field, "for a whole province use its two digits ('61'), not '610000'")
        return value

    def premium_year(self, field: str, value: int, today: dt.date) -> int:
        """A contribution year a premium may be paid or set for: from the first year of the rule to
        next year in China's calendar."""
        last = today.year + limits.PREMIUM_YEARS_AHEAD_MAX
        if not limits.PREMIUM_YEAR_MIN <= value <= last:
            self.bad(field, f"must be a contribution year from {limits.PREMIUM_YEAR_MIN} to {last}")
        return value

    def uuid_id(self, field: str, value: str) -> uuid.UUID | None:
        # uuid.UUID alone would take full-width digits (it parses with int()).
        if not _UUID.fullmatch(value):
            self.bad(field, "must be an id as answered by gongji (a UUID)")
            return None
        return uuid.UUID(value)

    def institution_id(self, field: str, value: str) -> str:
        if not _INSTITUTION_ID.fullmatch(value):
            self.bad(field, f"must be 1 to {limits.INSTITUTION_ID_LEN_MAX} ASCII letters and digits")
        return value

    def page_size(self, field: str, value: int, default: int, maximum: int) -> int:
        if not 0 <= value <= maximum:
            self.bad(field, f"must be 0 (the default, {default}) to {maximum}")
        return value or default

    def page_token(self, field: str, value: str, count: int) -> list[str] | None:
        """The parts of a page token from a previous answer; None for the first page."""
        if not value:
            return None
        if len(value) > limits.PAGE_TOKEN_LEN_MAX:
            self.bad(field, "is not a token from a previous answer")
            return None
        try:
            return pages.decode(value, count)
        except errors.InvalidArgument:
            self.bad(field, "is not a token from a previous answer")
            return None

    def day_cursor(self, field: str, value: str, day: dt.date) -> tuple[dt.datetime, uuid.UUID] | None:
        """The (created_at, settlement_id) after which a Reconcile page of `day` continues."""
        parts = self.page_token(field, value, 2)
        if parts is None:
            return None
        try:
            at, settlement_id = dt.datetime.fromisoformat(parts[0]), uuid.UUID(parts[1])
            # A cursor from a page of this day only: a timestamp far out of range would overflow the driver.
            if at.tzinfo is None or abs(at.date() - day) > dt.timedelta(days=1):
                raise ValueError(parts[0])
        except (ValueError, OverflowError):
            self.bad(field, "is not a token from a previous answer")
            return None
        return at, settlement_id

    def region_day_cursor(self, field: str, value: str, first: dt.date, last: dt.date) -> tuple[dt.date, str] | None:
        """The (day, region_code) after which a ReportPremiums page of [first, last] continues."""
        parts = self.page_token(field, value, 2)
        if parts is None:
            return None
        try:
            if not _DATE.fullmatch(parts[0]) or not _REGION_CODE_SHAPE.fullmatch(parts[1]):
                raise ValueError(parts)
            day = dt.date.fromisoformat(parts[0])
            if not first <= day <= last:
                raise ValueError(parts[0])
        except ValueError:
            self.bad(field, "is not a token from a previous answer")
            return None
        return day, parts[1]

    def entry_cursor(self, field: str, value: str) -> int | None:
        """The ledger entry id below which a ListLedger page continues (a positive bigint)."""
        parts = self.page_token(field, value, 1)
        if parts is None:
            return None
        if not _ENTRY_ID.fullmatch(parts[0]) or not 0 < int(parts[0]) < 2**63:
            self.bad(field, "is not a token from a previous answer")
            return None
        return int(parts[0])

    def enum(self, field: str, value: int, proto_names: dict[int, str], target: type[E], prefix: str) -> E | None:
        """Map a proto enum number to the domain enum; UNSPECIFIED and unknown numbers are violations."""
        name = proto_names.get(value, "")
        member = name.removeprefix(prefix)
        if not name or member == "UNSPECIFIED" or member not in target.__members__:
            self.bad(field, "is required and must be one of the listed values")
            return None
        return target[member]
