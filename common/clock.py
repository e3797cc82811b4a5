"""The one timestamp format on the wire: ISO-8601 UTC with microseconds and a `Z`.

Microseconds because PostgreSQL stores them: a `created_at` copied from a response into a
`created_from` filter finds that row again. Always six digits (`isoformat()` drops them when
they are zero), so clients can parse every timestamp with one pattern. No I/O imports: the
gateway's protocol core uses it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    """`2026-01-01T12:00:00.000000Z`; a naive `moment` is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
