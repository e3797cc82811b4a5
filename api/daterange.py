"""Date and time query parameters (`created_from`, `from`, ...): ISO-8601, checked with field details."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from flask import request

from common.errors import ValidationFailed

MAX_RANGE = timedelta(days=366)
# An unencoded `+02:00` offset arrives as ` 02:00` (a `+` in a query string is a space).
_SPACED_OFFSET = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


@dataclass(frozen=True)
class Range:
    """A half-open interval [start, end); either side may be open."""

    start: datetime | None
    end: datetime | None


def parse_moment(raw: str) -> datetime:
    """A date (`2026-03-01`, midnight UTC) or a date-time; a date-time without a zone is UTC.

    Raises ValueError with a message for the details."""
    text = raw.strip()
    if not text:
        raise ValueError("expected an ISO-8601 date or date-time")
    text = _SPACED_OFFSET.sub(r"\1+\2", text)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError("expected an ISO-8601 date or date-time, e.g. 2026-03-01 or 2026-03-01T08:00:00Z") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def query_range(start_name: str, end_name: str, *, required: bool = False,
                max_span: timedelta | None = None) -> Range:
    """Read `start_name` (inclusive) and `end_name` (exclusive) from the query string.

    Every problem is collected before failing, so one 422 names all bad fields."""
    errors: dict[str, str] = {}
    found: dict[str, datetime | None] = {}
    for name in (start_name, end_name):
        raw = request.args.get(name)
        if raw is None:
            found[name] = None
            if required:
                errors[name] = "required"
            continue
        try:
            found[name] = parse_moment(raw)
        except ValueError as exc:
            errors[name] = str(exc)
    start, end = found.get(start_name), found.get(end_name)
    if start is not None and end is not None:
        if end < start:
            errors[end_name] = f"must not be before {start_name}"
        elif max_span is not None and end - start > max_span:
            errors[end_name] = f"at most {max_span.days} days after {start_name}"
    if errors:
        raise ValidationFailed("invalid date range", details=errors)
    return Range(start, end)
