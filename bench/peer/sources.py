"""Where the benchmark's events come from: POST /api/orders (the real path) or straight into Redis."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from bench.common import Histogram
from bench.peer.emitters import Emitter
from common.events import ALL_ORDERS, ORDER_CREATED, iso, order_channel
from devstack.seed import demo_id

POST_WORKERS = 64  # the API is gevent: concurrency is cheap there, and a slow commit must not hold the schedule
POST_TIMEOUT_S = 30.0


class RestSource:
    """Orders created through the API at a paced, open-loop rate; each commit writes one outbox event.

    Requests start on schedule whatever the API does (a slow API shows up in `post_latency`, not as a
    lower offered rate). Each order's event goes to `orders`, `order:<id>` and its restaurant's channel,
    which is where the subscribers are.
    """

    def __init__(self, *, api_url: str, token: str, channels: list[str], products: list[str],
                 database_url: str) -> None:
        self.target = urlsplit(api_url)
        self.token, self.channels, self.products = token, channels, products
        self.database_url = database_url
        self._local = threading.local()
        self._sequence = itertools.count()

    def mark(self) -> int:
        from common.db import connect

        with connect(self.database_url) as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()
        return int(row["id"]) if row else 0

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.target.hostname or "127.0.0.1", self.target.port,
                                              timeout=POST_TIMEOUT_S)
            self._local.conn = conn
        return conn

    def _post(self, n: int, channel: str) -> bool:
        body = json.dumps({"restaurant_id": channel.split(":", 1)[1], "customer_name": "bench",
                           "items": [{"product_id": self.products[n % len(self.products)], "quantity": 1}]})
        # No Idempotency-Key: the header is optional and its claim row would add API work to a
        # benchmark that is about the fan-out after the commit.
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in range(2):  # one retry on a dropped keep-alive connection, never more
            conn = self._connection()
            try:
                conn.request("POST", "/api/orders", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                return response.status == 201
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    return False
        return False

    def run(self, rate: float, seconds: float) -> dict[str, Any]:
        total = int(rate * seconds)
        per_channel: Counter[str] = Counter()
        hist, failures = Histogram(), [0]
        lock = threading.Lock()

        def one(scheduled: float, n: int, channel: str) -> None:
            ok = self._post(n, channel)
            with lock:
                hist.add((time.monotonic() - scheduled) * 1000)
                if ok:
                    per_channel[channel] += 1
                else:
                    failures[0] += 1

        started = time.monotonic()
        with ThreadPoolExecutor(POST_WORKERS) as pool:
            futures = []
            for i in range(total):
                scheduled = started + i / rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                n = next(self._sequence)
                futures.append(pool.submit(one, scheduled, n, self.channels[n % len(self.channels)]))
            wait(futures, timeout=POST_TIMEOUT_S * 2)
        elapsed = max(time.monotonic() - started, 1e-6)
        done = sum(per_channel.values())
        return {"per_channel": dict(per_channel), "achieved_events_per_s": round(done / elapsed, 1),
                "post_failures": failures[0], "post_latency": hist.summary()}

    def written_since(self, mark: int) -> dict[str, list[int]]:
        """Event ids per subscribed channel, read back from the outbox (the API does not return them)."""
        from common.db import connect

        wanted = set(self.channels)
        out: dict[str, list[int]] = {channel: [] for channel in self.channels}
        with connect(self.database_url) as conn:
            for row in conn.execute("SELECT id, channels FROM events WHERE id > %s ORDER BY id", (mark,)):
                for channel in row["channels"]:
                    if channel in wanted:
                        out[channel].append(int(row["id"]))
        return out


class DirectSource:
    """Events published straight to Redis in the system's own format: the fan-out alone, no API or outbox."""

    def __init__(self, *, emitter: Emitter, channels: list[str], first_id: int) -> None:
        self.emitter, self.channels = emitter, channels
        self.next_id = first_id
        emitter.prepare(first_id - 1)
        self.written: dict[str, list[int]] = {channel: [] for channel in channels}

    def mark(self) -> int:
        return self.next_id - 1

    def run(self, rate: float, seconds: float) -> dict[str, Any]:
        total = int(rate * seconds)
        per_channel: Counter[str] = Counter()
        started = time.monotonic()
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            event_id, self.next_id = self.next_id, self.next_id + 1
            channel = self.channels[event_id % len(self.channels)]
            order_id = demo_id(f"bench-direct-order:{event_id}")
            data = {"order_id": order_id, "restaurant_id": channel.split(":", 1)[1], "status": "pending",
                    "driver_id": None, "version": 1, "total_amount": "12.50", "updated_at": iso(datetime.now(UTC)),
                    "request_id": "bench"}
            self.emitter.emit({"id": event_id, "event": ORDER_CREATED, "data": data, "ts": iso(datetime.now(UTC)),
                               "channels": [ALL_ORDERS, channel, order_channel(order_id)]})
            self.written[channel].append(event_id)
            per_channel[channel] += 1
        elapsed = max(time.monotonic() - started, 1e-6)
        return {"per_channel": dict(per_channel), "achieved_events_per_s": round(total / elapsed, 1),
                "post_failures": 0, "post_latency": None}

    def written_since(self, mark: int) -> dict[str, list[int]]:
        return {channel: [i for i in ids if i > mark] for channel, ids in self.written.items()}
