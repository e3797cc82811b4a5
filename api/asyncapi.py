"""GET /api/asyncapi.json: the WebSocket protocol as an AsyncAPI 3 document, built from common.wire."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint, jsonify

from api.routes.pages import gateway_url
from common.wire import CHANNEL_PATTERN, CLOSE_CODES, ERROR_CODES, MESSAGES

bp = Blueprint("asyncapi", __name__)

DESCRIPTION = (
    "One WebSocket per client at `/ws`. Authenticate with a connect ticket (`?ticket=`, from "
    "`POST /api/realtime/ticket`) or a JWT (`?token=` or `Authorization: Bearer`). Text frames, one JSON object "
    "each. `?batch_ms=N` (0..100) lets the server put events into `batch` frames. Refused handshakes: 401 "
    "(token or ticket), 403 (origin), 429 (per-user cap), 503 with Retry-After (admission). Error codes: "
    + ", ".join(ERROR_CODES) + ". Close codes: "
    + "; ".join(f"{code} {meaning}" for code, meaning in CLOSE_CODES.items()) + "."
)


@lru_cache(maxsize=4)
def document(server_url: str) -> dict[str, Any]:
    scheme, _, rest = server_url.partition("://")
    host, _, path = rest.partition("/")
    messages = {m.name: {"name": m.name, "summary": m.summary, "contentType": "application/json",
                         "payload": m.schema} for m in MESSAGES}
    refs = {m.name: {"$ref": f"#/channels/ws/messages/{m.name}"} for m in MESSAGES}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "dms realtime gateway", "version": "1", "description": DESCRIPTION},
        "servers": {"gateway": {"host": host, "pathname": "/" + path, "protocol": scheme or "ws"}},
        "defaultContentType": "application/json",
        "channels": {"ws": {
            "address": "/ws",
            "description": "Every frame travels on the one socket; the frame's `channel` field names the "
                           f"subscription channel (pattern `{CHANNEL_PATTERN}`).",
            "messages": messages,
        }},
        "operations": {
            f"{m.direction}_{m.name}": {"action": m.direction, "channel": {"$ref": "#/channels/ws"},
                                        "summary": m.summary, "messages": [refs[m.name]]}
            for m in MESSAGES
        },
    }


@bp.get("/api/asyncapi.json")
def asyncapi_json() -> Any:
    return jsonify(document(gateway_url()))
