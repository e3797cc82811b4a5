"""Realtime numbers summed over every live gateway (each publishes its own to Redis every 2 s); connect tickets."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.context import identity, require, services
from common import tickets
from common.gateway_stats import read_all

bp = Blueprint("realtime", __name__, url_prefix="/api/realtime")


@bp.get("/connections")
@require("admin")
def connections() -> Any:
    """Fails closed: without Redis there are no numbers to give (503 from the error handler)."""
    return jsonify(read_all(services().redis))


@bp.post("/ticket")
@require()
def ticket() -> Any:
    """A connect ticket for `/ws?ticket=T`: single use, bound to the caller's claims and token expiry."""
    issued, life = tickets.issue(services().redis, identity(), ttl_s=services().config.ws_ticket_ttl_s)
    return jsonify({"ticket": issued, "expires_in": tickets.expires_in(life)})
