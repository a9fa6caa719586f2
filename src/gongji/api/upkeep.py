"""Background work every server runs on a timer (the 医保钱包 expiry, the outbox's upkeep)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def every(
    interval_s: float,
    run: Callable[[], Awaitable[object]],
    count: Callable[[str], None],
    what: str,
    log: logging.Logger,
) -> None:
    """Run `run` every `interval_s` for ever, counting each run by outcome: the string it answers (say,
    `skipped`), else `ok`; `failed` when it raised. Whatever failed (the database away or busy, a defect),
    the work goes on: the next run catches up, and the log and the metric tell."""
    while True:
        try:
            outcome = await run()
            count(outcome if isinstance(outcome, str) else "ok")
        except Exception:
            count("failed")
            log.warning("the %s failed; it runs again", what, exc_info=True)
        await asyncio.sleep(interval_s)
