"""One timestamp format on the wire: ISO-8601 UTC, six fractional digits, `Z`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from common.clock import iso


def test_whole_seconds_keep_six_digits() -> None:
    assert iso(datetime(2026, 1, 1, 12, tzinfo=UTC)) == "2026-01-01T12:00:00.000000Z"


def test_microseconds_survive() -> None:
    assert iso(datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)) == "2026-01-01T12:00:00.123456Z"


def test_other_offsets_become_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 1, 1, 14, tzinfo=plus_two)) == "2026-01-01T12:00:00.000000Z"
