"""Prometheus metrics of one API process, served as text at `GET /metrics` (never rate limited).

prometheus-client is the reference client for the exposition format; its default registry holds
one set of metrics per process, which is what a scraper of that process expects. Pool gauges are
read from psycopg-pool at scrape time, so they are never stale. Labels carry route templates,
methods, statuses and pool names only: bounded sets, no ids.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api import alerts, cache  # noqa: F401  (imported for the metrics they define)
from api.state import request_state
from common import build_info  # noqa: F401  (dms_build_info)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUEST_SECONDS = Histogram("dms_api_request_duration_seconds", "REST request latency",
                            ["route", "method", "status"], buckets=LATENCY_BUCKETS)
QUERY_SECONDS = Histogram("dms_db_query_duration_seconds", "Statement latency seen by the API process",
                          ["pool"], buckets=LATENCY_BUCKETS)

bp = Blueprint("metrics", __name__)


class PoolCollector(Collector):
    """psycopg-pool numbers at scrape time, summed per pool name over this process's open pools."""

    def __init__(self) -> None:
        # Weak: an app (and its pools) that a test or a reload drops must not be kept alive here.
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()

    def track(self, pool: Any) -> None:
        self._pools.add(pool)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "size": GaugeMetricFamily("dms_db_pool_size", "Connections in the pool (in use, idle or opening)",
                                      labels=["pool"]),
            "available": GaugeMetricFamily("dms_db_pool_available", "Idle connections in the pool",
                                           labels=["pool"]),
            "waiting": GaugeMetricFamily("dms_db_pool_requests_waiting", "Callers waiting for a connection",
                                         labels=["pool"]),
            "max": GaugeMetricFamily("dms_db_pool_max_size", "Most connections the pool may open",
                                     labels=["pool"]),
        }
        totals: dict[str, dict[str, int]] = {}
        for pool in list(self._pools):
            if pool.closed:
                continue
            stats = pool.get_stats()
            figures = totals.setdefault(pool.name, dict.fromkeys(families, 0))
            figures["size"] += stats.get("pool_size", 0)
            figures["available"] += stats.get("pool_available", 0)
            figures["waiting"] += stats.get("requests_waiting", 0)
            figures["max"] += pool.max_size
        for name, figures in sorted(totals.items()):
            for key, family in families.items():
                family.add_metric([name], figures[key])
        yield from families.values()


POOLS = PoolCollector()
REGISTRY.register(POOLS)


def observe_query(pool_name: str) -> Any:
    """The per-statement observer for one pool's histogram child."""
    return QUERY_SECONDS.labels(pool_name).observe


def init_app(app: Flask) -> None:
    """Time every request from its first hook (api/context.py), so refused requests are timed too."""

    # The histogram child of each (route, method, status) seen: `labels()` is a locked lookup.
    observers: dict[tuple[str, str, int], Callable[[float], None]] = {}

    @app.after_request
    def _observe(response: Any) -> Any:
        started = request_state().started
        if started:
            rule = request.url_rule
            route = rule.rule if rule else "<unmatched>"
            method = request.method
            method = method if method in _METHODS else "OTHER"
            labels = (route, method, response.status_code)
            observe = observers.get(labels)
            if observe is None:
                observe = observers[labels] = REQUEST_SECONDS.labels(route, method, str(labels[2])).observe
            observe(time.perf_counter() - started)
        return response


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
