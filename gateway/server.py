"""The gateway node: wires hub, relay, recovery and connections; one greenlet per connection.

Each connection's greenlet blocks in a read (no polling timeout), feeds the bytes to the frame
parser and the protocol session, and dispatches the resulting actions. One timer loop drives
`Session.tick` for every connection (pings, keepalive and token expiry, close timeouts), one loop
re-checks restaurants' rights to drivers' channels, one publishes the admin numbers.
"""

from __future__ import annotations

import json
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
import redis
from flask import request
from gevent.event import Event as GEvent
from loguru import logger

from common import gateway_stats
from common.access import check_subscribe
from common.auth import Identity, claims_of, verifier_from_config
from common.clock import iso
from common.config import Config
from common.db import SERVICE, claims, make_pool
from common.errors import DmsError, Forbidden, RateLimited, Unavailable
from common.events import (
    ADMIN_CONNECTIONS,
    ALL_DRIVERS,
    CONNECTIONS_STATS,
    DRIVER_LOCATION,
    driver_channel,
    ephemeral_frame,
)
from common.logging import log_context
from common.orders import ACTIVE_STATUSES
from common.profiles import ensure_profile
from common.redis_client import make_redis
from common.replication import REPLICATION
from common.roles import Role
from gateway import credentials, framing, metrics, refresh
from gateway.app import create_gateway_app
from gateway.connection import GPS_POINTS_PER_S, Connection, Outgoing, Subscription
from gateway.framing import CloseCode, CloseReceived, Message, Ping, Pong, ProtocolError
from gateway.hub import Hub
from gateway.locations import LocationWriter, Point
from gateway.protocol import (
    Abort,
    Action,
    Auth,
    Close,
    Location,
    Reply,
    SendPing,
    Session,
    Subscribe,
    Unsubscribe,
    error,
    subscribed,
    welcome,
)
from gateway.recovery import RECOVERY_ERRORS, Recovery
from gateway.relay import Relay
from gateway.transport import Transport

__all__ = ["Gateway", "create_gateway_app", "raise_fd_limit"]

STATS_EVERY_S = 2.0
STATS_LEASE_PREFIX = "dms:stats-lease:"
RIGHTS_RECHECK_S = 2.0

# Events after which a restaurant may have lost its view of a driver: re-check at once.
_RIGHT_CHANGING_STATUSES = ("delivered", "cancelled")


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one: each connection holds one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Gateway:
    """Everything one gateway process owns; built once and passed to the app factory."""

    def __init__(self, config: Config, *, run_relay: bool = True, pool_size: int = 20) -> None:
        self.config = config
        self.id = config.gateway_id or f"{socket.gethostname()}-{os.getpid()}"
        self.pool = make_pool(config.database_url, name="gateway", max_size=pool_size)
        REPLICATION.watch(config.database_url)  # replica-lag gauges, read from the primary per scrape
        self.redis = make_redis(config.redis_url)
        self.hub = Hub(make_redis(config.redis_url, socket_timeout_s=None))
        self.hub.on_reconnect = self.resync_all
        self.hub.on_driver_order_event = self._driver_order_event
        self.recovery = Recovery(self.pool, self.redis)
        self.locations = LocationWriter(self.pool)
        self.relay: Relay | None = (
            Relay(listen_url=config.database_listen_url, redis_client=self.redis,
                  retention_hours=config.event_retention_hours)
            if run_relay else None
        )
        self.tokens = verifier_from_config(config)  # handshakes, tickets and in-band refresh
        self.connections: set[Connection] = set()
        self.per_user: Counter[str] = Counter()
        self.draining = False
        self.slow_consumer_disconnects = 0
        # Per-frame counts are plain integers, read by the metrics collector at scrape time.
        self.frames_in = 0
        self._frames_out_closed = 0
        self.started_at = datetime.now(UTC)
        self._running = False
        self._greenlets: list[gevent.Greenlet] = []
        self._last_frames_out = 0
        self._last_stats_at = time.monotonic()
        self._recheck_now = GEvent()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self.pool.open(wait=False)
        self.hub.start()
        self.locations.start()
        if self.relay is not None:
            relay = self.relay
            self._greenlets.append(gevent.spawn(relay.run, lambda: self._running))
        self._greenlets.append(gevent.spawn(self._stats_forever))
        self._greenlets.append(gevent.spawn(self._timers_forever))
        self._greenlets.append(gevent.spawn(self._rights_forever))

    def drain(self, *, spread_s: float = 3.0) -> None:
        """Close clients with 1001 spread over `spread_s`, flush GPS, give up the relay, stop."""
        self.draining = True
        clients = list(self.connections)
        logger.info("draining {} connections over {}s", len(clients), spread_s)
        for index, conn in enumerate(clients):
            gevent.spawn_later(spread_s * index / max(len(clients), 1), conn.close, CloseCode.GOING_AWAY,
                               "server shutting down")
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
        try:
            gateway_stats.remove_instance(self.redis, self.id)
        except redis.RedisError:
            pass
        self.pool.close()

    def frames_out_total(self) -> int:
        return self._frames_out_closed + sum(conn.frames_sent for conn in list(self.connections))

    # -- handshake -----------------------------------------------------------------------------
    def admit(self) -> Identity:
        """Check a WebSocket handshake before upgrading; raise the HTTP error to answer instead."""
        if self.draining:
            raise Unavailable("this gateway is shutting down")
        origin = request.headers.get("Origin")
        allowed = self.config.allowed_origins
        if origin and "*" not in allowed and origin not in allowed:
            raise Forbidden("origin not allowed")
        who = credentials.identify(request, self.tokens, self.redis)
        if self.per_user[who.user_id] >= self.config.ws_max_connections_per_user:
            raise RateLimited("too many connections for this user", retry_after_s=5)
        return who

    def open(self, sock: socket.socket, who: Identity, *, batch_ms: int = 0) -> Connection:
        """Take an upgraded socket: register the connection and start its one greenlet."""
        config = self.config
        session = Session(role=who.role, max_subscriptions=config.ws_max_subscriptions,
                          ping_interval_s=config.ws_ping_interval_s, ping_timeout_s=config.ws_ping_timeout_s,
                          close_timeout_s=config.ws_close_timeout_s, expires_at=who.expires_at)
        conn = Connection(connection_id=uuid.uuid4().hex, identity=who, transport=Transport(sock),
                          session=session, batch_ms=batch_ms)
        self.connections.add(conn)
        self.per_user[who.user_id] += 1
        gevent.spawn(self._serve, conn)
        return conn

    # -- one connection ------------------------------------------------------------------------
    def _serve(self, conn: Connection) -> None:
        who = conn.identity
        with log_context(connection_id=conn.id):
            try:
                if who.role == Role.DRIVER:
                    self._ensure_driver(conn)
                conn.log.info("connected")
                conn.session.start(time.monotonic())
                conn.send_json(welcome(
                    connection_id=conn.id, user_id=who.user_id, role=who.role,
                    ping_interval_s=self.config.ws_ping_interval_s,
                    max_subscriptions=self.config.ws_max_subscriptions, now=datetime.now(UTC),
                ))
                self._read_loop(conn)
            except Exception:
                conn.log.exception("connection failed")
                raise
            finally:
                self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        conn.transport.abort()
        for channel in list(conn.subscriptions):
            self.hub.remove(conn, channel)
        conn.subscriptions.clear()
        self.connections.discard(conn)
        self._frames_out_closed += conn.frames_sent
        user = conn.identity.user_id
        self.per_user[user] -= 1
        if self.per_user[user] <= 0:
            del self.per_user[user]
        if conn.close_code == CloseCode.SLOW_CONSUMER:
            self.slow_consumer_disconnects += 1
            metrics.DISCONNECTS.labels("slow_consumer").inc()
        conn.log.bind(close_code=conn.close_code).info("disconnected")

    def _ensure_driver(self, conn: Connection) -> None:
        """A driver's first connection creates its profile and driver row (as the REST API does)."""
        try:
            with claims(claims_of(conn.identity)), self.pool.connection() as db:
                ensure_profile(db, conn.identity)
        except (DmsError, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            conn.log.warning("could not ensure the driver row: {}", exc)

    def _read_loop(self, conn: Connection) -> None:
        """Block in the read; parse; act. Returns when the peer or `abort` ends the connection."""
        transport, session = conn.transport, conn.session
        parser = framing.Parser(max_message_bytes=self.config.ws_max_message_bytes)
        failed = False  # after a protocol error, read and discard until the peer or the timeout ends it
        while True:
            data = transport.read()
            if not data:
                return
            if failed:
                continue
            broken: ProtocolError | None = None
            try:
                frames = parser.feed(data)
            except ProtocolError as exc:
                frames, broken = exc.frames, exc  # the whole frames before the broken one still count
            for frame in frames:
                match frame:
                    case Message(data=body):
                        self.frames_in += 1
                        if conn.closed:
                            continue  # after our close frame only the peer's close matters
                        for action in session.receive(body, now_s=time.monotonic(), now=datetime.now(UTC)):
                            self._act(conn, action)
                    case Ping(payload=payload):
                        transport.send_control(framing.pong(payload))
                    case Pong():
                        session.pong(time.monotonic())
                    case CloseReceived(code=code):
                        # The peer's close, or its answer to ours: echo once, then drop the TCP connection.
                        echo = code if code not in (CloseCode.NO_STATUS,) else CloseCode.NORMAL
                        transport.close(echo, "")
                        return
            if broken is not None:
                conn.log.info("protocol error {}: {}", int(broken.code), broken.reason)
                conn.close(broken.code, broken.reason, discard_queued=True)
                failed = True

    def _act(self, conn: Connection, action: Action) -> None:
        match action:
            case Reply(body=body):
                conn.send_json(body)
            case Subscribe():
                gevent.spawn(self._subscribe, conn, action)
            case Unsubscribe(channel=channel, ref=ref):
                conn.subscriptions.pop(channel, None)
                self.hub.remove(conn, channel)
                conn.send_json({"type": "unsubscribed", "channel": channel, "ref": ref})
            case Location():
                self._location(conn, action)
            case Auth():
                gevent.spawn(refresh.refresh, self, conn, action)
            case Close(code=code, reason=reason):
                conn.close(code, reason)
            case SendPing():
                conn.ping()
            case Abort(reason=reason):
                conn.log.info("dropping the connection: {}", reason)
                conn.transport.abort()

    def _timers_forever(self) -> None:
        """Keepalive, token expiry and close timeouts for every connection from one loop."""
        config = self.config
        tick_s = max(0.02, min(config.ws_ping_interval_s, config.ws_ping_timeout_s, config.ws_close_timeout_s) / 5)
        while self._running:
            now, wall = time.monotonic(), time.time()
            for conn in list(self.connections):
                for action in conn.session.tick(now, wall):
                    if isinstance(action, Close) and action.code == CloseCode.INTERNAL:
                        conn.log.info("no pong within {}s", config.ws_ping_timeout_s)
                        metrics.DISCONNECTS.labels("ping_timeout").inc()
                    self._act(conn, action)
            gevent.sleep(tick_s)

    # -- subscriptions and recovery --------------------------------------------------------------
    def _subscribe(self, conn: Connection, action: Subscribe) -> None:
        with log_context(connection_id=conn.id):  # a new greenlet starts with an empty context
            self._subscribe_in_context(conn, action)

    def _subscribe_in_context(self, conn: Connection, action: Subscribe) -> None:
        channel, ref = action.channel, action.ref
        held = conn.subscriptions.get(channel)
        if held is not None:
            conn.send_json(subscribed(channel, ref, held.last_id, False))
            conn.session.subscribe_done(channel, ok=True)
            return
        try:
            with claims(claims_of(conn.identity)), self.pool.connection() as db:
                check_subscribe(db, conn.identity, channel)
            sub = conn.subscriptions[channel] = Subscription()
            self.hub.add(conn, channel)
            watermark = self.recovery.watermark()
            recovered = action.since is not None and action.since >= self.recovery.purged_through()
            conn.send_json(subscribed(channel, ref, watermark, recovered))
            if recovered:
                assert action.since is not None
                self.recovery.replay(conn, channel, sub, after=action.since, upto=watermark)
            else:
                sub.last_id = watermark
            conn.go_live(channel)
            conn.session.subscribe_done(channel, ok=True)
        except RECOVERY_ERRORS as exc:
            conn.subscriptions.pop(channel, None)
            self.hub.remove(conn, channel)
            conn.session.subscribe_done(channel, ok=False)
            code = exc.code if isinstance(exc, DmsError) else "unavailable"
            message = exc.message if isinstance(exc, DmsError) else "the event store is unavailable"
            conn.send_json(error(code, message, ref).body)

    def resync_all(self) -> None:
        """After Redis came back: refill every live subscription from PostgreSQL, then go live."""
        for conn in list(self.connections):
            gevent.spawn(self._resync, conn)

    def _resync(self, conn: Connection) -> None:
        with log_context(connection_id=conn.id):
            self.recovery.resync(conn)

    # -- privacy over time: restaurants on drivers' channels -------------------------------------
    def _driver_order_event(self, channel: str, out: Outgoing) -> None:
        """An order event on `driver:*` that may end a restaurant's right: re-check at once."""
        try:
            body = json.loads(out.text)
        except ValueError:
            return
        data = body.get("data") if isinstance(body, dict) else None
        if body.get("event") == "order.assigned" or (
                isinstance(data, dict) and data.get("status") in _RIGHT_CHANGING_STATUSES):
            self._recheck_now.set()

    def _rights_forever(self) -> None:
        while self._running:
            self._recheck_now.wait(timeout=RIGHTS_RECHECK_S)
            self._recheck_now.clear()
            try:
                self.recheck_rights()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                logger.warning("could not re-check restaurants' driver subscriptions: {}", exc)

    def recheck_rights(self) -> None:
        """End every restaurant subscription to `driver:D` whose restaurant has no active order with D."""
        held: dict[tuple[str, str], list[Connection]] = {}
        for conn in list(self.connections):
            if conn.own_restaurant is None:
                continue
            for channel in list(conn.subscriptions):
                if channel.startswith("driver:"):
                    held.setdefault((conn.own_restaurant, channel[len("driver:"):]), []).append(conn)
        if not held:
            return
        pairs = list(held)
        with claims(SERVICE), self.pool.connection() as db:
            rows = db.execute(
                "SELECT DISTINCT o.restaurant_id::text AS r, o.driver_id::text AS d FROM orders o"
                " JOIN unnest(%s::uuid[], %s::uuid[]) AS p(r, d) ON o.restaurant_id = p.r AND o.driver_id = p.d"
                " WHERE o.status = ANY(%s)",
                ([r for r, _ in pairs], [d for _, d in pairs], list(ACTIVE_STATUSES)),
            ).fetchall()
        allowed = {(row["r"], row["d"]) for row in rows}
        for pair, conns in held.items():
            if pair in allowed:
                continue
            channel = f"driver:{pair[1]}"
            for conn in conns:
                if conn.subscriptions.pop(channel, None) is None:
                    continue
                self.hub.remove(conn, channel)
                conn.session.subscriptions.discard(channel)
                conn.log.info("subscription to {} ended: no active order with the driver", channel)
                conn.send_json({"type": "unsubscribed", "channel": channel, "ref": None, "reason": "forbidden"})

    # -- GPS -----------------------------------------------------------------------------------
    def _location(self, conn: Connection, action: Location) -> None:
        if not conn.gps_rate.take(time.monotonic()):
            conn.send_json(error("rate_limited", f"at most {GPS_POINTS_PER_S:g} locations per second",
                                 action.ref).body)
            return
        driver_id = conn.identity.user_id
        point = Point(driver_id, action.lat, action.lng, action.heading, action.speed, action.accuracy,
                      action.recorded_at)
        data = {"driver_id": driver_id, "lat": point.lat, "lng": point.lng, "heading": point.heading,
                "speed": point.speed, "accuracy": point.accuracy, "recorded_at": iso(point.recorded_at)}
        ts = iso(datetime.now(UTC))
        try:
            for channel in (driver_channel(driver_id), ALL_DRIVERS):
                self.hub.publish_ephemeral(channel, ephemeral_frame(channel, DRIVER_LOCATION, data, ts))
        except redis.RedisError as exc:
            conn.log.warning("live location fan-out failed: {}", exc)
        ref = action.ref

        def done(ok: bool) -> None:
            conn.send_json({"type": "ack", "ref": ref} if ok else
                           error("bad_request", "the point was refused by storage", ref).body)

        if not self.locations.accept(point, done):
            conn.send_json(error("unavailable", "location storage is saturated, retry", ref).body)

    # -- admin numbers -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        frames_out = self.hub.frames_out
        rate = (frames_out - self._last_frames_out) / max(now - self._last_stats_at, 1e-6)
        self._last_frames_out, self._last_stats_at = frames_out, now
        by_role = Counter(conn.identity.role for conn in self.connections)
        return {
            "id": self.id,
            "connections": len(self.connections),
            "by_role": dict(by_role),
            "subscriptions": sum(len(conn.subscriptions) for conn in self.connections),
            "messages_out_per_s": round(rate, 1),
            "slow_consumer_disconnects": self.slow_consumer_disconnects,
            "started_at": iso(self.started_at),
            "last_seen": iso(datetime.now(UTC)),
        }

    def _stats_forever(self) -> None:
        """Every gateway writes its numbers; whichever wins the period's lease publishes the sum.

        The lease (SET NX PX, one per 2 s period) replaces the old tie to the relay leader, so the
        frame keeps coming when relays run outside the gateways and never comes twice.
        """
        while self._running:
            try:
                gateway_stats.publish_instance(self.redis, self.snapshot())
                period = int(time.time() // STATS_EVERY_S)
                lease = f"{STATS_LEASE_PREFIX}{period}"
                if self.redis.set(lease, self.id, nx=True, px=int(STATS_EVERY_S * 1000 * 2)):
                    body = gateway_stats.read_all(self.redis)
                    frame = ephemeral_frame(ADMIN_CONNECTIONS, CONNECTIONS_STATS, body, iso(datetime.now(UTC)))
                    self.hub.publish_ephemeral(ADMIN_CONNECTIONS, frame)
            except redis.RedisError as exc:
                logger.debug("stats not published: {}", exc)
            gevent.sleep(STATS_EVERY_S - time.time() % STATS_EVERY_S + 0.01)
