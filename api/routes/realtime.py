"""Realtime numbers summed over every live gateway (each publishes its own to Redis every 2 s)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.context import require, services
from common.gateway_stats import read_all

bp = Blueprint("realtime", __name__, url_prefix="/api/realtime")


@bp.get("/connections")
@require("admin")
def connections() -> Any:
    """Fails closed: without Redis there are no numbers to give (503 from the error handler)."""
    return jsonify(read_all(services().redis))
