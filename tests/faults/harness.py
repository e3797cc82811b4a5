"""Fault harness: a private stack (one API, two gateways), a live stream and loss accounting.

The stream has three kinds of client, each in its own thread, each behaving as the contract asks
a real client to: a REST writer that retries with backoff and an Idempotency-Key, a driver
sending GPS points over the WebSocket, and subscribers of `orders` that reconnect with backoff,
jitter and `since`. After a fault, `Stream.finish` waits until every subscriber holds every event
PostgreSQL has for `orders` in the test window, and counts what was lost, repeated or reordered.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

from common.auth import mint_token
from common.db import connect
from common.events import ALL_ORDERS, RELAY_WATERMARK_KEY, publish_ephemeral
from devstack import embedded
from relay.loop import LEADER_LOCK_KEY
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import Process, http_json, seconds, wait_for

FAST_LIMITS = {"RATE_LIMIT_IP": "1000000/minute", "RATE_LIMIT_USER": "1000000/hour"}
NEXT_STATUS = {"pending": "confirmed", "confirmed": "preparing", "preparing": "ready"}


def admin_token() -> str:
    return mint_token(JWT_SECRET, role="admin", sub=str(uuid.uuid4()), ttl_s=3600)


# -- processes --------------------------------------------------------------------------------------
@dataclass
class GatewayProcess:
    name: str
    process: Process
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def kill(self) -> None:
        self.process.proc.send_signal(signal.SIGKILL)
        self.process.proc.wait(timeout=10)


@dataclass
class Stack:
    """The private infrastructure plus the processes one fault test runs."""

    infra: Infra
    logs: Path
    api_url: str = ""
    restaurant_id: str = ""
    product_ids: list[str] = field(default_factory=list)
    gateways: list[GatewayProcess] = field(default_factory=list)
    relays: dict[str, Process] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    _processes: list[Process] = field(default_factory=list)

    def start(self, *, gateways: int = 2, relays: int = 0, **gateway_settings: str) -> Stack:
        self.seed()
        port = embedded.free_port()
        api = self._spawn("api", "api", API_PORT=str(port), **FAST_LIMITS)
        api.wait_http_ok(f"http://127.0.0.1:{port}/ready")
        self.api_url = f"http://127.0.0.1:{port}"
        for n in range(relays):
            name = f"relay-{'ab'[n]}"
            self.relays[name] = self._spawn("relay", name, PGAPPNAME=name, RELAY_PORT=str(embedded.free_port()))
        for n in range(gateways):
            port = embedded.free_port()
            name = f"gw-{'ab'[n]}"
            process = self._spawn("gateway", name, GATEWAY_PORT=str(port), GATEWAY_ID=name,
                                  RELAY_IN_GATEWAY="false" if relays else "true", **gateway_settings)
            self.gateways.append(GatewayProcess(name, process, port))
        for gw in self.gateways:
            gw.process.wait_http_ok(gw.http + "/health")
        wait_for(self._relay_published, timeout_s=20, message="a relay publishing its position")
        return self

    def _spawn(self, module: str, name: str, **settings: str) -> Process:
        process = Process(module, self.infra.env(**settings), self.logs / f"{name}.log")
        self._processes.append(process)
        return process

    def seed(self) -> None:
        self.restaurant_id = str(uuid.uuid4())
        with connect(self.infra.database_url) as conn:
            conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, 'Fault kitchen')", (self.restaurant_id,))
            for n in range(2):
                row = conn.execute("INSERT INTO products (name, category, price, active)"
                                   " VALUES (%s, 'produce', '2.50', true) RETURNING id", (f"fault product {n}",)
                                   ).fetchone()
                assert row is not None
                self.product_ids.append(str(row["id"]))
            conn.commit()

    def _relay_published(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.infra.redis_url)
        try:
            return client.get(RELAY_WATERMARK_KEY) is not None
        except redis.RedisError:
            return False
        finally:
            client.close()

    def live_urls(self) -> list[str]:
        return [gw.url for gw in self.gateways if gw.alive()]

    def last_event_id(self) -> int:
        with connect(self.infra.database_url) as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()
        return int(row["id"]) if row else 0

    def relay_leader(self) -> str | None:
        """The application name of the relay session holding the leader's advisory lock."""
        with connect(self.infra.database_url) as conn:
            row = conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s",
                (LEADER_LOCK_KEY & 0xFFFFFFFF,),
            ).fetchone()
        return str(row["application_name"]) if row else None

    def publish_big(self, channel: str, count: int, *, size: int = 60_000, pause_s: float = 0.0,
                    until: Callable[[], bool] | None = None) -> int:
        """Publish ephemeral frames of about `size` bytes straight to a channel; return how many."""
        import redis

        client = redis.Redis.from_url(self.infra.redis_url)
        pad = "x" * size
        sent = 0
        try:
            for n in range(count):
                frame = json.dumps({"type": "event", "channel": channel, "id": None, "event": "test.bulk",
                                    "data": {"n": n, "pad": pad}, "ts": "2026-01-01T00:00:00Z"})
                publish_ephemeral(client, channel, frame)
                sent += 1
                if pause_s:
                    time.sleep(pause_s)
                if until is not None and n % 10 == 9 and until():
                    break
        finally:
            client.close()
        return sent

    def stop(self) -> None:
        for stream in self.streams:
            stream.stop_all()
        for cleanup in self.cleanups:
            cleanup()
        # Signal every process first, then wait: a gateway's drain takes seconds, and draining the
        # gateways one after the other made each test's teardown wait for the sum.
        running = [process for process in reversed(self._processes) if process.proc.poll() is None]
        for process in running:
            process.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            process.proc.send_signal(signal.SIGTERM)
        for process in reversed(self._processes):
            process.stop(timeout_s=15)


# -- the REST writer ----------------------------------------------------------------------------------
@dataclass
class RestCounts:
    sent: int = 0  # logical requests (an order created, a status changed)
    attempts: int = 0
    retried_ok: int = 0  # failed at least once, then succeeded
    failed: int = 0  # failed every attempt
    slowest_s: float = 0.0  # the longest single attempt
    failures: list[str] = field(default_factory=list)


class RestWriter:
    """Creates orders and moves them through statuses over real HTTP, retrying with backoff."""

    def __init__(self, stack: Stack, *, max_attempts: int = 12, pause_s: float = 0.05) -> None:
        self.stack = stack
        self.token = admin_token()
        self.max_attempts = max_attempts
        self.pause_s = pause_s
        self.counts = RestCounts()
        self._active: list[dict[str, Any]] = []
        self._created = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RestWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=seconds(60))

    def _run(self) -> None:
        while not self._stop.is_set():
            if len(self._active) < 4:
                self._create()
            else:
                self._advance(self._active[0])
            time.sleep(self.pause_s)

    def _create(self) -> None:
        body = {"restaurant_id": self.stack.restaurant_id, "customer_name": "fault test",
                "items": [{"product_id": pid, "quantity": 1} for pid in self.stack.product_ids]}
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        order = self._send("POST", "/api/orders", body, headers, ok=201)
        if order is not None:
            self._created += 1
            self._active.append(order)

    def _advance(self, order: dict[str, Any]) -> None:
        cancel = self._created % 4 == 0 and order["status"] == "confirmed"
        target = "cancelled" if cancel else NEXT_STATUS[order["status"]]

        def already_there() -> bool:  # an earlier attempt may have committed before failing
            status, _, body = http_json("GET", f"{self.stack.api_url}/api/orders/{order['id']}",
                                        token=self.token, timeout_s=5)
            return status == 200 and body["status"] == target

        updated = self._send("POST", f"/api/orders/{order['id']}/status",
                             {"status": target, "version": order["version"]}, {}, ok=200, done=already_there)
        self._active.remove(order)
        if updated is not None and updated["status"] in NEXT_STATUS:
            self._active.append(updated)

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str], *, ok: int,
              done: Callable[[], bool] | None = None) -> dict[str, Any] | None:
        self.counts.sent += 1
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            self.counts.attempts += 1
            began = time.monotonic()
            try:
                status, _, reply = http_json(method, self.stack.api_url + path, body, token=self.token,
                                             headers=headers, timeout_s=5)
                if status == 409 and attempt > 1 and done is not None and done():
                    status, reply = ok, self._reload(path)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                status, reply = 0, {"error": type(exc).__name__}
            self.counts.slowest_s = max(self.counts.slowest_s, time.monotonic() - began)
            if status == ok and reply is not None:
                if attempt > 1:
                    self.counts.retried_ok += 1
                return dict(reply)
            last = f"{method} {path} -> {status} {reply}"
            if self._stop.is_set() and attempt > 3:
                break
            time.sleep(min(0.1 * 2 ** (attempt - 1), 1.0))
        self.counts.failed += 1
        self.counts.failures.append(last[:300])
        return None

    def _reload(self, path: str) -> dict[str, Any] | None:
        order_id = path.split("/")[3]
        status, _, body = http_json("GET", f"{self.stack.api_url}/api/orders/{order_id}", token=self.token,
                                    timeout_s=5)
        return dict(body) if status == 200 else None


# -- WebSocket clients ------------------------------------------------------------------------------
def _close_code(data: bytes) -> int:
    return int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005


class _Client:
    """A thread that keeps a WebSocket session up, reconnecting with exponential backoff and jitter."""

    def __init__(self, name: str, urls: Callable[[], list[str]], token: str, *, first: int = 0) -> None:
        self.name = name
        self.urls = urls
        self.token = token
        self.connects = 0
        self.errors: list[str] = []
        self.close_codes: list[int] = []
        self._next = first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> _Client:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=seconds(10))

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            urls = self.urls()
            url = urls[self._next % len(urls)] if urls else None
            self._next += 1
            healthy = False
            if url is not None:
                try:
                    ws = websocket.create_connection(f"{url}?token={self.token}", timeout=seconds(5),
                                                     sockopt=self.sockopt())
                except (OSError, websocket.WebSocketException) as exc:
                    self.errors.append(f"connect: {type(exc).__name__}")
                else:
                    try:
                        self.connects += 1
                        healthy = self.session(ws)
                    except (OSError, websocket.WebSocketException, ValueError) as exc:
                        self.errors.append(f"session: {type(exc).__name__}")
                    finally:
                        ws.shutdown()
            failures = 0 if healthy else failures + 1
            if not self._stop.is_set():
                delay = min(0.05 * 2 ** failures, 1.0)
                time.sleep(delay * random.uniform(0.5, 1.0))

    def sockopt(self) -> tuple[tuple[int, int, int], ...]:
        return ()

    def session(self, ws: websocket.WebSocket) -> bool:
        raise NotImplementedError

    def read(self, ws: websocket.WebSocket, timeout_s: float) -> dict[str, Any] | None:
        """The next text frame, or None on a timeout; a close frame raises ConnectionAbortedError."""
        ws.settimeout(timeout_s)
        try:
            opcode, raw = ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close_codes.append(_close_code(raw))
            raise ConnectionAbortedError(f"closed by the server with {_close_code(raw)}")
        if opcode != websocket.ABNF.OPCODE_TEXT:
            return None
        return dict(json.loads(raw))


class Subscriber(_Client):
    """Follows `orders` from `since`; records every event id it handles, in arrival order."""

    def __init__(self, name: str, urls: Callable[[], list[str]], *, since: int, first: int = 0) -> None:
        self.user_id = str(uuid.uuid4())
        super().__init__(name, urls, mint_token(JWT_SECRET, role="admin", sub=self.user_id, ttl_s=3600),
                         first=first)
        self.extra_channels: list[str] = []  # held besides `orders`, for ephemeral test traffic
        self.last_id = since
        self.received: list[int] = []
        self.arrived_at: dict[int, float] = {}
        self.not_recovered = 0
        self.stalled = threading.Event()
        self.small_buffer = False

    def sockopt(self) -> tuple[tuple[int, int, int], ...]:
        return ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),) if self.small_buffer else ()

    def session(self, ws: websocket.WebSocket) -> bool:
        subscribed = False
        ws.send(json.dumps({"type": "subscribe", "channel": ALL_ORDERS, "since": self.last_id, "ref": "sub"}))
        for channel in self.extra_channels:
            ws.send(json.dumps({"type": "subscribe", "channel": channel, "ref": "extra"}))
        while not self._stop.is_set():
            if self.stalled.is_set():
                time.sleep(0.02)  # a client that stopped reading
                continue
            frame = self.read(ws, 0.2)
            if frame is None:
                continue
            kind = frame.get("type")
            if kind == "subscribed" and frame.get("ref") == "sub":
                subscribed = True
                if not frame.get("recovered"):
                    self.not_recovered += 1
            elif kind == "error" and frame.get("ref") in ("sub", "extra"):
                self.errors.append(f"subscribe: {frame.get('code')}")
                return False
            elif kind == "event" and frame.get("channel") == ALL_ORDERS and frame.get("id") is not None:
                event_id = int(frame["id"])
                self.received.append(event_id)
                self.arrived_at.setdefault(event_id, time.time())
                self.last_id = max(self.last_id, event_id)
        return subscribed


class GpsDriver(_Client):
    """A driver sending a point every ~250 ms, each with a unique (lat, lng) to find it in storage."""

    def __init__(self, name: str, urls: Callable[[], list[str]], *, every_s: float = 0.25, first: int = 0) -> None:
        self.driver_id = str(uuid.uuid4())
        super().__init__(name, urls, mint_token(JWT_SECRET, role="driver", sub=self.driver_id, ttl_s=3600),
                         first=first)
        self.every_s = every_s
        self.points: dict[str, tuple[float, float]] = {}
        self.acked: set[str] = set()
        self.refused: list[str] = []
        self._n = 0

    def session(self, ws: websocket.WebSocket) -> bool:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_at:
                self._n += 1
                ref = f"p{self._n}"
                lat, lng = round(10 + self._n * 0.0001, 6), round(20 + self._n * 0.0001, 6)
                ws.send(json.dumps({"type": "location", "lat": lat, "lng": lng, "ref": ref}))
                self.points[ref] = (lat, lng)
                next_at += self.every_s
            frame = self.read(ws, max(next_at - time.monotonic(), 0.01))
            if frame is None:
                continue
            if frame.get("type") == "ack":
                self.acked.add(str(frame.get("ref")))
            elif frame.get("type") == "error":
                self.refused.append(str(frame.get("code")))
        return True

    def acked_points(self) -> set[tuple[float, float]]:
        return {self.points[ref] for ref in self.acked if ref in self.points}


# -- one run ---------------------------------------------------------------------------------------------
@dataclass
class FaultResult:
    fault: str
    written: int
    delivered: list[int]
    missing: int
    duplicates: int
    out_of_order: int
    not_recovered: int
    reconnects: int
    gps_sent: int
    gps_acked: int
    gps_acked_stored: int
    rest_sent: int
    rest_retried_ok: int
    rest_failed: int
    rest_slowest_s: float
    recovery_s: float | None
    notes: str = ""
    details: list[str] = field(default_factory=list)

    @property
    def lossless(self) -> bool:
        return (self.missing == 0 and self.duplicates == 0 and self.out_of_order == 0
                and self.not_recovered == 0 and self.gps_acked_stored == self.gps_acked and self.rest_failed == 0)


class Stream:
    """Writer, driver and subscribers running against a stack, and the accounting afterwards."""

    def __init__(self, stack: Stack, *, subscribers: int = 3,
                 subscriber_urls: Callable[[], list[str]] | None = None,
                 gps_urls: Callable[[], list[str]] | None = None) -> None:
        self.stack = stack
        self.start_id = stack.last_event_id()
        urls = subscriber_urls or stack.live_urls
        self.subscribers = [Subscriber(f"sub-{n}", urls, since=self.start_id, first=n) for n in range(subscribers)]
        self.gps = GpsDriver("gps", gps_urls or stack.live_urls)
        self.writer = RestWriter(stack)
        self.fault_at: float | None = None
        stack.streams.append(self)

    def start(self) -> Stream:
        for sub in self.subscribers:
            sub.start()
        self.gps.start()
        self.writer.start()
        wait_for(lambda: all(len(sub.received) >= 3 for sub in self.subscribers) and len(self.gps.acked) >= 3,
                 timeout_s=20, interval_s=0.05, message="the stream flowing to every client")
        return self

    def stop_all(self) -> None:
        self.writer.stop()
        self.gps.stop()
        for sub in self.subscribers:
            sub.stop()

    def mark_fault(self) -> None:
        self.fault_at = time.time()

    def _written(self) -> list[int]:
        with connect(self.stack.infra.database_url) as conn:
            rows = conn.execute("SELECT id FROM events WHERE %s = ANY(channels) AND id > %s ORDER BY id",
                                (ALL_ORDERS, self.start_id)).fetchall()
        return [int(row["id"]) for row in rows]

    def _first_after_fault(self) -> int | None:
        with connect(self.stack.infra.database_url) as conn:
            row = conn.execute(
                "SELECT min(id) AS id FROM events WHERE %s = ANY(channels) AND id > %s"
                " AND created_at >= to_timestamp(%s)", (ALL_ORDERS, self.start_id, self.fault_at or 0)).fetchone()
        return int(row["id"]) if row and row["id"] is not None else None

    def _stored_points(self) -> set[tuple[float, float]]:
        with connect(self.stack.infra.database_url) as conn:
            rows = conn.execute("SELECT lat, lng FROM driver_locations WHERE driver_id = %s",
                                (self.gps.driver_id,)).fetchall()
        return {(round(row["lat"], 6), round(row["lng"], 6)) for row in rows}

    def finish(self, fault: str, *, settle_s: float = 20.0, notes: str = "") -> FaultResult:
        """Stop writing, wait (bounded) until every subscriber has every event, then count."""
        self.writer.stop()
        self.gps.stop()
        written: list[int] = []

        def everyone_has_everything() -> bool:
            nonlocal written
            written = self._written()
            return all(set(written) <= set(sub.received) for sub in self.subscribers)

        try:
            wait_for(everyone_has_everything, timeout_s=settle_s, interval_s=0.1, message="every event delivered")
        except AssertionError:
            pass  # counted below as missing
        acked = self.gps.acked_points()
        stored: set[tuple[float, float]] = set()
        try:
            stored = wait_for(lambda: (s := self._stored_points()) >= acked and s, timeout_s=5,
                              message="acked points stored") if acked else set()
        except AssertionError:
            stored = self._stored_points()
        for sub in self.subscribers:
            sub.stop()
        first = self._first_after_fault()
        recovery: float | None = None
        if first is not None and self.fault_at is not None and all(first in s.arrived_at for s in self.subscribers):
            recovery = max(s.arrived_at[first] for s in self.subscribers) - self.fault_at
        expected = set(written)
        details = [f"{s.name}: connects {s.connects}, closes {s.close_codes[:8]}, errors {s.errors[:6]}"
                   for s in self.subscribers]
        details.append(f"gps: connects {self.gps.connects}, refused {self.gps.refused[:6]},"
                       f" errors {self.gps.errors[:6]}")
        details += self.writer.counts.failures[:5]
        return FaultResult(
            fault=fault,
            written=len(written),
            delivered=[len(set(s.received) & expected) for s in self.subscribers],
            missing=sum(len(expected - set(s.received)) for s in self.subscribers),
            duplicates=sum(len(s.received) - len(set(s.received)) for s in self.subscribers),
            out_of_order=sum(sum(1 for a, b in zip(s.received, s.received[1:], strict=False) if b <= a)
                             for s in self.subscribers),
            not_recovered=sum(s.not_recovered for s in self.subscribers),
            reconnects=sum(s.connects - 1 for s in self.subscribers),
            gps_sent=len(self.gps.points),
            gps_acked=len(acked),
            gps_acked_stored=len(acked & stored),
            rest_sent=self.writer.counts.sent,
            rest_retried_ok=self.writer.counts.retried_ok,
            rest_failed=self.writer.counts.failed,
            rest_slowest_s=self.writer.counts.slowest_s,
            recovery_s=recovery,
            notes=notes,
            details=details,
        )


def assert_lossless(result: FaultResult) -> None:
    summary = (f"{result.fault}: written {result.written}, delivered {result.delivered}, missing {result.missing}, "
               f"duplicates {result.duplicates}, out of order {result.out_of_order}, "
               f"not recovered {result.not_recovered}, GPS acked {result.gps_acked} stored "
               f"{result.gps_acked_stored}, REST failed {result.rest_failed}; " + "; ".join(result.details))
    print("\n" + summary)
    assert result.written > 0, summary
    assert result.lossless, summary
