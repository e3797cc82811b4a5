"""Sentry: a real `python -m api` process reports an unhandled error to the DSN's receiver."""

from __future__ import annotations

import gzip
import re
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.auth import mint_token
from devstack import embedded
from tests.fix_infra import JWT_SECRET, Infra
from tests.helpers import Process, WsClient, http_json, wait_for


class _Receiver(BaseHTTPRequestHandler):
    """Records every POST body, decompressed, as Sentry's ingest endpoint would receive it."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # the http.server hook name
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding == "br":
            import brotli  # the SDK only picks br when brotli is installed

            raw = brotli.decompress(raw)
        self.bodies.append(raw)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[bytes]]]:
    bodies: list[bytes] = []
    handler = type("Receiver", (_Receiver,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], bodies
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def api_reporting(infra: Infra, receiver: tuple[int, list[bytes]], tmp_path: Path
                  ) -> Iterator[tuple[str, list[bytes], Process]]:
    """An API process whose Sentry DSN points at the receiver: (its URL, what Sentry got, the process)."""
    port, bodies = receiver
    api_port = embedded.free_port()
    env = infra.env(API_PORT=str(api_port), SENTRY_DSN=f"http://publickey@127.0.0.1:{port}/1",
                    SENTRY_TRACES_SAMPLE_RATE="0")
    process = Process("api", env, tmp_path / "api.log")
    try:
        process.wait_http_ok(f"http://127.0.0.1:{api_port}/health")
        yield f"http://127.0.0.1:{api_port}", bodies, process
    finally:
        process.stop()


def test_an_unhandled_error_reaches_sentry(api_reporting: tuple[str, list[bytes], Process]) -> None:
    api, bodies, process = api_reporting
    secret_token = mint_token(JWT_SECRET, role="admin")
    status, _, body = http_json("GET", f"{api}/api/_test/boom?token={secret_token}", token=secret_token)
    assert status == 500
    assert body == {"error": {"code": "internal", "message": "internal error", "details": None}}
    envelope = wait_for(lambda: next((b for b in bodies if b"RuntimeError" in b), None), timeout_s=15,
                        message="a Sentry envelope with the exception")
    assert b"deliberate failure from /api/_test/boom" in envelope
    # Neither the Authorization header nor a ?token= value reaches Sentry or the logs.
    leaks = [b[max(0, b.find(secret_token.encode()) - 300):b.find(secret_token.encode())] for b in bodies
             if secret_token.encode() in b]
    assert leaks == []
    assert secret_token not in process.log()


def test_sentry_events_carry_the_request_id_as_a_tag(api_reporting: tuple[str, list[bytes], Process]) -> None:
    api, bodies, process = api_reporting
    request_ids = [f"sentry-tag-{n}-0001" for n in range(2)]
    for request_id in request_ids:
        status, headers, _ = http_json("GET", f"{api}/api/_test/boom", token=mint_token(JWT_SECRET, role="admin"),
                                       headers={"X-Request-ID": request_id})
        assert status == 500 and headers["X-Request-ID"] == request_id
    for request_id in request_ids:
        pattern = re.compile(rb'"tags":\s*\{[^}]*"request_id":\s*"' + request_id.encode() + rb'"')
        wait_for(lambda p=pattern: any(p.search(b) for b in bodies), timeout_s=15,
                 message=f"a Sentry event tagged {request_id}")
    # The error line of the log carries it too.
    wait_for(lambda: all(f"'request_id': '{rid}'" in process.log() or f'"request_id": "{rid}"' in process.log()
                         for rid in request_ids), timeout_s=5, message="request_id on the error log line")


def test_the_failing_route_exists_only_in_tests(infra: Infra) -> None:
    from api.app import create_app
    from common.config import Config

    app = create_app(Config.from_env(infra.env(DMS_ENV="dev")))
    try:
        assert all(not rule.rule.startswith("/api/_test") for rule in app.url_map.iter_rules())
    finally:
        app.extensions["dms"].close()


def test_traces_carry_no_token(infra: Infra, receiver: tuple[int, list[bytes]], tmp_path: Path,
                               start_gateway: Any) -> None:
    """Every trace is sampled, tokens go in headers and URLs, one request fails: no envelope holds one."""
    port, bodies = receiver
    dsn = f"http://publickey@127.0.0.1:{port}/1"
    api_port = embedded.free_port()
    api = Process("api", infra.env(API_PORT=str(api_port), SENTRY_DSN=dsn, SENTRY_TRACES_SAMPLE_RATE="1.0"),
                  tmp_path / "api.log")
    try:
        api.wait_http_ok(f"http://127.0.0.1:{api_port}/health")
        _, gw = start_gateway(name="gw-sentry", SENTRY_DSN=dsn, SENTRY_TRACES_SAMPLE_RATE="1.0")
        tokens = [mint_token(JWT_SECRET, role="admin") for _ in range(5)]
        base = f"http://127.0.0.1:{api_port}"
        status, _, _ = http_json("GET", f"{base}/api/_test/boom?token={tokens[0]}", token=tokens[0])
        assert status == 500
        status, _, _ = http_json("GET", f"{base}/api/restaurants?token={tokens[1]}", token=tokens[1])
        assert status == 200
        by_url = WsClient.connect(gw["url"], token=tokens[2])
        assert by_url.recv()["type"] == "welcome"
        by_header = WsClient.connect(gw["url"], headers=[f"Authorization: Bearer {tokens[3]}"])
        assert by_header.recv()["type"] == "welcome"
        by_url.close()
        by_header.close()
        # A refused handshake (expired token in the URL) is traced too.
        expired = mint_token(JWT_SECRET, role="admin", ttl_s=-60)
        status, _, _ = http_json("GET", f"{gw['http']}/ws?token={expired}")
        assert status == 401
        tokens.append(expired)

        def arrived() -> bool:
            text = b"\n".join(bodies)
            return (b"RuntimeError" in text and text.count(b'"type":"transaction"') >= 4
                    and b'"server_name":"gateway"' in text)

        wait_for(arrived, timeout_s=20, message="the error and the API's and gateway's transactions")
        for token in tokens:
            signature = token.rsplit(".", 1)[1].encode()
            leaks = [b[max(0, b.find(signature) - 200):b.find(signature) + 20] for b in bodies if signature in b]
            assert leaks == [], f"a token reached Sentry: {leaks[:2]!r}"
        assert b"/ws" in b"\n".join(bodies)  # the handshake transactions are there, scrubbed
    finally:
        api.stop()
