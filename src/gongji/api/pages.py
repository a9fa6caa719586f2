"""Opaque page tokens: a cursor of the previous page's last row, base64url-encoded.

Not signed: every query that reads a token is also scoped by the caller (its institution, the person
asked about), so a doctored token only moves the caller within what it may read anyway.
"""

from __future__ import annotations

import base64
import binascii

from gongji import errors

_VERSION = "p1"


def encode(*parts: str) -> str:
    raw = "|".join((_VERSION, *parts)).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(token: str, count: int) -> list[str]:
    """The `count` parts of a token this module encoded; INVALID_ARGUMENT for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise errors.InvalidArgument.one("page_token", "is not a token from a previous answer") from exc
    parts = raw.split("|")
    if len(parts) != count + 1 or parts[0] != _VERSION:
        raise errors.InvalidArgument.one("page_token", "is not a token from a previous answer")
    return parts[1:]
