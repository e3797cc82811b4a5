"""Drivers: their own status and GPS batches, the latest position for those allowed to see it, the fleet list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, jsonify, request
from loguru import logger

from api.context import identity, request_id, require, services
from api.pagination import keyset_query, page_args, page_body
from api.validation import Field, Validator, json_body, uuid_arg
from common import events, gps, presence
from common.errors import NotFound, ValidationFailed
from common.gps import GpsPoint
from common.locations import store_points
from common.orders import ACTIVE_STATUSES
from common.roles import ROLES_WITH_RESTAURANT, Role
from common.visibility import driver_visible_to_restaurant

bp = Blueprint("drivers", __name__, url_prefix="/api/drivers")

DRIVER_STATUSES = ("online", "offline", "on_break")
FLEET_STATUSES = (*DRIVER_STATUSES, presence.STALE)  # `stale` is derived (common/presence.py), never stored
MAX_POINTS = 500
_status_body = Validator({"status": Field("string", choices=DRIVER_STATUSES)})
_locations_body = Validator({"points": Field("list", min=1, max=MAX_POINTS)})


@bp.post("/me/status")
@require("driver", write=True)
def set_status() -> Any:
    who = identity()
    clean = _status_body(json_body())
    with services().pool.connection() as conn:
        before = conn.execute("SELECT status FROM drivers WHERE id = %s FOR UPDATE", (who.user_id,)).fetchone()
        if before is None:
            raise NotFound("no driver profile")
        row = conn.execute(
            "UPDATE drivers SET status = %s, updated_at = now() WHERE id = %s RETURNING id, status, updated_at",
            (clean["status"], who.user_id),
        ).fetchone()
        assert row is not None
        # Only a real change is an event; repeating the current status is a no-op for subscribers.
        if before["status"] != row["status"]:
            events.write_event(
                conn,
                event=events.DRIVER_STATUS_CHANGED,
                channels=[events.driver_channel(who.user_id), events.ALL_DRIVERS],
                data={"driver_id": who.user_id, "status": row["status"], "previous_status": before["status"],
                      "updated_at": events.iso(row["updated_at"]), "request_id": request_id()},
            )
    presence.seen_quietly(services().redis, [who.user_id])  # saying anything is a sign of life
    return jsonify({"id": str(row["id"]), "status": row["status"], "updated_at": events.iso(row["updated_at"])})


def _points(raw: list[Any], now: datetime) -> list[GpsPoint]:
    """Every point checked by the one GPS rule; each problem named by its index, e.g. `points[3].lat`."""
    points: list[GpsPoint] = []
    errors: dict[str, str] = {}
    for index, entry in enumerate(raw):
        prefix = f"points[{index}]"
        if not isinstance(entry, dict):
            errors[prefix] = "expected an object"
            continue
        errors.update({f"{prefix}.{name}": "unknown field" for name in entry if name not in gps.FIELDS})
        point, problems = gps.check_point(entry, now)
        errors.update({f"{prefix}.{name}": problem for name, problem in problems.items()})
        if point is not None:
            points.append(point)
    if errors:
        raise ValidationFailed("some points are invalid", details=errors)
    return points


@bp.post("/me/locations")
@require("driver", write=True)
def post_locations() -> Any:
    who = identity()
    clean = _locations_body(json_body())
    points = _points(clean["points"], datetime.now(UTC))
    rows = [point.row(who.user_id) for point in points]
    with services().pool.connection() as conn:
        store_points(conn, rows)
    presence.seen_quietly(services().redis, [who.user_id])
    _publish(who.user_id, points)
    return jsonify({"accepted": len(points)}), 202


def _publish(driver_id: str, points: list[GpsPoint]) -> None:
    """Live positions are ephemeral; the rows are committed, so a Redis failure only costs liveness."""
    ts = events.iso(datetime.now(UTC))
    try:
        with services().redis.pipeline(transaction=False) as pipe:
            for point in points:
                for channel, frame in gps.location_frames(driver_id, point, ts):
                    events.publish_ephemeral(pipe, channel, frame)
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning("driver locations stored but not published live: {}", type(exc).__name__)


@bp.get("/<driver_id>/location")
@require()
def get_location(driver_id: str) -> Any:
    who = identity()
    driver_id = uuid_arg(driver_id, what="driver")
    with services().pool.connection() as conn:
        allowed = who.is_admin or (who.role == Role.DRIVER and who.user_id == driver_id) or (
            who.role in ROLES_WITH_RESTAURANT and who.restaurant_id is not None
            and driver_visible_to_restaurant(conn, who.restaurant_id, driver_id)
        )
        row = conn.execute(
            "SELECT id, lat, lng, heading, speed, accuracy, location_recorded_at FROM drivers"
            " WHERE id = %s AND lat IS NOT NULL",
            (driver_id,),
        ).fetchone() if allowed else None
    if row is None:
        raise NotFound("no location for this driver")
    return jsonify({"driver_id": str(row["id"]), "lat": row["lat"], "lng": row["lng"], "heading": row["heading"],
                    "speed": row["speed"], "accuracy": row["accuracy"],
                    "recorded_at": events.iso(row["location_recorded_at"])})


# One row per driver: the profile's name, the live status and position, and the orders it carries
# now. A subquery so the keyset helper's bare (created_at, id) names the profile's columns.
_FLEET = (
    "SELECT * FROM (SELECT d.id, p.display_name, d.status, d.lat, d.lng, d.location_recorded_at, p.created_at,"
    " ARRAY(SELECT o.id FROM orders o WHERE o.driver_id = d.id AND o.status = ANY(%s)"
    "       ORDER BY o.created_at, o.id) AS active_order_ids"
    " FROM drivers d JOIN profiles p ON p.id = d.id) AS fleet"
)


@bp.get("")
@require("admin")
def list_drivers() -> Any:
    """The fleet for dispatch, newest driver first, from a read replica when one is fresh enough."""
    page = page_args()
    where: list[str] = []
    params: list[Any] = [list(ACTIVE_STATUSES)]
    status = request.args.get("status")
    if status is not None:
        if status not in FLEET_STATUSES:
            raise ValidationFailed("unknown driver status",
                                   details={"status": f"one of: {', '.join(FLEET_STATUSES)}"})
        # `online` and `stale` are both stored as `online`; the page is narrowed after presence is
        # known, so such a page may hold fewer than `limit` drivers (its cursor still goes on).
        where.append("status = %s")
        params.append(presence.ONLINE if status == presence.STALE else status)
    sql, params = keyset_query(_FLEET, where, params, page)
    rows = services().read(lambda conn: conn.execute(sql, params).fetchall())
    now = datetime.now(UTC)
    shown = rows[: page.limit]
    seen = _last_seen([str(row["id"]) for row in shown])
    items = [_fleet_json(row, now, seen.get(str(row["id"]))) for row in shown]
    if status is not None:
        items = [item for item in items if item["status"] == status]
    return jsonify(page_body(rows, items, page.limit))


def _last_seen(driver_ids: list[str]) -> dict[str, float]:
    """Presence from Redis; without Redis every driver counts as unseen there (positions still count)."""
    try:
        return presence.last_seen(services().redis, driver_ids)
    except redis.RedisError as exc:
        logger.warning("driver presence unavailable: {}", type(exc).__name__)
        return {}


def _fleet_json(row: dict[str, Any], now: datetime, seen_at: float | None) -> dict[str, Any]:
    # A stored position is a sighting too (it may predate Redis's memory); never later than now.
    if row["location_recorded_at"] is not None:
        recorded = min(row["location_recorded_at"], now).timestamp()
        seen_at = recorded if seen_at is None else max(seen_at, recorded)
    status = presence.effective_status(row["status"], seen_at, now.timestamp(),
                                       services().config.driver_stale_seconds)
    location = None
    if row["lat"] is not None and row["location_recorded_at"] is not None:
        recorded_at = row["location_recorded_at"]
        location = {"lat": row["lat"], "lng": row["lng"], "recorded_at": events.iso(recorded_at),
                    "age_s": round(max(0.0, (now - recorded_at).total_seconds()), 1)}
    return {"id": str(row["id"]), "display_name": row["display_name"], "status": status,
            "reported_status": row["status"],
            "last_seen_at": events.iso(datetime.fromtimestamp(seen_at, UTC)) if seen_at is not None else None,
            "last_location": location, "active_order_ids": [str(order_id) for order_id in row["active_order_ids"]]}
