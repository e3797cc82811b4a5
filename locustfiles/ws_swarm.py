"""WebSocket swarm: restaurants watch their boards, drivers stream GPS and deliver, admins watch everything.

    locust -f locustfiles/ws_swarm.py --host http://127.0.0.1:8000 --gateway-url ws://127.0.0.1:8001/ws \
        --headless -u 100 -r 20 -t 60s

dms_client clients (one reader greenlet each under locust's gevent) speaking the contract protocol.
Commit-to-receipt latency (event `ts` to arrival) is reported per event name as request type
`WS`; location acks as `WS ack`. At the end every stored event of every subscribed channel in
the run window is read from PostgreSQL (DATABASE_URL) and compared with what each client got:
any missing, duplicated or out-of-order event fails the run, as do the usual thresholds.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import deque
from datetime import datetime
from typing import Any

import gevent
import swarm_support as support
from locust import User, between, events, task
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment

from dms_client import DmsClient

DRAIN_S = float(os.environ.get("DMS_WS_DRAIN_S", "10"))


class Subscription:
    """What one client got on one channel: the start watermark and every stored event id, in order."""

    def __init__(self, who: str, channel: str) -> None:
        self.who, self.channel = who, channel
        self.start_id: int | None = None
        self.ids: list[int] = []

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else self.start_id


REGISTRY: list[Subscription] = []
OPEN_CLIENTS: list[DmsClient] = []
CLAIMED: set[str] = set()
# Orders this swarm created: its admins move only these, never another swarm's (no 409 races).
CREATED: set[str] = set()
DRIVERS: list[str] = []
RESULT: dict[str, int] = {}
EXAMPLES: list[dict[str, Any]] = []  # a few missing events, to say where to look


class WsUser(User):
    """One WebSocket connection with a reader greenlet that outlives the user's tasks (for draining)."""

    abstract = True
    role = "admin"

    def on_start(self) -> None:
        self.user_id, self.bearer = self.identity()
        self.http = FastHttpSession(self.host, self.environment.events.request, user=self)
        self.headers = support.auth(self.bearer)
        self.subs: dict[str, Subscription] = {}
        self.pending_acks: dict[str, float] = {}
        self.inbox: deque[dict[str, Any]] = deque(maxlen=1000)
        self.stopping = False
        self.prepare()
        # The client reconnects with full jitter and resubscribes with `since`; the swarm counts
        # every frame as it arrives (before the client drops duplicates), so a duplicate still fails the run.
        self.client = DmsClient(self.environment.parsed_options.gateway_url, token=self.bearer, api_url=self.host,
                                timeout_s=15)
        self.client.on("frame", self._on_frame)
        self.client.on("welcome", lambda _: self._fire("WS", "connect", (time.perf_counter() - self.started) * 1000))
        self.client.on("state", self._on_state)
        for channel in self.channels():
            sub = self.subs.setdefault(channel, Subscription(self.user_id, channel))
            REGISTRY.append(sub)
            self.client.subscribe(channel)
        self.started = time.perf_counter()
        OPEN_CLIENTS.append(self.client.start())

    @property
    def ws(self) -> DmsClient | None:
        return self.client if self.client.connected else None

    def identity(self) -> tuple[str, str]:
        return support.token(self.role)

    def prepare(self) -> None:
        """REST calls needed before connecting (a driver goes online first)."""

    def channels(self) -> list[str]:
        raise NotImplementedError

    def on_stop(self) -> None:
        # Tasks stop here, the socket does not: events committed before the end must still arrive.
        self.stopping = True

    def _on_state(self, state: str, detail: dict[str, Any]) -> None:
        if state == "reconnecting" and detail and not self.stopping:
            self._fire("WS", "disconnect", 0, ConnectionError(f"attempt {detail.get('attempt')}"))
        if state in ("connecting", "reconnecting"):
            self.started = time.perf_counter()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        now = time.time()
        kind = frame.get("type")
        events_ = frame.get("events", []) if kind == "batch" else [frame] if kind == "event" else []
        for event in events_:
            latency_ms = (now - datetime.fromisoformat(event["ts"]).timestamp()) * 1000
            self._fire("WS", event["event"], max(latency_ms, 0.0))
            sub = self.subs.get(event["channel"])
            if event.get("id") is not None and sub is not None:
                sub.ids.append(int(event["id"]))
            self.inbox.append(event)
        if kind == "subscribed":
            sub = self.subs[frame["channel"]]
            if sub.start_id is None:
                sub.start_id = frame["last_event_id"] or 0
        elif kind == "ack":
            sent = self.pending_acks.pop(frame.get("ref") or "", None)
            if sent is not None:
                self._fire("WS ack", "location", (time.perf_counter() - sent) * 1000)
        elif kind == "error":
            self._fire("WS", f"error {frame.get('code')}", 0, RuntimeError(frame.get("message")))

    def _fire(self, request_type: str, name: str, ms: float, exception: Exception | None = None,
              length: int = 0) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name, response_time=ms,
                                             response_length=length, exception=exception, context={})

    def post(self, path: str, body: dict[str, Any], name: str, **headers: str) -> dict[str, Any] | None:
        with self.http.post(path, json=body, headers={**self.headers, **headers}, name=name,
                            catch_response=True) as response:
            if response.status_code in (200, 201, 202):
                return response.json()  # type: ignore[no-any-return]
            response.failure(f"HTTP {response.status_code}")
        return None


class RestaurantWatcher(WsUser):
    """A restaurant's order board: watches restaurant:RID and places an order now and then."""

    weight = 6
    role = "restaurant"
    wait_time = between(3, 7)

    def identity(self) -> tuple[str, str]:
        self.restaurant_id = random.choice(support.RESTAURANT_IDS)
        return support.token("restaurant", restaurant_id=self.restaurant_id)

    def channels(self) -> list[str]:
        return [f"restaurant:{self.restaurant_id}"]

    @task
    def place_order(self) -> None:
        order = self.post("/api/orders", support.order_body(), "/api/orders",
                          **{"Idempotency-Key": os.urandom(8).hex()})
        if order is not None:
            CREATED.add(order["id"])


class DriverStreamer(WsUser):
    """A driver: GPS at 1 Hz over the socket (acked), delivers orders that reach it as ready."""

    weight = 2
    role = "driver"
    wait_time = between(0.9, 1.1)

    def prepare(self) -> None:
        self.lat, self.lng = 52.37 + random.uniform(-0.05, 0.05), 4.89 + random.uniform(-0.05, 0.05)
        if self.post("/api/drivers/me/status", {"status": "online"}, "/api/drivers/me/status") is not None:
            DRIVERS.append(self.user_id)

    def on_stop(self) -> None:
        super().on_stop()
        if self.user_id in DRIVERS:
            DRIVERS.remove(self.user_id)

    def channels(self) -> list[str]:
        return [f"driver:{self.user_id}"]

    @task
    def drive(self) -> None:
        while self.inbox:
            frame = self.inbox.popleft()
            data = frame.get("data") or {}
            if frame["event"] == "order.status_changed" and data.get("driver_id") == self.user_id:
                move = {"ready": "delivering", "delivering": "delivered"}.get(data.get("status", ""))
                if move:
                    self.post(f"/api/orders/{data['order_id']}/status", {"status": move},
                              f"/api/orders/[id]/status -> {move} (driver)")
        if self.ws is None:
            return
        self.lat += random.uniform(-0.0005, 0.0005)
        self.lng += random.uniform(-0.0005, 0.0005)
        ref = os.urandom(6).hex()
        self.pending_acks[ref] = time.perf_counter()
        if not self.ws.send({"type": "location", "lat": self.lat, "lng": self.lng, "speed": 8.0, "heading": 90.0,
                             "ref": ref}):
            self.pending_acks.pop(ref, None)


class AdminWatcher(WsUser):
    """Dispatch: watches `orders` and `admin:connections`, moves new orders on to a driver."""

    weight = 1
    role = "admin"
    wait_time = between(0.3, 0.7)

    def channels(self) -> list[str]:
        return ["orders", "admin:connections"]

    @task
    def dispatch(self) -> None:
        while self.inbox:
            frame = self.inbox.popleft()
            if frame["event"] != "order.created" or not DRIVERS:
                continue
            order_id = frame["data"]["order_id"]
            if order_id in CLAIMED or order_id not in CREATED:
                continue  # another admin has it, or another swarm made it
            CLAIMED.add(order_id)
            for status in ("confirmed", "preparing"):
                if self.post(f"/api/orders/{order_id}/status", {"status": status},
                             f"/api/orders/[id]/status -> {status}") is None:
                    break
            else:
                if DRIVERS and self.post(f"/api/orders/{order_id}/assign", {"driver_id": random.choice(DRIVERS)},
                                         "/api/orders/[id]/assign") is not None:
                    self.post(f"/api/orders/{order_id}/status", {"status": "ready"},
                              "/api/orders/[id]/status -> ready")
            return  # one order per task keeps the request rate even


# -- delivery accounting --------------------------------------------------------------------------
def account(environment: Environment) -> dict[str, int]:
    """Compare every subscription's received ids with what PostgreSQL stored on that channel."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        print("delivery: DATABASE_URL is not set; events cannot be checked against the database", flush=True)
        return {}
    from common.db import connect

    with connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()
        end_id = int(row["id"]) if row else 0
        expected: dict[tuple[str, int], list[int]] = {}
        for sub in REGISTRY:
            if sub.start_id is None or (sub.channel, sub.start_id) in expected:
                continue
            rows = conn.execute("SELECT id FROM events WHERE channels @> ARRAY[%s]::text[] AND id > %s AND id <= %s"
                                " ORDER BY id", (sub.channel, sub.start_id, end_id)).fetchall()
            expected[(sub.channel, sub.start_id)] = [int(r["id"]) for r in rows]
    # Wait (bounded) for the last committed events to reach everyone.
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        behind = [s for s in REGISTRY if s.start_id is not None and expected[(s.channel, s.start_id)]
                  and (s.last_id or 0) < expected[(s.channel, s.start_id)][-1]]
        if not behind:
            break
        gevent.sleep(0.2)
    totals = {"subscriptions": 0, "expected": 0, "received": 0, "missing": 0, "duplicated": 0, "out_of_order": 0,
              "never_subscribed": 0}
    for sub in REGISTRY:
        if sub.start_id is None:
            totals["never_subscribed"] += 1
            continue
        want = expected[(sub.channel, sub.start_id)]
        got = [i for i in sub.ids if i <= end_id]
        totals["subscriptions"] += 1
        totals["expected"] += len(want)
        totals["received"] += len(got)
        missing = sorted(set(want) - set(got))
        totals["missing"] += len(missing)
        if missing and len(EXAMPLES) < 10:
            EXAMPLES.append({"channel": sub.channel, "start_id": sub.start_id, "missing": missing[:5],
                             "last_received": got[-3:], "received": len(got), "expected": len(want)})
        totals["duplicated"] += len(got) - len(set(got))
        totals["out_of_order"] += sum(1 for a, b in itertools.pairwise(got) if b <= a)
    if EXAMPLES:
        ids = sorted({i for example in EXAMPLES for i in example["missing"]})
        with connect(url) as conn:
            rows = conn.execute("SELECT id, event, channels, xid::text AS xid, created_at::text AS created_at"
                                " FROM events WHERE id = ANY(%s)", (ids,)).fetchall()
        EXAMPLES.append({"missing_rows": rows})
    return totals


@events.test_stop.add_listener
def _drain_and_account(environment: Environment, **_: Any) -> None:
    RESULT.update(account(environment))
    for client in list(OPEN_CLIENTS):
        client.close()
    OPEN_CLIENTS.clear()
    print(f"delivery: {RESULT}", flush=True)
    for example in EXAMPLES:
        print(f"delivery: missing on {example}", flush=True)


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    if not RESULT:
        support.fail(environment, "delivery was not checked (no DATABASE_URL or no subscriptions)")
    elif RESULT["missing"] or RESULT["duplicated"] or RESULT["out_of_order"]:
        support.fail(environment, f"events lost or misordered: {RESULT}")
    elif RESULT["subscriptions"] == 0:
        support.fail(environment, "no client ever subscribed")
    support.check_thresholds(environment, request_types=("WS", "WS ack", "POST"))
