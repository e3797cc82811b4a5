"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from loguru import logger

from api.context import services
from api.errors import error_response
from common.errors import Unavailable

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Any:
    """200 only when both PostgreSQL and Redis answer; otherwise 503 naming what failed."""
    failed: dict[str, str] = {}
    try:
        with services().pool.connection(timeout=2.0) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        failed["postgres"] = type(exc).__name__
    try:
        services().redis.ping()
    except Exception as exc:
        failed["redis"] = type(exc).__name__
    if failed:
        logger.warning("not ready: {}", failed)
        return error_response(Unavailable("not ready: " + ", ".join(sorted(failed)), details=failed))
    return jsonify({"status": "ready", "postgres": "ok", "redis": "ok"})
