"""The admin numbers: every gateway writes its own; whichever wins the period's Redis lease publishes the sum.

The lease (SET NX PX, one per STATS_EVERY_S period) replaces the old tie to the relay leader, so
the `admin:connections` frame keeps coming when relays run outside the gateways and never comes twice.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import gevent
import redis
from loguru import logger

from common import gateway_stats
from common.clock import iso
from common.events import ADMIN_CONNECTIONS, CONNECTIONS_STATS, ephemeral_frame
from gateway import metrics
from gateway.connection import Connection
from gateway.hub import Hub

STATS_EVERY_S = 2.0
STATS_LEASE_PREFIX = "dms:stats-lease:"


class Stats:
    def __init__(self, gateway_id: str, redis_client: redis.Redis, hub: Hub,
                 connections: Callable[[], set[Connection]]) -> None:
        self.id = gateway_id
        self.redis = redis_client
        self.hub = hub
        self.connections = connections
        self.slow_consumer_disconnects = 0
        self.started_at = datetime.now(UTC)
        self._last_frames_out = 0
        self._last_at = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        frames_out = self.hub.frames_out
        rate = (frames_out - self._last_frames_out) / max(now - self._last_at, 1e-6)
        self._last_frames_out, self._last_at = frames_out, now
        connections = self.connections()
        return {
            "id": self.id,
            "connections": len(connections),
            "by_role": dict(Counter(conn.identity.role for conn in connections)),
            "subscriptions": sum(len(conn.subscriptions) for conn in connections),
            "messages_out_per_s": round(rate, 1),
            "slow_consumer_disconnects": self.slow_consumer_disconnects,
            "delivery_p95_ms": metrics.delivery_p95_ms(),
            "started_at": iso(self.started_at),
            "last_seen": iso(datetime.now(UTC)),
        }

    def run(self, running: Callable[[], bool]) -> None:
        while running():
            try:
                self.publish_once()
            except redis.RedisError as exc:
                logger.debug("stats not published: {}", exc)
            gevent.sleep(STATS_EVERY_S - time.time() % STATS_EVERY_S + 0.01)

    def publish_once(self) -> None:
        gateway_stats.publish_instance(self.redis, self.snapshot())
        lease = f"{STATS_LEASE_PREFIX}{int(time.time() // STATS_EVERY_S)}"
        if self.redis.set(lease, self.id, nx=True, px=int(STATS_EVERY_S * 1000 * 2)):
            body = gateway_stats.read_all(self.redis)
            frame = ephemeral_frame(ADMIN_CONNECTIONS, CONNECTIONS_STATS, body, iso(datetime.now(UTC)))
            self.hub.publish_ephemeral(ADMIN_CONNECTIONS, frame)

    def remove(self) -> None:
        try:
            gateway_stats.remove_instance(self.redis, self.id)
        except redis.RedisError:
            pass
