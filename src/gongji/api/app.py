"""What every servicer needs, built once at start-up."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from gongji.clock import SYSTEM_CLOCK, Clock
from gongji.config import Settings
from gongji.domain.vouchers import VoucherCodec
from gongji.store import db

# The servicer context of every gongji RPC.
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class App:
    settings: Settings
    pool: db.Pool
    vouchers: VoucherCodec
    # What time it is for the decisions taken by time of day (gongji.clock); tests pass their own.
    clock: Clock = SYSTEM_CLOCK


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)  # a naive value is taken to be UTC, as Timestamp.FromDatetime does


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """The Timestamp that Timestamp.FromDatetime gives, from the difference to the epoch: FromDatetime
    goes through utctimetuple() and calendar.timegm, several times the cost, for every time in an
    answer."""
    if value is None:
        return None
    since = value - (_NAIVE_EPOCH if value.utcoffset() is None else _EPOCH)
    return timestamp_pb2.Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000)
