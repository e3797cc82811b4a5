"""Handshake rules: token, origin, per-user cap, and the welcome frame."""

from __future__ import annotations

import uuid

import pytest
import websocket

from common.auth import mint_token
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import World
from tests.helpers import WsClient, http_json


def _refused(url: str, token: str | None, *, origin: str | None = None) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WsClient.connect(url, token=token, origin=origin)
    return int(info.value.status_code)


@pytest.mark.parametrize(
    "token",
    [None, "garbage", mint_token("wrong-secret-0123456789abcdef012", role="admin"),
     mint_token(JWT_SECRET, role="admin", ttl_s=-10)],
    ids=["missing", "garbage", "bad-signature", "expired"],
)
def test_bad_tokens_get_401_without_upgrade(gateway: dict[str, str], token: str | None) -> None:
    assert _refused(gateway["url"], token) == 401


def test_origin_outside_the_allowed_list_gets_403(gateway: dict[str, str], world: World) -> None:
    assert _refused(gateway["url"], world.admin, origin="http://evil.example") == 403
    ws = WsClient.connect(gateway["url"], token=world.admin, origin="http://allowed.example")
    assert ws.recv()["type"] == "welcome"
    ws.close()


def test_the_authorization_header_works_too(gateway: dict[str, str], world: World) -> None:
    ws = WsClient.connect(gateway["url"], headers=[f"Authorization: Bearer {world.driver}"])
    hello = ws.recv()
    assert hello["user"] == {"id": world.driver_id, "role": "driver"}
    ws.close()


def test_welcome_frame_follows_the_contract(gateway: dict[str, str], world: World) -> None:
    ws = WsClient.connect(gateway["url"], token=world.demo)
    hello = ws.recv()
    ws.close()
    assert set(hello) == {"type", "connection_id", "user", "ping_interval", "max_subscriptions", "server_time"}
    assert hello["user"]["role"] == "demo" and hello["max_subscriptions"] == 50
    assert hello["server_time"].endswith("Z")


def test_more_than_the_per_user_cap_gets_429(gateway: dict[str, str]) -> None:
    token = mint_token(JWT_SECRET, role="admin", sub=str(uuid.uuid4()))
    clients = [WsClient.connect(gateway["url"], token=token) for _ in range(10)]
    try:
        for client in clients:
            assert client.recv()["type"] == "welcome"
        assert _refused(gateway["url"], token) == 429
    finally:
        for client in clients:
            client.close()


def test_health_reports_the_gateway(gateway: dict[str, str]) -> None:
    status, _, body = http_json("GET", gateway["http"] + "/health")
    assert status == 200 and body["status"] == "ok" and body["id"] == "gw-test"


def test_tokens_never_reach_the_gateway_log(gateway: dict[str, str], world: World) -> None:
    from pathlib import Path

    ws = WsClient.connect(gateway["url"], token=world.restaurant)
    ws.recv()
    ws.subscribe(f"restaurant:{world.restaurant_id}")
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException):
        WsClient.connect(gateway["url"], token=world.restaurant[:-4] + "AAAA")
    log = Path(gateway["log"]).read_text()
    assert "connected" in log
    assert world.restaurant not in log and world.restaurant[:-4] not in log


@pytest.mark.parametrize("value", ["abc", "-1", "101", "1.5", "1e2"])
def test_a_bad_batch_ms_gets_400_without_upgrade(gateway: dict[str, str], world: World, value: str) -> None:
    assert _refused(gateway["url"] + f"?batch_ms={value}&token={world.admin}", None) == 400


def test_batch_ms_groups_events_of_one_window(gateway: dict[str, str], infra: Infra, world: World) -> None:
    import json

    import redis as redis_lib

    from common.events import publish_ephemeral

    ws = WsClient.connect(gateway["url"] + f"?batch_ms=100&token={world.admin}")
    try:
        assert ws.recv()["type"] == "welcome"
        channel = f"restaurant:{world.restaurant_id}"
        ws.subscribe(channel)
        publisher = redis_lib.Redis.from_url(infra.redis_url)
        for n in range(3):
            frame = json.dumps({"type": "event", "channel": channel, "id": None, "event": "test.batch",
                                "data": {"n": n}, "ts": "2026-01-01T00:00:00Z"})
            publish_ephemeral(publisher, channel, frame)
        publisher.close()
        got: list[int] = []
        while len(got) < 3:
            frame = ws.recv_until(lambda f: f.get("type") in ("batch", "event"))
            events = frame["events"] if frame["type"] == "batch" else [frame]
            got += [e["data"]["n"] for e in events]
            assert all(e["type"] == "event" and e["channel"] == channel for e in events)
        assert got == [0, 1, 2]
        assert any(f.get("type") == "batch" for f in ws.seen)  # three publishes well within 100 ms
    finally:
        ws.close()


def test_after_the_upgrade_only_websocket_frames_follow(gateway: dict[str, str], world: World) -> None:
    """pywsgi hands the socket over and writes nothing after the 101: no second HTTP response."""
    import socket
    import time

    host, port = gateway["url"].split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    sock.sendall(b"GET /ws?token=" + world.admin.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b'"welcome"' not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert rest[0] == 0x81  # a final text frame, unmasked
    ping = b'{"type":"ping","ref":"p"}'
    mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as is; the mask bit is what is required
    sock.sendall(bytes([0x81, 0x80 | len(ping)]) + mask + ping)
    deadline = time.monotonic() + 10
    while b'"pong"' not in rest and time.monotonic() < deadline:
        rest += sock.recv(65536)
    sock.close()
    assert b'"pong"' in rest and b"HTTP/1." not in rest


def test_ws_answers_only_get_and_plain_requests_get_json(gateway: dict[str, str], world: World) -> None:
    """The handshake is answered ahead of Flask: other methods get 405, a GET without Upgrade a 400 body."""
    base = gateway["url"].replace("ws://", "http://", 1)
    status, headers, body = http_json("POST", base, {}, token=world.admin)
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert body["error"]["code"] == "method_not_allowed"
    status, headers, body = http_json("GET", base, token=world.admin)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert "Upgrade" in body["error"]["message"]
    status, _, body = http_json("GET", base.replace("/ws", "/health"))
    assert status == 200 and body["status"] == "ok"  # every other path is still Flask's

