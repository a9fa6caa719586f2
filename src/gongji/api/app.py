"""What every servicer needs, built once at start-up."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

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


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts
