"""Database, cache and relay figures for the admin performance endpoints, alerts and the sampler.

Query latency is measured in this process: every statement through the API's pools is timed by
their cursor class (common.db.time_queries) into a sliding 5-minute window. Once a minute a
greenlet started by `python -m api` stores a sample row (performance_samples) for the history
the endpoint returns with `?timeRange=`, and evaluates the alerts so they start and stop even when
nobody looks.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import psycopg
import psycopg_pool
import redis
from flask import Flask
from loguru import logger
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg.types.json import Jsonb

from api import alerts as alerting
from api.cache import HITS_KEY, MISSES_KEY
from api.metrics import POOLS, observe_query
from api.services import Pool, Services
from api.state import request_state
from common import gateway_stats
from common.db import SERVICE, claims, time_queries
from common.errors import Unavailable
from common.events import iso
from common.outbox import RELAY_CURSOR
from common.stores import STORE_ERRORS

WINDOW_S = 300.0
SAMPLE_EVERY_S = 60.0
SAMPLE_RETENTION = "8 days"
# timeRange -> (how far back, one history point per)
TIME_RANGES = {"1h": ("1 hour", "1 minute"), "24h": ("24 hours", "15 minutes"), "7d": ("7 days", "1 hour")}


class LatencyWindow:
    """Durations of the last `window_s` seconds (at most `max_samples` of them) and their percentiles."""

    def __init__(self, *, window_s: float = WINDOW_S, max_samples: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        now = self.clock()
        with self._lock:
            self._samples.append((now, seconds))
            self._expire(now)

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def percentiles(self) -> dict[str, Any]:
        """p50/p95/p99 in milliseconds (nearest rank), None while the window is empty."""
        with self._lock:
            self._expire(self.clock())
            durations = sorted(seconds for _, seconds in self._samples)
        body: dict[str, Any] = {"samples": len(durations)}
        for name, q in (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            if durations:
                rank = min(len(durations) - 1, max(0, int(q * len(durations) + 0.999999) - 1))
                body[name] = round(durations[rank] * 1000, 3)
            else:
                body[name] = None
        return body


@dataclass
class Performance:
    """Per-process state behind the performance endpoints."""

    queries: LatencyWindow = field(default_factory=LatencyWindow)
    # This process's requests over the last minute (one sample's worth), all and those answered 5xx.
    requests: LatencyWindow = field(default_factory=lambda: LatencyWindow(window_s=SAMPLE_EVERY_S))
    errors: LatencyWindow = field(default_factory=lambda: LatencyWindow(window_s=SAMPLE_EVERY_S))
    alerts: alerting.AlertState = field(default_factory=alerting.AlertState)
    slow_consumers: alerting.CounterDelta = field(default_factory=alerting.CounterDelta)
    source: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


def init_app(app: Flask, svc: Services) -> Performance:
    """Time the queries of every pool of `svc` (before they open) and export their gauges."""
    perf = Performance()
    for pool in (svc.pool, *svc.replicas):
        prometheus = observe_query(pool.name or "api")

        def observe(seconds: float, prometheus: Callable[[float], None] = prometheus) -> None:
            perf.queries.observe(seconds)
            prometheus(seconds)

        time_queries(pool, observe)
        POOLS.track(pool)

    @app.after_request
    def _request_done(response: Any) -> Any:
        started = request_state().started  # set by the first hook of every request (api/context.py)
        if started:
            took = time.perf_counter() - started
            perf.requests.observe(took)
            if response.status_code >= 500:
                perf.errors.observe(took)
        return response

    OUTBOX.pool = svc.pool  # one collector per process (the registry is global): the latest app answers
    app.extensions["dms_performance"] = perf
    return perf


# -- readings --------------------------------------------------------------------------------
def pool_figures(pool: Pool) -> dict[str, Any]:
    stats = pool.get_stats()
    size = int(stats.get("pool_size", 0))
    idle = int(stats.get("pool_available", 0))
    in_use = max(0, size - idle)
    return {"size": size, "in_use": in_use, "idle": idle, "waiting": int(stats.get("requests_waiting", 0)),
            "max_size": pool.max_size, "utilisation": round(in_use / pool.max_size, 3) if pool.max_size else 0.0}


def cache_counts(client: redis.Redis) -> tuple[int, int]:
    """The hit and miss counters every API process adds to (shared in Redis)."""
    hits, misses = client.mget([HITS_KEY, MISSES_KEY])
    return int(hits or 0), int(misses or 0)


def relay_lag_s(pool: Pool) -> float:
    """How long the oldest event the relay has not published yet has waited; 0 when none waits.

    Measured from the oldest unpublished event rather than from the newest one: after a quiet hour
    the first new event would otherwise read as an hour of lag for the few milliseconds before the
    relay publishes it.
    """
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS lag_s"
            " FROM events WHERE id > coalesce((SELECT last_id FROM relay_cursor WHERE name = %s), 0)",
            (RELAY_CURSOR,),
        ).fetchone()
    return max(0.0, float(row["lag_s"])) if row else 0.0


BACKLOG_CAP = 100_000  # counting stops here: the gauge says "at least" beyond it, and stays cheap


def outbox_backlog(pool: Pool) -> int:
    """Events the relay has not published yet (at most BACKLOG_CAP counted)."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM (SELECT 1 FROM events WHERE id > coalesce((SELECT last_id FROM relay_cursor"
            " WHERE name = %s), 0) LIMIT %s) AS waiting", (RELAY_CURSOR, BACKLOG_CAP),
        ).fetchone()
    return int(row["n"]) if row else 0


class OutboxCollector(Collector):
    """`dms_outbox_backlog_events` read from PostgreSQL at scrape time (a scrape is every 15 s or so)."""

    def __init__(self) -> None:
        self.pool: Pool | None = None  # the API's primary pool, set by init_app

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("dms_outbox_backlog_events",
                                   f"Outbox events not yet published by the relay (counted up to {BACKLOG_CAP})")
        if self.pool is not None:
            try:
                family.add_metric([], outbox_backlog(self.pool))
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                logger.debug("outbox backlog unknown: {}", type(exc).__name__)
        yield family


OUTBOX = OutboxCollector()
REGISTRY.register(OUTBOX)


def slow_consumer_disconnects(client: redis.Redis, perf: Performance) -> int:
    """Slow-consumer disconnects across live gateways within the last minute."""
    instances = gateway_stats.read_all(client)["instances"]
    return perf.slow_consumers.update({i["id"]: int(i["slow_consumer_disconnects"]) for i in instances})


def slow_queries(pool: Pool, *, min_ms: float, limit: int) -> list[dict[str, Any]]:
    """Normalised statements of this database whose mean time is at least `min_ms`, slowest first."""
    try:
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT query, calls, mean_exec_time AS mean_ms, max_exec_time AS max_ms,"
                " total_exec_time AS total_ms FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND mean_exec_time >= %s ORDER BY mean_exec_time DESC LIMIT %s",
                (min_ms, limit),
            ).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.ObjectNotInPrerequisiteState,
            psycopg.errors.InsufficientPrivilege) as exc:
        raise Unavailable("pg_stat_statements is not available",
                          details={"extension": "pg_stat_statements", "reason": str(exc).strip()}) from exc
    return [{"query": row["query"], "calls": int(row["calls"]), "mean_ms": round(float(row["mean_ms"]), 3),
             "max_ms": round(float(row["max_ms"]), 3), "total_ms": round(float(row["total_ms"]), 3)}
            for row in rows]


@dataclass
class Snapshot:
    pool: dict[str, Any]
    queries: dict[str, Any]
    cache_hits: int | None
    cache_misses: int | None
    relay_lag_s: float | None
    readings: alerting.Readings
    firing: list[alerting.Alert]


def snapshot(svc: Services, perf: Performance) -> Snapshot:
    """Read every source, then evaluate the alerts (a source that fails leaves its alert as it was)."""
    pool = pool_figures(svc.pool)
    queries = perf.queries.percentiles()
    hits = misses = storm = None
    try:
        hits, misses = cache_counts(svc.redis)
        storm = slow_consumer_disconnects(svc.redis, perf)
    except redis.RedisError as exc:
        logger.warning("performance figures without Redis: {}", type(exc).__name__)
    lag: float | None = None
    try:
        lag = relay_lag_s(svc.pool)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        logger.warning("relay lag unknown: {}", type(exc).__name__)
    readings = alerting.Readings(query_p95_ms=queries["p95_ms"], pool_utilisation=pool["utilisation"],
                               cache_hits=hits, cache_misses=misses, relay_lag_s=lag,
                               slow_consumer_disconnects=storm)
    firing = alerting.evaluate(readings)
    perf.alerts.update(firing, checked=alerting.checked_names(readings))
    return Snapshot(pool, queries, hits, misses, lag, readings, firing)


# -- history ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operators:
    """The numbers /admin charts, read at sampling time."""

    connections: int | None
    gateways: dict[str, int] | None
    deliveries_per_s: float | None
    delivery_p95_ms: float | None
    orders_per_min: int | None
    api_p95_ms: float | None
    api_requests: int
    api_errors: int


def operators(svc: Services, perf: Performance) -> Operators:
    connections = gateways = deliveries = delivery_p95 = None
    try:
        live = gateway_stats.read_all(svc.redis)
        connections = int(live["total"])
        gateways = {i["id"]: int(i["connections"]) for i in live["instances"]}
        deliveries = round(sum(float(i["messages_out_per_s"]) for i in live["instances"]), 1)
        p95s = [float(i["delivery_p95_ms"]) for i in live["instances"] if i.get("delivery_p95_ms") is not None]
        delivery_p95 = max(p95s) if p95s else None
    except redis.RedisError as exc:
        logger.warning("connection numbers not sampled: {}", type(exc).__name__)
    orders: int | None = None
    try:
        with claims(SERVICE), svc.pool.connection() as conn:
            row = conn.execute("SELECT count(*) AS n FROM orders WHERE created_at > now() - interval '1 minute'"
                               ).fetchone()
        orders = int(row["n"]) if row else None
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        logger.warning("orders per minute not sampled: {}", type(exc).__name__)
    requests = perf.requests.percentiles()
    return Operators(connections, gateways, deliveries, delivery_p95, orders, requests["p95_ms"],
                     int(requests["samples"]), int(perf.errors.percentiles()["samples"]))


def record_sample(svc: Services, perf: Performance) -> Snapshot:
    """Store one sample row (and drop rows past retention); what the sampler runs every minute."""
    snap = snapshot(svc, perf)
    ops = operators(svc, perf)
    with svc.pool.connection() as conn:
        conn.execute(
            "INSERT INTO performance_samples (source, pool_size, pool_in_use, pool_waiting, pool_max_size,"
            " p50_ms, p95_ms, p99_ms, query_samples, cache_hits, cache_misses, relay_lag_s, alerts,"
            " connections, gateways, deliveries_per_s, delivery_p95_ms, orders_per_min, api_p95_ms,"
            " api_requests, api_errors)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (perf.source, snap.pool["size"], snap.pool["in_use"], snap.pool["waiting"], snap.pool["max_size"],
             snap.queries["p50_ms"], snap.queries["p95_ms"], snap.queries["p99_ms"], snap.queries["samples"],
             snap.cache_hits, snap.cache_misses, snap.relay_lag_s, [a.name for a in snap.firing],
             ops.connections, None if ops.gateways is None else Jsonb(ops.gateways), ops.deliveries_per_s,
             ops.delivery_p95_ms, ops.orders_per_min, ops.api_p95_ms, ops.api_requests, ops.api_errors),
        )
        conn.execute("DELETE FROM performance_samples WHERE at < now() - %s::interval", (SAMPLE_RETENTION,))
    return snap


def history(pool: Pool, time_range: str) -> list[dict[str, Any]]:
    """One point per bucket of the range: worst p95/p99 and utilisation, mean p50, cache ratio in it."""
    span, step = TIME_RANGES[time_range]
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT date_bin(%s::interval, at, timestamptz '2000-01-01') AS bucket, count(*) AS samples,"
            " avg(p50_ms) AS p50_ms, max(p95_ms) AS p95_ms, max(p99_ms) AS p99_ms,"
            " max(pool_in_use::float8 / nullif(pool_max_size, 0)) AS pool_utilisation,"
            " max(pool_waiting) AS pool_waiting, max(relay_lag_s) AS relay_lag_s,"
            " max(cache_hits) - min(cache_hits) AS hits, max(cache_misses) - min(cache_misses) AS misses,"
            # Connections, deliveries and orders are global (every API process samples the same
            # figures): the bucket's latest. The API's own figures add up over its processes.
            " (array_agg(connections ORDER BY at DESC) FILTER (WHERE connections IS NOT NULL))[1] AS connections,"
            " (array_agg(gateways ORDER BY at DESC) FILTER (WHERE gateways IS NOT NULL))[1] AS gateways,"
            " avg(deliveries_per_s) AS deliveries_per_s, max(delivery_p95_ms) AS delivery_p95_ms,"
            " avg(orders_per_min) AS orders_per_min, max(api_p95_ms) AS api_p95_ms,"
            " sum(api_requests) AS api_requests, sum(api_errors) AS api_errors"
            " FROM performance_samples WHERE at > now() - %s::interval GROUP BY bucket ORDER BY bucket",
            (step, span),
        ).fetchall()

    def num(value: Any, digits: int = 3) -> float | None:
        return None if value is None else round(float(value), digits)

    return [{"at": iso(row["bucket"]), "samples": int(row["samples"]), "p50_ms": num(row["p50_ms"]),
             "p95_ms": num(row["p95_ms"]), "p99_ms": num(row["p99_ms"]),
             "pool_utilisation": num(row["pool_utilisation"]),
             "pool_waiting": None if row["pool_waiting"] is None else int(row["pool_waiting"]),
             "relay_lag_s": num(row["relay_lag_s"]),
             "cache_hit_ratio": num(row["hits"] / (row["hits"] + row["misses"]))
             if row["hits"] is not None and row["misses"] is not None and row["hits"] + row["misses"] > 0
             else None,
             "connections": row["connections"], "gateways": row["gateways"],
             "deliveries_per_s": num(row["deliveries_per_s"], 1), "delivery_p95_ms": num(row["delivery_p95_ms"]),
             "orders_per_min": num(row["orders_per_min"], 1), "api_p95_ms": num(row["api_p95_ms"]),
             "api_error_rate": num(row["api_errors"] / row["api_requests"], 4)
             if row["api_requests"] else None}
            for row in rows]


def run_sampler(app: Flask, *, every_s: float = SAMPLE_EVERY_S) -> None:
    """Record a sample every `every_s` until killed (a greenlet of `python -m api`)."""
    svc: Services = app.extensions["dms"]
    perf: Performance = app.extensions["dms_performance"]
    while True:
        gevent.sleep(every_s)
        try:
            record_sample(svc, perf)
        except STORE_ERRORS as exc:
            logger.warning("performance sample not stored: {}: {}", type(exc).__name__, exc)
