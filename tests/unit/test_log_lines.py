"""The log line of every RPC written the cheap way is the line `Logger.info` writes, masked the same."""

from __future__ import annotations

import io
import json
import logging
import random
import re
from collections.abc import Iterator

import pytest

from gongji import logs
from gongji.domain.people import mask_id

FIELDS = {
    "method": "/gongji.v1.SettlementService/Settle",
    "code": "OK",
    "reason": "",
    "duration_ms": 1.5,
    "institution": "H61010300001",
    "terminal": "POS-1",
    "request_id": "61010219920315402X",  # a client may send anything well formed: masked in the line
}


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("test.emit")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)
    log.filters.clear()


def test_emit_writes_what_info_writes(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logged
    log.info("rpc", extra={logs.FIELDS: FIELDS})
    logs.emit(log, "rpc", FIELDS)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", second["ts"])
    first.pop("ts"), second.pop("ts")
    assert first == second
    assert list(second) == ["level", "logger", "msg", *FIELDS]
    assert second["request_id"] == "6101**********402X"


def test_emit_honours_levels_and_filters(logged: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logged
    log.setLevel(logging.WARNING)
    logs.emit(log, "rpc", FIELDS)
    log.setLevel(logging.INFO)
    log.addFilter(lambda record: False)
    logs.emit(log, "rpc", FIELDS)
    assert stream.getvalue() == ""


def _mask_every_line(text: str) -> str:
    """mask() as it was before it looked for a run of digits first."""
    text = logs._ID_NUMBER.sub(lambda m: mask_id(m[0]), text)
    return logs._PHONE.sub(lambda m: m[0][:3] + "****" + m[0][-4:], text)


def test_mask_masks_what_it_masked_before() -> None:
    rng = random.Random(16)
    pieces = ["61010219920315402X", "13812345678", "0", "9", "1", "x", "X", " ", '"', "-", "a", "12345678901"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert logs.mask(text) == _mask_every_line(text), text
