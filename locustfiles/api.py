"""REST swarm: restaurants browse and order, admins and drivers move orders, everyone pages history.

    locust -f locustfiles/api.py --host http://127.0.0.1:8000 --scenario baseline --headless

Scenarios (`--scenario` or DMS_SCENARIO): `baseline` 100 req/s, `spike` 100 -> 500 -> 100 req/s,
`stress` +50 req/s every 15 s until p95 or failures break the thresholds (reports where),
`soak` 100 req/s for --soak-seconds while sampling the API's RSS, `custom` plain -u/-r/-t.
Each simulated user makes about PER_USER_RPS requests per second, so users = rate / PER_USER_RPS.
The run exits non-zero when p95 >= 200 ms or failures >= 1% (stress only reports its break point).
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import swarm_support as support
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment

PER_USER_RPS = float(os.environ.get("DMS_PER_USER_RPS", "2"))


class Pipeline:
    """Orders the swarm created, waiting for their next move; one owner per order, so no 409 races.

    Module-level on purpose: every user of this locust process shares it (one process, greenlets).
    """

    pending: deque[str] = deque(maxlen=5000)
    confirmed: deque[str] = deque(maxlen=5000)
    preparing: deque[str] = deque(maxlen=5000)
    assigned: deque[str] = deque(maxlen=5000)
    drivers: dict[str, deque[tuple[str, str]]] = {}


def users_for(rate: float) -> int:
    return max(1, math.ceil(rate / PER_USER_RPS))


def expect(response: Any, *codes: int) -> bool:
    """Mark anything but `codes` a failure, naming the error code from the body."""
    if response.status_code in codes:
        response.success()
        return True
    try:
        code = response.json()["error"]["code"]
    except Exception:  # the body may be anything when things go wrong
        code = "?"
    response.failure(f"HTTP {response.status_code} {code}")
    return False


def poisson_throughput(per_s: float) -> Callable[[Any], float]:
    """Task starts as a Poisson process of `per_s` a second per user: the mean rate of locust's
    constant_throughput without its lockstep. Users paced by constant_throughput were seen sending
    together, 49 of 50 requests within the same 50 ms twice a second (even with random start
    delays), a burst no population of independent clients makes; the API's p95 then measured how
    long 50 simultaneous requests take, not how long a request takes. A user that falls behind
    starts at once and does not catch up in a burst."""

    def wait(user: Any) -> float:
        now = time.monotonic()
        start = max(now, getattr(user, "_next_start", now) + random.expovariate(per_s))
        user._next_start = start
        return start - now

    return wait


class RestaurantUser(FastHttpUser):
    """A restaurant's staff: browse and search the catalogue, look at products, order, read history."""

    weight = 6
    wait_time = poisson_throughput(PER_USER_RPS)

    def on_start(self) -> None:
        self.restaurant_id = random.choice(support.RESTAURANT_IDS)
        self.user_id, bearer = support.token("restaurant", restaurant_id=self.restaurant_id)
        self.headers = support.auth(bearer)
        self.cursor: str | None = None
        self.last_key: tuple[str, dict[str, Any], str] | None = None

    @task(5)
    def browse(self) -> None:
        with self.client.get(support.catalogue_query(), headers=self.headers, name="/api/products?q&category",
                             catch_response=True) as response:
            expect(response, 200)

    @task(3)
    def product(self) -> None:
        with self.client.get(f"/api/products/{random.choice(support.ACTIVE_PRODUCTS)}", headers=self.headers,
                             name="/api/products/[id]", catch_response=True) as response:
            expect(response, 200)

    @task(2)
    def order(self) -> None:
        # One in ten repeats the previous request with its key: the API must answer the same order.
        if self.last_key is not None and random.random() < 0.1:
            key, body, first_id = self.last_key
            with self.client.post("/api/orders", json=body, headers={**self.headers, "Idempotency-Key": key},
                                  name="/api/orders (replay)", catch_response=True) as response:
                if expect(response, 201) and response.json()["id"] != first_id:
                    response.failure("idempotent replay returned a different order")
            self.last_key = None
            return
        key, body = uuid.uuid4().hex, support.order_body()
        with self.client.post("/api/orders", json=body, headers={**self.headers, "Idempotency-Key": key},
                              catch_response=True) as response:
            if expect(response, 201):
                order_id = response.json()["id"]
                Pipeline.pending.append(order_id)
                self.last_key = (key, body, order_id)

    @task(2)
    def history(self) -> None:
        url = "/api/orders?limit=20" + (f"&cursor={self.cursor}" if self.cursor else "")
        with self.client.get(url, headers=self.headers, name="/api/orders?cursor", catch_response=True) as response:
            if expect(response, 200):
                self.cursor = response.json()["next_cursor"]


class AdminUser(FastHttpUser):
    """Dispatch: confirm, prepare, assign a driver and mark ready, one move per request."""

    weight = 1
    wait_time = poisson_throughput(PER_USER_RPS)

    def on_start(self) -> None:
        self.user_id, bearer = support.token("admin")
        self.headers = support.auth(bearer)

    def _move(self, order_id: str, status: str) -> bool:
        with self.client.post(f"/api/orders/{order_id}/status", json={"status": status}, headers=self.headers,
                              name=f"/api/orders/[id]/status -> {status}", catch_response=True) as response:
            return expect(response, 200)

    @task
    def dispatch(self) -> None:
        # Latest stage first, so orders flow through instead of piling up at the start.
        if Pipeline.assigned:
            order_id = Pipeline.assigned.popleft()
            driver_id = self._driver_of.pop(order_id, None)
            if self._move(order_id, "ready") and driver_id in Pipeline.drivers:
                Pipeline.drivers[driver_id].append((order_id, "delivering"))
        elif Pipeline.preparing and Pipeline.drivers:
            order_id = Pipeline.preparing.popleft()
            driver_id = random.choice(list(Pipeline.drivers))
            with self.client.post(f"/api/orders/{order_id}/assign", json={"driver_id": driver_id},
                                  headers=self.headers, name="/api/orders/[id]/assign",
                                  catch_response=True) as response:
                if expect(response, 200):
                    self._driver_of[order_id] = driver_id
                    Pipeline.assigned.append(order_id)
        elif Pipeline.confirmed:
            order_id = Pipeline.confirmed.popleft()
            if self._move(order_id, "preparing"):
                Pipeline.preparing.append(order_id)
        elif Pipeline.pending:
            order_id = Pipeline.pending.popleft()
            if self._move(order_id, "confirmed"):
                Pipeline.confirmed.append(order_id)
        else:
            with self.client.get("/api/orders?status=pending&limit=20", headers=self.headers,
                                 name="/api/orders?status", catch_response=True) as response:
                expect(response, 200)

    _driver_of: dict[str, str] = {}  # shared by all admins: whoever assigned, anyone may mark ready


class DriverUser(FastHttpUser):
    """A driver: goes online, posts GPS batches, delivers what dispatch gives it (as that driver)."""

    weight = 1
    wait_time = poisson_throughput(PER_USER_RPS)

    def on_start(self) -> None:
        self.user_id, bearer = support.token("driver")
        self.headers = support.auth(bearer)
        self.lat, self.lng = 52.37 + random.uniform(-0.05, 0.05), 4.89 + random.uniform(-0.05, 0.05)
        # The first authenticated request creates the driver's profile; only then may it be assigned.
        with self.client.post("/api/drivers/me/status", json={"status": "online"}, headers=self.headers,
                              name="/api/drivers/me/status", catch_response=True) as response:
            if expect(response, 200):
                Pipeline.drivers[self.user_id] = deque()

    def on_stop(self) -> None:
        Pipeline.drivers.pop(self.user_id, None)

    @task
    def work(self) -> None:
        queue = Pipeline.drivers.get(self.user_id)
        if queue:
            order_id, status = queue.popleft()
            with self.client.post(f"/api/orders/{order_id}/status", json={"status": status}, headers=self.headers,
                                  name=f"/api/orders/[id]/status -> {status} (driver)",
                                  catch_response=True) as response:
                if expect(response, 200) and status == "delivering":
                    queue.append((order_id, "delivered"))
            return
        self.lat += random.uniform(-0.001, 0.001)
        self.lng += random.uniform(-0.001, 0.001)
        points = [{"lat": self.lat, "lng": self.lng, "speed": 8.0, "heading": 90.0}]
        with self.client.post("/api/drivers/me/locations", json={"points": points}, headers=self.headers,
                              name="/api/drivers/me/locations", catch_response=True) as response:
            expect(response, 202)


class ScenarioShape(LoadTestShape):
    """Users over time for the chosen scenario; `custom` follows -u/-r/-t as if there were no shape."""

    broke_at: dict[str, Any] | None = None
    _last: tuple[float, int, int] | None = None

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        now = self.get_run_time()
        scenario = getattr(options, "scenario", "custom")
        if scenario == "custom":
            limit = options.run_time or float("inf")
            return (options.num_users or 1, options.spawn_rate or 1) if now < limit else None
        if scenario == "baseline":
            return (users_for(100), 50) if now < (options.run_time or 60) else None
        if scenario == "spike":
            if now < 20:
                return users_for(100), 50
            if now < 50:
                return users_for(500), 200  # the spike arrives within about a second
            return (users_for(100), 200) if now < 80 else None
        if scenario == "soak":
            return (users_for(100), 50) if now < options.soak_seconds else None
        return self._stress(now)

    def _stress(self, now: float) -> tuple[int, float] | None:
        """+50 req/s every 15 s; after each step, stop if the last step broke a threshold."""
        step = int(now // 15)
        stats = self.runner.environment.stats.total
        if self._last is None or self._last[0] != step:
            if self._last is not None:
                _, requests0, failures0 = self._last
                requests, failures = stats.num_requests - requests0, stats.num_failures - failures0
                p95 = stats.get_current_response_time_percentile(0.95) or 0
                fail_ratio = failures / max(requests, 1)
                if p95 >= support.P95_LIMIT_MS or fail_ratio >= support.FAIL_RATIO_LIMIT or step > 40:
                    ScenarioShape.broke_at = {"offered_req_per_s": 50 * step, "users": users_for(50 * step),
                                              "achieved_req_per_s": round(requests / 15, 1), "p95_ms": p95,
                                              "fail_ratio": round(fail_ratio, 4), "after_s": round(now)}
                    return None
            self._last = (step, stats.num_requests, stats.num_failures)
        return users_for(50 * (step + 1)), 50


class RssWatch:
    """Samples the API's resident memory during a run (soak); silent when the API is not local."""

    samples: list[tuple[float, float]] = []

    @classmethod
    def find_pid(cls, environment: Environment) -> int | None:
        import psutil

        if environment.parsed_options.api_pid:
            return int(environment.parsed_options.api_pid)
        from urllib.parse import urlsplit

        port = urlsplit(environment.host or "").port
        try:
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                    return int(conn.pid)
        except psutil.Error:
            return None
        return None

    @classmethod
    def run(cls, pid: int, every_s: float = 10.0) -> None:
        import psutil

        process = psutil.Process(pid)
        started = time.monotonic()
        while True:
            try:
                cls.samples.append((time.monotonic() - started, process.memory_info().rss / 2**20))
            except psutil.Error:
                return
            gevent.sleep(every_s)


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    if getattr(environment.parsed_options, "scenario", "") == "soak":
        pid = RssWatch.find_pid(environment)
        if pid is None:
            print("soak: API process not found locally (set DMS_API_PID); memory is not watched", flush=True)
        else:
            gevent.spawn(RssWatch.run, pid)


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    scenario = getattr(environment.parsed_options, "scenario", "custom")
    if RssWatch.samples:
        first, last = RssWatch.samples[0][1], RssWatch.samples[-1][1]
        peak = max(rss for _, rss in RssWatch.samples)
        print(f"soak: API RSS {first:.0f} MiB -> {last:.0f} MiB (peak {peak:.0f} MiB, "
              f"{100 * (last - first) / max(first, 1):+.0f}%) over {RssWatch.samples[-1][0]:.0f}s", flush=True)
    if scenario == "stress":
        # Stress is meant to break; its result is where, not whether.
        print(f"stress: broke at {ScenarioShape.broke_at or 'no break point within 40 steps'}", flush=True)
        return
    support.check_thresholds(environment, request_types=("GET", "POST"))
