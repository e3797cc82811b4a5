"""The gateway node: builds and wires hub, relay, recovery, the connections' jobs and their loops.

Each job has its module: the handshake (gateway.handshake), one connection's reading and
dispatch (gateway.reader), the timer loop (gateway.timers), subscribe and recovery
(gateway.subscriptions, gateway.recovery), restaurants' rights to drivers' channels
(gateway.rights), GPS intake (gateway.gps) and the admin numbers (gateway.stats). The node holds
the live connections, starts and drains.
"""

from __future__ import annotations

import os
import resource
import socket
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import gevent
import psycopg
import psycopg_pool
from loguru import logger

from common.auth import Identity, claims_of, verifier_from_config
from common.config import Config
from common.db import claims, make_pool
from common.errors import DmsError
from common.logging import log_context
from common.presence import GatewayPresence
from common.profiles import ensure_profile
from common.redis_client import redis_for
from common.replication import REPLICATION
from common.roles import Role
from gateway import closes
from gateway.admission import Admission, connection_ceiling
from gateway.app import create_gateway_app
from gateway.cluster_hub import hub_for
from gateway.connection import Connection
from gateway.gps import GpsIntake
from gateway.locations import LocationWriter
from gateway.protocol import Session, welcome
from gateway.reader import Reader
from gateway.recovery import Recovery
from gateway.refresh import TokenRefresh
from gateway.rights import RightsCheck
from gateway.stats import Stats
from gateway.subscriptions import Subscriptions
from gateway.timers import run_timers
from gateway.transport import Transport
from relay.loop import Relay

__all__ = ["Gateway", "create_gateway_app", "raise_fd_limit"]


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one: each connection holds one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


MIN_DRAIN_SPREAD_S = 3.0


def drain_spread_s(clients: int, *, rate_per_s: float, max_s: float) -> float:
    """How long a drain spreads its closes: `clients / rate_per_s`, at least MIN_DRAIN_SPREAD_S, at most `max_s`."""
    return min(max_s, max(MIN_DRAIN_SPREAD_S, clients / rate_per_s))


class Gateway:
    """Everything one gateway process owns; built once and passed to the app factory."""

    def __init__(self, config: Config, *, run_relay: bool = True, pool_size: int = 20) -> None:
        self.config = config
        self.id = config.gateway_id or f"{socket.gethostname()}-{os.getpid()}"
        self.pool = make_pool(config.database_url, name="gateway", max_size=pool_size)
        REPLICATION.watch(config.database_url)  # replica-lag gauges, read from the primary per scrape
        self.redis = redis_for(config)
        self.hub = hub_for(config, self.redis, history_events=config.ws_history_events)
        self.recovery = Recovery(self.pool, self.redis, self.hub)
        self.admission = Admission(max_connections=connection_ceiling(config.ws_max_connections),
                                   accept_rate_per_s=config.ws_accept_rate_per_s)
        self.locations = LocationWriter(self.pool)
        self.presence = GatewayPresence(self.redis, self.pool, stale_s=config.driver_stale_seconds, instance_id=self.id)
        self.relay: Relay | None = (
            Relay(listen_url=config.database_listen_url, redis_client=self.redis,
                  retention_hours=config.event_retention_hours, housekeeping_retention=config.retention)
            if run_relay else None
        )
        self.connections: set[Connection] = set()
        self.per_user: Counter[str] = Counter()
        self.draining = False
        self.subscriptions = Subscriptions(self.pool, self.hub, self.recovery)
        self.hub.on_reconnect = lambda: self.subscriptions.resync_all(self.connections)
        self.rights = RightsCheck(self.pool, self.hub, lambda: self.connections)
        self.hub.on_driver_order_event = self.rights.driver_order_event
        self.stats = Stats(self.id, self.redis, self.hub, lambda: self.connections)
        self.tokens = verifier_from_config(config)  # handshakes, tickets and in-band refresh
        self.reader = Reader(max_message_bytes=config.ws_max_message_bytes, subscriptions=self.subscriptions,
                             gps=GpsIntake(self.hub, self.locations, self.presence),
                             refresh=TokenRefresh(self.tokens, self.pool, self.hub))
        self._frames_out_closed = 0
        self._running = False
        self._greenlets: list[gevent.Greenlet] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self.pool.open(wait=False)
        self.hub.start()
        self.locations.start()
        loops: list[Any] = [(self.stats.run, self.running), (self.rights.run, self.running),
                            (run_timers, self.config, lambda: self.connections, self.reader.act, self.running),
                            (self.presence.run, self.running, self.connected_drivers)]
        if self.relay is not None:
            loops.append((self.relay.run, self.running))
        self._greenlets.extend(gevent.spawn(*loop) for loop in loops)

    def running(self) -> bool:
        return self._running

    def drain(self) -> None:
        """Close clients with 1001 at a pace the other gateways can take, flush GPS, give up the relay, stop.

        Every closed client reconnects at once (within its first backoff of at most 0.5 s), so the
        pace of the closes is the pace of the handshakes the rest of the fleet must take: at most
        `WS_DRAIN_RATE` a second (default 250; see docs/FLEET.md), never over less
        than MIN_DRAIN_SPREAD_S, and never longer than `WS_DRAIN_MAX_S`. Each client is then blind
        for about its backoff and one handshake, instead of queueing behind the whole crowd.
        """
        self.draining = True
        clients = list(self.connections)
        spread_s = drain_spread_s(len(clients), rate_per_s=self.config.ws_drain_rate_per_s,
                                  max_s=self.config.ws_drain_max_s)
        logger.info("draining {} connections over {:.1f}s", len(clients), spread_s)
        for index, conn in enumerate(clients):
            gevent.spawn_later(spread_s * index / max(len(clients), 1), conn.close, closes.SHUTDOWN)
        deadline = time.monotonic() + spread_s + self.config.ws_close_timeout_s + 1
        while self.connections and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.stop()

    def stop(self) -> None:
        self._running = False
        self.locations.stop()
        gevent.joinall(self._greenlets, timeout=5)
        gevent.killall([g for g in self._greenlets if not g.dead], timeout=2)
        self.hub.stop()
        self.stats.remove()
        self.pool.close()

    @property
    def frames_in(self) -> int:
        return self.reader.frames_in

    def frames_out_total(self) -> int:
        return self._frames_out_closed + sum(conn.frames_sent for conn in list(self.connections))

    def connected_drivers(self) -> list[str]:
        return [conn.identity.user_id for conn in self.connections if conn.identity.role == Role.DRIVER]

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot()

    # -- one connection ------------------------------------------------------------------------
    def open(self, transport: Transport, who: Identity, *, batch_ms: int = 0) -> Connection:
        """Take an upgraded connection: register it and welcome it in a greenlet of its own."""
        config = self.config
        session = Session(role=who.role, max_subscriptions=config.ws_max_subscriptions,
                          ping_interval_s=config.ws_ping_interval_s, ping_timeout_s=config.ws_ping_timeout_s,
                          close_timeout_s=config.ws_close_timeout_s, expires_at=who.expires_at)
        conn = Connection(connection_id=uuid.uuid4().hex, identity=who, transport=transport, session=session,
                          batch_ms=batch_ms)
        self.connections.add(conn)
        self.per_user[who.user_id] += 1
        gevent.spawn(self._serve, conn)
        return conn

    def _serve(self, conn: Connection) -> None:
        """Welcome the client, then hand it to the reader; this greenlet ends (see gateway.reader)."""
        who = conn.identity
        with log_context(connection_id=conn.id):
            try:
                if who.role == Role.DRIVER:
                    self._ensure_driver(conn)
                    self.presence.connected(who.user_id)
                conn.log.info("connected")
                conn.opened()
                conn.send_json(welcome(
                    connection_id=conn.id, user_id=who.user_id, role=who.role,
                    ping_interval_s=self.config.ws_ping_interval_s,
                    max_subscriptions=self.config.ws_max_subscriptions, now=datetime.now(UTC),
                ))
            except Exception:
                conn.log.exception("connection failed")
                self._forget(conn)
                raise
            self.reader.start(conn, self._forget)

    def _forget(self, conn: Connection) -> None:
        conn.abort()
        for channel in list(conn.subscriptions):
            self.hub.remove(conn, channel)
        conn.subscriptions.clear()
        self.connections.discard(conn)
        self._frames_out_closed += conn.frames_sent
        user = conn.identity.user_id
        self.per_user[user] -= 1
        if self.per_user[user] <= 0:
            del self.per_user[user]
            if conn.identity.role == Role.DRIVER:
                self.presence.disconnected(user)
        if conn.disconnect is closes.SLOW_CONSUMER:
            self.stats.slow_consumer_disconnects += 1
        assert conn.disconnect is not None  # set by abort at the latest
        conn.log.bind(close_code=conn.close_code, close_reason=conn.disconnect.label).info("disconnected")

    def _ensure_driver(self, conn: Connection) -> None:
        """A driver's first connection creates its profile and driver row (as the REST API does)."""
        try:
            with claims(claims_of(conn.identity)), self.pool.connection() as db:
                ensure_profile(db, conn.identity)
        except (DmsError, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            conn.log.warning("could not ensure the driver row: {}", exc)
