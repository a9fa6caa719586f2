"""Times in answers: the quick conversion gives what Timestamp.FromDatetime gives."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from gongji.api.app import timestamp

CHINA = dt.timezone(dt.timedelta(hours=8))


def test_timestamp_is_what_from_datetime_gives() -> None:
    values = [
        dt.datetime(2026, 12, 3, 6, 41, 25, 992_123, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 3, 14, 41, 25, 1, tzinfo=CHINA),
        dt.datetime(2026, 12, 3, 6, 41, 25),  # naive: UTC
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
    ]
    for value in values:
        expected = timestamp_pb2.Timestamp()
        expected.FromDatetime(value)
        assert timestamp(value) == expected, value
    assert timestamp(None) is None
