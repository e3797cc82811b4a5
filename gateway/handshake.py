"""The WebSocket handshake, answered from the WSGI environ in front of Flask.

A draining gateway, a full or too busy one (gateway.admission), a bad origin, token, per-user cap,
`batch_ms` or WebSocket header gets the contract's HTTP error and no upgrade. An accepted
handshake takes the socket out of pywsgi, the `Transport` answers 101 on it (with the
permessage-deflate answer gateway.compression gives a client's offer), and the node opens the
connection. Admission comes first, before the token is verified, so a refusal in a storm
costs microseconds.

Why not a Flask view: in a reconnect storm a gateway takes a thousand handshakes a second, and
Flask's request context, URL matching and Werkzeug's header and query objects were about half of
a handshake's CPU (docs/perf/handshake-profile.md). The checks read four headers and the query
string, which the environ already holds as strings. `/health` and `/metrics` stay Flask views.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sized
from typing import Any, Protocol
from urllib.parse import parse_qsl

import redis

from common.auth import Identity, TokenVerifier
from common.config import Config
from common.errors import BadRequest, DmsError, Forbidden, MethodNotAllowed, RateLimited, Unavailable
from gateway import compression, credentials, framing, metrics
from gateway.admission import Admission, Refused
from gateway.transport import TAKEOVER_KEY, Transport, accept

PATH = "/ws"
MAX_BATCH_MS = 100
_STATUS_LINES = {400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
                 405: "405 Method Not Allowed", 426: "426 Upgrade Required", 429: "429 Too Many Requests",
                 500: "500 Internal Server Error", 503: "503 Service Unavailable"}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


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


class UpgradeRequired(BadRequest):
    """A WebSocket version other than 13: 426 with the version this server speaks."""

    status = 426

    def headers(self) -> dict[str, str]:
        return {"Sec-WebSocket-Version": "13"}


def admit(node: Admitting, environ: dict[str, Any], query: dict[str, str]) -> Identity:
    """Check a WebSocket handshake before upgrading; raise the HTTP error to answer instead."""
    config = node.config
    try:
        node.admission.admit(open_connections=len(node.connections), draining=node.draining)
    except Refused as refused:
        metrics.HANDSHAKES.labels(f"refused_{refused.reason}").inc()
        raise
    origin = environ.get("HTTP_ORIGIN")
    if origin and "*" not in config.allowed_origins and origin not in config.allowed_origins:
        raise Forbidden("origin not allowed")
    who = credentials.identify(query, environ.get("HTTP_AUTHORIZATION", ""), node.tokens, node.redis)
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


def query_of(environ: dict[str, Any]) -> dict[str, str]:
    """The query string's parameters, the first value of each (as Werkzeug's `args.get`)."""
    query: dict[str, str] = {}
    for name, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
        query.setdefault(name, value)
    return query


def websocket_key(environ: dict[str, Any]) -> str:
    """The checked `Sec-WebSocket-Key` of an Upgrade request, or the HTTP error to answer."""
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        raise BadRequest("this endpoint speaks WebSocket: send an Upgrade request")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
        raise UpgradeRequired("WebSocket version 13 only")
    key: str = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
    if not framing.valid_key(key):
        raise BadRequest("Sec-WebSocket-Key must be 16 bytes in base64")
    return key


def refusal(exc: DmsError, environ: dict[str, Any], start_response: Callable[..., Any],
            allowed_origins: tuple[str, ...] | list[str] = ()) -> list[bytes]:
    """The handshake's HTTP refusal: the REST API's error body and headers (see `DmsError`).

    A browser cannot read a refused WebSocket handshake's status, so its client asks `GET /ws` with
    fetch; for an allowed origin the answer is readable there, `Retry-After` included.
    """
    body = json.dumps(exc.body()).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *exc.headers().items()]
    origin = environ.get("HTTP_ORIGIN")
    if origin and ("*" in allowed_origins or origin in allowed_origins):
        headers += [("Access-Control-Allow-Origin", origin), ("Access-Control-Expose-Headers", "Retry-After"),
                    ("Vary", "Origin")]
    start_response(_STATUS_LINES.get(exc.status, f"{exc.status} Error"), headers)
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


class Handshakes:
    """WSGI middleware: `/ws` is answered here, every other path by the app behind (Flask)."""

    def __init__(self, node: Admitting, app: WsgiApp) -> None:
        self.node = node
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        node = self.node
        try:
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                raise MethodNotAllowed("this endpoint answers GET (a WebSocket upgrade)", allow=("GET", "HEAD"))
            query = query_of(environ)
            who = admit(node, environ, query)
            batch_ms = batch_ms_of(query.get("batch_ms"))
            key = websocket_key(environ)
            take = environ.get(TAKEOVER_KEY)
            if take is None:
                raise Unavailable("this server cannot hand over sockets (run it with gateway.transport.UpgradeHandler)")
        except DmsError as exc:
            return refusal(exc, environ, start_response, node.config.allowed_origins)
        deflate = compression.negotiate(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"),
                                        enabled=node.config.ws_compression)
        transport = accept(take, key, deflate=deflate)
        if transport is not None:
            node.open(transport, who, batch_ms=batch_ms)
        # pywsgi no longer holds the socket: it writes nothing, since start_response is never called.
        return []
