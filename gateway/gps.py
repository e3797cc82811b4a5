"""GPS intake on the WebSocket: per-connection rate, live fan-out of the point, durable write, ack."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis

from common import gps
from common.clock import iso
from common.presence import GatewayPresence
from gateway.connection import GPS_POINTS_PER_S, Connection
from gateway.hub import Hub
from gateway.locations import LocationWriter, Point
from gateway.protocol import Location, error


class GpsIntake:
    def __init__(self, hub: Hub, locations: LocationWriter, presence: GatewayPresence) -> None:
        self.hub = hub
        self.locations = locations
        self.presence = presence

    def location(self, conn: Connection, action: Location) -> None:
        """One checked point from a driver: publish it live, queue it for storage, ack after commit."""
        ref = action.ref
        if not conn.gps_rate.take(time.monotonic()):
            conn.send_json(error("rate_limited", f"at most {GPS_POINTS_PER_S:g} locations per second", ref).body)
            return
        driver_id, p = conn.identity.user_id, action.point
        self.presence.located(driver_id)
        try:
            for channel, frame in gps.location_frames(driver_id, p, iso(datetime.now(UTC))):
                self.hub.publish_ephemeral(channel, frame)
        except redis.RedisError as exc:
            conn.log.warning("live location fan-out failed: {}", exc)

        def done(ok: bool) -> None:
            conn.send_json({"type": "ack", "ref": ref} if ok else
                           error("bad_request", "the point was refused by storage", ref).body)

        if not self.locations.accept(Point(driver_id, p), done):
            conn.send_json(error("unavailable", "location storage is saturated, retry", ref).body)
