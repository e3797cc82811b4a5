"""The gateway's Flask app: the WebSocket handshake (checks, HTTP refusals, upgrade), /health, /metrics.

Flask answers the handshake: a bad token, origin, per-user cap or `batch_ms` gets the contract's
HTTP error and no upgrade. An accepted handshake takes the socket out of pywsgi (see
`gateway.transport`), answers 101 itself and hands the socket to the gateway; Flask is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from common.errors import BadRequest, DmsError, Unavailable
from gateway import framing, metrics
from gateway.transport import TAKEOVER_KEY, upgrade_response

if TYPE_CHECKING:
    from gateway.server import Gateway

MAX_BATCH_MS = 100


class _Taken(Response):
    """The response of a taken-over socket: pywsgi writes nothing, since start_response is never called."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return []


def _refusal(exc: DmsError, *, status: int | None = None, headers: dict[str, str] | None = None) -> Any:
    """The handshake's HTTP refusal: the REST API's error body and headers (see `DmsError`)."""
    return jsonify(exc.body()), status or exc.status, {**exc.headers(), **(headers or {})}


def batch_ms_of(raw: str | None) -> int:
    """`?batch_ms=N`: an integer 0..100, absent means 0 (every event its own frame)."""
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or int(raw) > MAX_BATCH_MS:
        raise BadRequest(f"batch_ms must be an integer from 0 to {MAX_BATCH_MS}")
    return int(raw)


def create_gateway_app(gateway: Gateway) -> Flask:
    app = Flask(__name__)

    # Werkzeug matches an Upgrade request only to a rule marked websocket; the plain rule lets an
    # ordinary GET get a JSON answer from the same checks.
    @app.route("/ws", methods=["GET"], websocket=True, endpoint="ws_upgrade")
    @app.route("/ws", methods=["GET"], endpoint="ws_plain")
    def websocket() -> Any:
        try:
            who = gateway.admit()
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
            return _refusal(exc)
        sock = take()
        try:
            sock.sendall(upgrade_response(key))
        except OSError:
            sock.close()
            return _Taken()
        gateway.open(sock, who, batch_ms=batch_ms)
        return _Taken()

    metrics.GATEWAYS.track(gateway)

    @app.get("/metrics")
    def prometheus_metrics() -> Any:
        return generate_latest(REGISTRY), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    @app.get("/health")
    def health() -> Any:
        if gateway.draining:
            return jsonify({"status": "draining", "id": gateway.id}), 503
        return jsonify({"status": "ok", "id": gateway.id, "connections": len(gateway.connections),
                        "relay_leader": bool(gateway.relay and gateway.relay.is_leader)})

    return app
