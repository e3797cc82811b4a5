"""Storing GPS points: history rows plus the driver's latest position, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

# (driver_id, lat, lng, heading, speed, accuracy, recorded_at)
PointRow = tuple[str, float, float, float | None, float | None, float | None, datetime]


def store_points(conn: psycopg.Connection[Any], rows: Sequence[PointRow]) -> None:
    """One INSERT from arrays (COPY is refused under row-level security), then latest positions.

    Batches may arrive out of order, so a driver's latest position only ever moves forward in time.
    """
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    conn.execute(
        "INSERT INTO driver_locations (driver_id, lat, lng, heading, speed, accuracy, recorded_at)"
        " SELECT * FROM unnest(%s::uuid[], %s::float8[], %s::float8[], %s::float8[], %s::float8[],"
        " %s::float8[], %s::timestamptz[])",
        [list(column) for column in columns],
    )
    latest: dict[str, PointRow] = {}
    for row in rows:
        if row[0] not in latest or row[6] >= latest[row[0]][6]:
            latest[row[0]] = row
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE drivers SET lat = %s, lng = %s, heading = %s, speed = %s, accuracy = %s,"
            " location_recorded_at = %s, updated_at = now()"
            " WHERE id = %s AND (location_recorded_at IS NULL OR location_recorded_at <= %s)",
            [(*row[1:7], row[0], row[6]) for row in latest.values()],
        )
