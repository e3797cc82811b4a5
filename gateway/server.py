"""The gateway process: handshake, per-connection loop, subscriptions with recovery, drain."""

from __future__ import annotations

import os
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
from flask import Flask, g, jsonify, request
from flask_sock import Sock
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from common import gateway_stats
from common.access import check_subscribe
from common.auth import Identity, claims_of, verify_token
from common.config import Config
from common.db import claims, make_pool
from common.errors import DmsError, Forbidden, Unauthorized, Unavailable
from common.events import (
    ADMIN_CONNECTIONS,
    CONNECTIONS_STATS,
    DRIVER_LOCATION,
    RELAY_WATERMARK_KEY,
    Event,
    ephemeral_frame,
)
from common.profiles import ensure_profile
from common.redis_client import make_redis
from common.replication import REPLICATION
from gateway import metrics
from gateway.connection import MAX_QUEUED_FRAMES, Connection, Subscription
from gateway.hub import Hub
from gateway.locations import LocationWriter, Point
from gateway.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_TOKEN_EXPIRED,
    Close,
    Location,
    Reply,
    Session,
    Subscribe,
    TokenBucket,
    Unsubscribe,
    error,
    now_iso,
    subscribed,
    welcome,
)
from gateway.relay import PURGED_NAME, Relay

REPLAY_PAGE = 200
GPS_POINTS_PER_S = 5.0
GPS_BURST = 10.0
STATS_EVERY_S = 2.0
WATERMARK_WAIT_S = 3.0


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
        self.locations = LocationWriter(self.pool)
        self.relay: Relay | None = (
            Relay(listen_url=config.database_listen_url, redis_client=self.redis,
                  retention_hours=config.event_retention_hours)
            if run_relay else None
        )
        self.connections: set[Connection] = set()
        self.per_user: Counter[str] = Counter()
        self.draining = False
        self.slow_consumer_disconnects = 0
        self.started_at = datetime.now(UTC)
        self._running = False
        self._greenlets: list[gevent.Greenlet] = []
        self._last_frames_out = 0
        self._last_stats_at = time.monotonic()

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

    def drain(self, *, spread_s: float = 3.0) -> None:
        """Close clients with 1001 spread over `spread_s`, flush GPS, give up the relay, stop."""
        self.draining = True
        clients = list(self.connections)
        logger.info("draining {} connections over {}s", len(clients), spread_s)
        for index, conn in enumerate(clients):
            gevent.spawn_later(spread_s * index / max(len(clients), 1), conn.close, CLOSE_GOING_AWAY,
                               "server shutting down")
        deadline = time.monotonic() + spread_s + 5
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

    # -- handshake -----------------------------------------------------------------------------
    def admit(self) -> Identity:
        """Check a WebSocket handshake before upgrading; raise the HTTP error to answer instead."""
        if self.draining:
            raise Unavailable("this gateway is shutting down")
        origin = request.headers.get("Origin")
        allowed = self.config.allowed_origins
        if origin and "*" not in allowed and origin not in allowed:
            raise Forbidden("origin not allowed")
        token = request.args.get("token") or ""
        if not token:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else ""
        who = verify_token(token, self.config.jwt_secret.value)
        if self.per_user[who.user_id] >= self.config.ws_max_connections_per_user:
            from common.errors import RateLimited

            raise RateLimited("too many connections for this user", retry_after_s=5)
        return who

    # -- one connection ------------------------------------------------------------------------
    def serve(self, ws: Any, who: Identity) -> None:
        conn = Connection(
            connection_id=uuid.uuid4().hex,
            identity=who,
            ws=ws,
            session=Session(role=who.role, max_subscriptions=self.config.ws_max_subscriptions),
        )
        conn.gps_rate = TokenBucket(rate_per_s=GPS_POINTS_PER_S, burst=GPS_BURST)  # type: ignore[attr-defined]
        if who.role == "driver":
            self._ensure_driver(who)
        self.connections.add(conn)
        self.per_user[who.user_id] += 1
        conn.log.info("connected")
        conn.next_ping_at = time.monotonic() + self.config.ws_ping_interval_s
        try:
            conn.send_json(welcome(
                connection_id=conn.id, user_id=who.user_id, role=who.role,
                ping_interval_s=self.config.ws_ping_interval_s,
                max_subscriptions=self.config.ws_max_subscriptions, now=datetime.now(UTC),
            ))
            self._read_loop(conn)
        finally:
            for channel in list(conn.subscriptions):
                self.hub.remove(conn, channel)
            conn.subscriptions.clear()
            self.connections.discard(conn)
            self.per_user[who.user_id] -= 1
            if self.per_user[who.user_id] <= 0:
                del self.per_user[who.user_id]
            if conn.close_code == 4008:
                self.slow_consumer_disconnects += 1
                metrics.DISCONNECTS.labels("slow_consumer").inc()
            conn.closed.wait(timeout=5)
            conn.log.bind(close_code=conn.close_code or ws.close_reason).info("disconnected")

    def _ensure_driver(self, who: Identity) -> None:
        """A driver's first connection creates its profile and driver row (as the REST API does)."""
        try:
            with claims(claims_of(who)), self.pool.connection() as db:
                ensure_profile(db, who)
        except (DmsError, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            logger.warning("could not ensure the driver row: {}", exc)

    def _read_loop(self, conn: Connection) -> None:
        ws = conn.ws
        while ws.connected and not conn.closed.is_set():
            text = ws.receive(timeout=1.0)
            if text is None:
                continue
            metrics.FRAMES_IN.inc()
            for action in conn.session.receive(text, now_s=time.monotonic(), now=datetime.now(UTC)):
                self._act(conn, action)

    def _act(self, conn: Connection, action: Any) -> None:
        if isinstance(action, Reply):
            conn.send_json(action.body)
        elif isinstance(action, Subscribe):
            gevent.spawn(self._subscribe, conn, action)
        elif isinstance(action, Unsubscribe):
            conn.subscriptions.pop(action.channel, None)
            self.hub.remove(conn, action.channel)
            conn.send_json({"type": "unsubscribed", "channel": action.channel, "ref": action.ref})
        elif isinstance(action, Location):
            self._location(conn, action)
        elif isinstance(action, Close):
            conn.close(action.code, action.reason)

    def _timers_forever(self) -> None:
        """Keepalive and token expiry for every connection from one loop, not two greenlets each.

        Each tick: a connection whose token has expired is closed with 4001; one due a ping gets a
        WebSocket ping; one whose ping went unanswered for the timeout is closed with 1011.
        """
        interval, timeout = self.config.ws_ping_interval_s, self.config.ws_ping_timeout_s
        tick_s = max(0.02, min(interval, timeout) / 5)
        while self._running:
            now, wall = time.monotonic(), time.time()
            for conn in list(self.connections):
                if conn.closed.is_set():
                    continue
                if wall >= conn.identity.expires_at:
                    conn.close(CLOSE_TOKEN_EXPIRED, "token expired")
                elif conn.ping_sent_at is not None:
                    if conn.ws.pong_received:
                        conn.ping_sent_at = None
                        conn.next_ping_at = now + interval
                    elif now - conn.ping_sent_at >= timeout:
                        conn.log.info("no pong within {}s", timeout)
                        conn.close(CLOSE_INTERNAL, "keepalive ping timeout")
                        metrics.DISCONNECTS.labels("ping_timeout").inc()
                elif now >= conn.next_ping_at:
                    conn.ws.pong_received = False
                    conn.ping_sent_at = now
                    conn.ping()
            gevent.sleep(tick_s)

    # -- subscriptions and recovery --------------------------------------------------------------
    def _subscribe(self, conn: Connection, action: Subscribe) -> None:
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
            watermark = self._watermark()
            recovered = action.since is not None and action.since >= self._purged_through()
            conn.send_json(subscribed(channel, ref, watermark, recovered))
            if recovered:
                assert action.since is not None
                self._replay(conn, channel, sub, after=action.since, upto=watermark)
            else:
                sub.last_id = watermark
            conn.go_live(channel)
            conn.session.subscribe_done(channel, ok=True)
        except (DmsError, psycopg.Error, psycopg_pool.PoolTimeout, redis.RedisError) as exc:
            conn.subscriptions.pop(channel, None)
            self.hub.remove(conn, channel)
            conn.session.subscribe_done(channel, ok=False)
            code = exc.code if isinstance(exc, DmsError) else "unavailable"
            message = exc.message if isinstance(exc, DmsError) else "the event store is unavailable"
            conn.send_json(error(code, message, ref).body)

    def _watermark(self) -> int:
        """The id up to which the relay has published; events above it will arrive live."""
        deadline = time.monotonic() + WATERMARK_WAIT_S
        while True:
            value = self.redis.get(RELAY_WATERMARK_KEY)
            if value is not None:
                return int(value)
            if time.monotonic() > deadline:
                raise Unavailable("the relay has not published its position yet")
            gevent.sleep(0.05)

    def _purged_through(self) -> int:
        with self.pool.connection() as db:
            row = db.execute("SELECT last_id FROM relay_cursor WHERE name = %s", (PURGED_NAME,)).fetchone()
        return int(row["last_id"]) if row else 0

    def _replay(self, conn: Connection, channel: str, sub: Subscription, *, after: int, upto: int) -> None:
        """Send the channel's stored events in (after, upto], paced by the client's queue."""
        cursor = after
        while cursor < upto and not conn.closed.is_set():
            while conn.queued_frames > MAX_QUEUED_FRAMES // 2 and not conn.closed.is_set():
                gevent.sleep(0.01)
            with self.pool.connection() as db:
                rows = db.execute(
                    "SELECT id, channels, event, data, created_at FROM events"
                    " WHERE channels @> ARRAY[%s]::text[] AND id > %s AND id <= %s ORDER BY id LIMIT %s",
                    (channel, cursor, upto, REPLAY_PAGE),
                ).fetchall()
            if not rows:
                break
            for row in rows:
                conn.enqueue(Event.from_row(row).frame(channel))
            cursor = int(rows[-1]["id"])
        sub.last_id = max(after, upto)

    def resync_all(self) -> None:
        """After Redis came back: refill every live subscription from PostgreSQL, then go live."""
        for conn in list(self.connections):
            gevent.spawn(self._resync, conn)

    def _resync(self, conn: Connection) -> None:
        for channel, sub in list(conn.subscriptions.items()):
            if sub.buffer is not None:
                continue  # a subscribe in progress replays by itself
            sub.buffer = []
            try:
                watermark = self._watermark()
                after = sub.last_id if sub.last_id is not None else watermark
                self._replay(conn, channel, sub, after=after, upto=watermark)
            except (DmsError, psycopg.Error, psycopg_pool.PoolTimeout, redis.RedisError) as exc:
                conn.log.warning("resync failed, closing so the client recovers: {}", exc)
                conn.close(CLOSE_INTERNAL, "resynchronisation failed, reconnect with since")
                return
            conn.go_live(channel)

    # -- GPS -----------------------------------------------------------------------------------
    def _location(self, conn: Connection, action: Location) -> None:
        if not conn.gps_rate.take(time.monotonic()):  # type: ignore[attr-defined]
            conn.send_json(error("rate_limited", f"at most {GPS_POINTS_PER_S:g} locations per second",
                                 action.ref).body)
            return
        driver_id = conn.identity.user_id
        point = Point(driver_id, action.lat, action.lng, action.heading, action.speed, action.accuracy,
                      action.recorded_at)
        channel = f"driver:{driver_id}"
        frame = ephemeral_frame(channel, DRIVER_LOCATION, {
            "driver_id": driver_id, "lat": point.lat, "lng": point.lng, "heading": point.heading,
            "speed": point.speed, "accuracy": point.accuracy, "recorded_at": now_iso(point.recorded_at),
        }, now_iso(datetime.now(UTC)))
        try:
            self.hub.publish_ephemeral(channel, frame)
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
            "started_at": now_iso(self.started_at),
            "last_seen": now_iso(datetime.now(UTC)),
        }

    def _stats_forever(self) -> None:
        while self._running:
            try:
                gateway_stats.publish_instance(self.redis, self.snapshot())
                if self.relay is not None and self.relay.is_leader:
                    body = gateway_stats.read_all(self.redis)
                    frame = ephemeral_frame(ADMIN_CONNECTIONS, CONNECTIONS_STATS, body, now_iso(datetime.now(UTC)))
                    self.hub.publish_ephemeral(ADMIN_CONNECTIONS, frame)
            except redis.RedisError as exc:
                logger.debug("stats not published: {}", exc)
            gevent.sleep(STATS_EVERY_S)


def create_gateway_app(gateway: Gateway) -> Flask:
    app = Flask(__name__)
    app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": gateway.config.ws_max_message_bytes}
    sock = Sock(app)

    @app.before_request
    def _handshake() -> Any:
        if request.path != "/ws":
            return None
        try:
            g.identity = gateway.admit()
        except DmsError as exc:
            body = {"error": {"code": exc.code, "message": exc.message, "details": None}}
            headers = {"Retry-After": str(getattr(exc, "retry_after_s", 1))} if exc.status in (429, 503) else {}
            if isinstance(exc, Unauthorized):
                headers["WWW-Authenticate"] = "Bearer"
            return jsonify(body), exc.status, headers
        return None

    @sock.route("/ws")
    def websocket(ws: Any) -> None:
        gateway.serve(ws, g.identity)

    metrics.GATEWAYS.track(gateway)

    @app.get("/metrics")
    def prometheus_metrics() -> Any:
        return generate_latest(REGISTRY), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    @app.get("/health")
    def health() -> Any:
        if gateway.draining:
            return jsonify({"status": "draining", "id": gateway.id}), 503
        return jsonify({"status": "ok", "id": gateway.id, "connections": len(gateway.connections),
                        "relay_leader": bool(gateway.relay and gateway.relay.is_leader)})

    return app
