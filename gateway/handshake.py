"""The WebSocket handshake: admission checks, the HTTP refusals, and the upgrade through the transport.

Flask answers the handshake: a draining gateway, a bad origin, token, per-user cap, `batch_ms`
or WebSocket header gets the contract's HTTP error and no upgrade. An accepted handshake takes
the socket out of pywsgi, the `Transport` answers 101 on it, and the node opens the connection;
Flask is done. Admission (gateway.admission: the connection ceiling, the accept rate, draining)
comes first, before the token is verified, so a refusal in a storm costs microseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sized
from typing import Any, Protocol

import redis
from flask import Flask, Response, jsonify, request

from common.auth import Identity, TokenVerifier
from common.config import Config
from common.errors import BadRequest, DmsError, Forbidden, RateLimited, Unavailable
from gateway import credentials, framing, metrics
from gateway.admission import Admission, Refused
from gateway.transport import TAKEOVER_KEY, Transport, accept

MAX_BATCH_MS = 100


class Admitting(Protocol):
    """What the handshake needs of the gateway node."""

    config: Config
    draining: bool
    per_user: Counter[str]
    admission: Admission
    tokens: TokenVerifier
    redis: redis.Redis
    connections: Sized

    def open(self, transport: Transport, who: Identity, *, batch_ms: int = 0) -> Any: ...


class Taken(Response):
    """The response of a taken-over socket: pywsgi writes nothing, since start_response is never called."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return []


def admit(node: Admitting) -> Identity:
    """Check a WebSocket handshake before upgrading; raise the HTTP error to answer instead."""
    config = node.config
    try:
        node.admission.admit(open_connections=len(node.connections), draining=node.draining)
    except Refused as refused:
        metrics.HANDSHAKES.labels(f"refused_{refused.reason}").inc()
        raise
    origin = request.headers.get("Origin")
    if origin and "*" not in config.allowed_origins and origin not in config.allowed_origins:
        raise Forbidden("origin not allowed")
    who = credentials.identify(request, node.tokens, node.redis)
    if node.per_user[who.user_id] >= config.ws_max_connections_per_user:
        raise RateLimited("too many connections for this user", retry_after_s=5)
    metrics.HANDSHAKES.labels("admitted").inc()
    return who


def batch_ms_of(raw: str | None) -> int:
    """`?batch_ms=N`: an integer 0..100, absent means 0 (every event its own frame)."""
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or int(raw) > MAX_BATCH_MS:
        raise BadRequest(f"batch_ms must be an integer from 0 to {MAX_BATCH_MS}")
    return int(raw)


def _refusal(exc: DmsError, *, status: int | None = None, headers: dict[str, str] | None = None,
             allowed_origins: tuple[str, ...] | list[str] = ()) -> Any:
    """The handshake's HTTP refusal: the REST API's error body and headers (see `DmsError`).

    A browser cannot read a refused WebSocket handshake's status, so its client asks `GET /ws` with
    fetch; for an allowed origin the answer is readable there, `Retry-After` included.
    """
    readable: dict[str, str] = {}
    origin = request.headers.get("Origin")
    if origin and ("*" in allowed_origins or origin in allowed_origins):
        readable = {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": "Retry-After",
                    "Vary": "Origin"}
    return jsonify(exc.body()), status or exc.status, {**exc.headers(), **readable, **(headers or {})}


def register(app: Flask, node: Admitting) -> None:
    """Route `/ws` to the handshake."""

    # Werkzeug matches an Upgrade request only to a rule marked websocket; the plain rule lets an
    # ordinary GET get a JSON answer from the same checks.
    @app.route("/ws", methods=["GET"], websocket=True, endpoint="ws_upgrade")
    @app.route("/ws", methods=["GET"], endpoint="ws_plain")
    def websocket() -> Any:
        try:
            who = admit(node)
            batch_ms = batch_ms_of(request.args.get("batch_ms"))
            if request.headers.get("Upgrade", "").lower() != "websocket":
                raise BadRequest("this endpoint speaks WebSocket: send an Upgrade request")
            if request.headers.get("Sec-WebSocket-Version") != "13":
                return _refusal(BadRequest("WebSocket version 13 only"), status=426,
                                headers={"Sec-WebSocket-Version": "13"})
            key = request.headers.get("Sec-WebSocket-Key", "")
            if not framing.valid_key(key):
                raise BadRequest("Sec-WebSocket-Key must be 16 bytes in base64")
            take = request.environ.get(TAKEOVER_KEY)
            if take is None:
                raise Unavailable("this server cannot hand over sockets (run it with gateway.transport.UpgradeHandler)")
        except DmsError as exc:
            return _refusal(exc, allowed_origins=node.config.allowed_origins)
        transport = accept(take, key)
        if transport is not None:
            node.open(transport, who, batch_ms=batch_ms)
        return Taken()
