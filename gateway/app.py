"""The gateway's WSGI app: the WebSocket handshake (gateway.handshake) in front of Flask's /health, /metrics."""

from __future__ import annotations

from typing import Any, Protocol

from flask import Flask, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway import handshake, metrics


class Node(handshake.Admitting, Protocol):
    """What the app reads of the gateway node for /health."""

    id: str
    connections: set[Any]
    relay: Any


def create_gateway_app(gateway: Node) -> Flask:
    app = Flask(__name__)
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

    # The handshake answers /ws from the environ before Flask builds a request (see gateway.handshake).
    app.wsgi_app = handshake.Handshakes(gateway, app.wsgi_app)  # type: ignore[method-assign]
    return app
