"""One GPS point rule and one live `driver.location` frame, used by the REST API and the gateway."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from common.clock import iso
from common.events import ALL_DRIVERS, DRIVER_LOCATION, driver_channel, ephemeral_frame

# The bounds of a point; api/openapi.py states the same numbers from these names.
LAT_MIN, LAT_MAX = -90.0, 90.0
LNG_MIN, LNG_MAX = -180.0, 180.0
HEADING_MIN, HEADING_BELOW = 0.0, 360.0  # degrees, 360 itself is 0
SPEED_MAX = 1000.0  # m/s: anything faster is a broken sensor
ACCURACY_MAX = 100000.0  # metres
MAX_FUTURE = timedelta(minutes=5)  # phone clocks drift; further ahead is a wrong clock
MAX_AGE = timedelta(days=1)
FIELDS = ("lat", "lng", "heading", "speed", "accuracy", "recorded_at")
REQUIRED = ("lat", "lng")


@dataclass(frozen=True)
class GpsPoint:
    lat: float
    lng: float
    heading: float | None
    speed: float | None
    accuracy: float | None
    recorded_at: datetime

    def row(self, driver_id: str) -> tuple[Any, ...]:
        """The point as common.locations.store_points takes it."""
        return (driver_id, self.lat, self.lng, self.heading, self.speed, self.accuracy, self.recorded_at)


def check_point(raw: dict[str, Any], now: datetime) -> tuple[GpsPoint | None, dict[str, str]]:
    """The point in `raw` (other keys ignored), or the problems by field name."""
    problems: dict[str, str] = {}
    lat = _number(raw, "lat", LAT_MIN, LAT_MAX, problems, required=True)
    lng = _number(raw, "lng", LNG_MIN, LNG_MAX, problems, required=True)
    heading = _number(raw, "heading", HEADING_MIN, HEADING_BELOW, problems, below=True)
    speed = _number(raw, "speed", 0.0, SPEED_MAX, problems)
    accuracy = _number(raw, "accuracy", 0.0, ACCURACY_MAX, problems)
    recorded_at = now
    raw_time = raw.get("recorded_at")
    if raw_time is not None:
        parsed = _timestamp(raw_time)
        if parsed is None:
            problems["recorded_at"] = "must be an ISO-8601 time with a zone"
        elif parsed > now + MAX_FUTURE:
            problems["recorded_at"] = "more than 5 minutes in the future"
        elif parsed < now - MAX_AGE:
            problems["recorded_at"] = "older than 1 day"
        else:
            recorded_at = parsed
    if problems or lat is None or lng is None:
        return None, problems
    return GpsPoint(lat, lng, heading, speed, accuracy, recorded_at), {}


def location_frames(driver_id: str, point: GpsPoint, ts: str) -> list[tuple[str, str]]:
    """The live `driver.location` frame for the driver's channel and for `drivers` (the fleet view)."""
    data = {"driver_id": driver_id, "lat": point.lat, "lng": point.lng, "heading": point.heading,
            "speed": point.speed, "accuracy": point.accuracy, "recorded_at": iso(point.recorded_at)}
    return [(channel, ephemeral_frame(channel, DRIVER_LOCATION, data, ts))
            for channel in (driver_channel(driver_id), ALL_DRIVERS)]


def _number(raw: dict[str, Any], name: str, low: float, high: float, problems: dict[str, str], *,
            required: bool = False, below: bool = False) -> float | None:
    value = raw.get(name)
    if value is None:
        if required:
            problems[name] = "is required"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems[name] = "must be a finite number"
        return None
    if not low <= value <= high or (below and value >= high):
        problems[name] = f"must be within {low:g}..{high:g}" + (f", {high:g} excluded" if below else "")
        return None
    return float(value)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC)
