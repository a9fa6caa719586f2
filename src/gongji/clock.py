"""The service's clock: what time it is for every decision gongji takes by time of day (the 医保钱包's
quiet hours, daily counts and due times, and the expiry work). Injected, so that tests move it instead
of sleeping until 06:00; the database's own now() never decides such a thing."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current instant, timezone-aware."""
        ...


class SystemClock:
    """The machine's clock (NTP-disciplined in production)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that stands still until told: for tests, and for replaying a day."""

    def __init__(self, at: dt.datetime) -> None:
        assert at.utcoffset() is not None, "a timezone-aware instant"
        self._at = at

    def now(self) -> dt.datetime:
        return self._at

    def set(self, at: dt.datetime) -> None:
        assert at.utcoffset() is not None, "a timezone-aware instant"
        self._at = at

    def advance(self, by: dt.timedelta) -> None:
        self._at += by


SYSTEM_CLOCK = SystemClock()
