"""`python -m relay`: the relay alone, with `GET /health` and `GET /metrics` on RELAY_HOST:RELAY_PORT.

Plain blocking I/O, no gevent: the loop runs in the main thread, the two endpoints in a
standard-library HTTP server on a daemon thread.
"""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from common.boot import boot
from common.redis_client import redis_for
from relay.loop import Relay


def serve_http(relay: Relay, host: str, port: int) -> ThreadingHTTPServer:
    """Start answering /health and /metrics on a daemon thread; the caller shuts it down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                body = json.dumps({"status": "ok", "relay_leader": relay.is_leader,
                                   "last_id": relay.last_id}).encode()
                self._answer(200, "application/json", body)
            elif self.path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            else:
                self._answer(404, "application/json", b'{"error":{"code":"not_found"}}')

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the relay's own lines

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="relay-http", daemon=True).start()
    return server


def main() -> int:
    config = boot("relay")
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    relay = Relay(listen_url=config.database_listen_url, redis_client=redis_for(config),
                  retention_hours=config.event_retention_hours, housekeeping_retention=config.retention)
    server = serve_http(relay, config.relay_host, config.relay_port)
    logger.info("relay serving /health and /metrics on http://{}:{}", config.relay_host, config.relay_port)
    try:
        relay.run(lambda: running)
    finally:
        server.shutdown()
    return 0
