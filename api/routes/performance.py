"""Admin performance figures: database pool and query latency, slow statements, the cache."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, current_app, jsonify, request

from api import performance
from api.cache import HITS_KEY
from api.context import require, services
from api.near_cache import flush_hits
from api.routes.cache_admin import count_keys
from common.errors import Unavailable, ValidationFailed

bp = Blueprint("performance", __name__, url_prefix="/api/performance")

SLOW_MS = 100.0  # the database summary lists statements at least this slow on average
SUMMARY_SLOW_QUERIES = 5
DEFAULT_LIMIT, MAX_LIMIT = 20, 200


def _perf() -> performance.Performance:
    return cast(performance.Performance, current_app.extensions["dms_performance"])


def _number_arg(name: str, default: float, *, low: float, high: float, integer: bool = False) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError as exc:
        raise ValidationFailed(f"{name} must be a number", details={name: "expected a number"}) from exc
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be {low:g}..{high:g}", details={name: f"{low:g}..{high:g}"})
    return value


@bp.get("/database")
@require("admin")
def database() -> Any:
    """Pool, query latency over the last 5 minutes, the slowest statements, firing alerts;
    with `?timeRange=1h|24h|7d` also the sampled history."""
    time_range = request.args.get("timeRange")
    if time_range is not None and time_range not in performance.TIME_RANGES:
        raise ValidationFailed("timeRange must be one of 1h, 24h, 7d",
                               details={"timeRange": "one of 1h, 24h, 7d"})
    svc = services()
    snap = performance.snapshot(svc, _perf())
    try:
        slow = performance.slow_queries(svc.pool, min_ms=SLOW_MS, limit=SUMMARY_SLOW_QUERIES)
    except Unavailable:
        slow = []  # the summary still answers; /slow-queries says why it cannot
    body: dict[str, Any] = {
        "connection_pool": snap.pool,
        "query_performance": {**snap.queries, "window_s": int(performance.WINDOW_S)},
        "slow_queries": slow,
        "alerts": [alert.as_json() for alert in snap.firing],
    }
    if time_range is not None:
        body["time_range"] = time_range
        body["history"] = performance.history(svc.pool, time_range)
    return jsonify(body)


@bp.get("/slow-queries")
@require("admin")
def slow_queries() -> Any:
    """Statements from pg_stat_statements with a mean time of at least `min_ms`; 503 without it."""
    min_ms = _number_arg("min_ms", SLOW_MS, low=0, high=3_600_000)
    limit = int(_number_arg("limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT, integer=True))
    items = performance.slow_queries(services().pool, min_ms=min_ms, limit=limit)
    return jsonify({"min_ms": min_ms, "limit": limit, "items": items})


@bp.get("/cache")
@require("admin")
def cache() -> Any:
    """Fails closed: without Redis there are no counters to give (503 from the error handler)."""
    svc = services()
    flush_hits(svc.near_cache, svc.redis, HITS_KEY)  # this process's near hits count at once
    hits, misses = performance.cache_counts(svc.redis)
    by_namespace = count_keys(svc.redis)
    lookups = hits + misses
    return jsonify({"hits": hits, "misses": misses, "hit_ratio": round(hits / lookups, 4) if lookups else None,
                    "keys": sum(by_namespace.values()), "keys_by_namespace": by_namespace})
