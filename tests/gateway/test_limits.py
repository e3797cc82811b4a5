"""Limits and close codes: 1009, 1008, 4008, 4001, keepalive timeout, app-level ping."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import redis
import websocket

from common.auth import mint_token
from common.events import REDIS_PREFIX
from tests.conftest import JWT_SECRET, Infra, World
from tests.helpers import WsClient, seconds, wait_for


def _close_code(ws: WsClient, *, timeout_s: float = 10.0) -> int:
    """Read until the server closes; return its close code."""
    try:
        return _read_close_code(ws, timeout_s=timeout_s)
    finally:
        ws.close()


def _read_close_code(ws: WsClient, *, timeout_s: float) -> int:
    deadline = time.monotonic() + seconds(timeout_s)
    ws.ws.settimeout(seconds(timeout_s))
    while time.monotonic() < deadline:
        try:
            opcode, data = ws.ws.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            break
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
        if opcode == websocket.ABNF.OPCODE_TEXT:
            ws.seen.append(json.loads(data))
    raise AssertionError("the server did not close the connection")


def _welcomed(url: str, token: str) -> WsClient:
    ws = WsClient.connect(url, token=token)
    assert ws.recv()["type"] == "welcome"
    return ws


def test_app_level_ping(gateway: dict[str, str], world: World) -> None:
    ws = _welcomed(gateway["url"], world.admin)
    pong = ws.request({"type": "ping", "ref": "abc"})
    ws.close()
    assert pong["type"] == "pong" and pong["ref"] == "abc" and pong["server_time"].endswith("Z")


def test_a_frame_over_the_size_limit_closes_with_1009(gateway: dict[str, str], world: World) -> None:
    ws = _welcomed(gateway["url"], world.admin)
    ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
    assert _close_code(ws) == 1009


def test_a_flood_gets_rate_limited_then_closed_with_1008(gateway: dict[str, str], world: World) -> None:
    ws = _welcomed(gateway["url"], world.admin)
    began = time.monotonic()
    for n in range(100):
        ws.send({"type": "ping", "ref": f"f{n}"})
    assert _close_code(ws) == 1008
    took = time.monotonic() - began
    errors = [f for f in ws.seen if f.get("type") == "error"]
    assert errors and all(f["code"] == "rate_limited" for f in errors)
    # The burst passed, plus what the bucket refilled (20/s) while a loaded box worked through the flood.
    pongs = len([f for f in ws.seen if f.get("type") == "pong"])
    assert 40 <= pongs <= 40 + int(20 * took) + 1, (pongs, took)


def test_an_expiring_token_closes_with_4001(gateway: dict[str, str]) -> None:
    ws = _welcomed(gateway["url"], mint_token(JWT_SECRET, role="admin", ttl_s=2))
    assert _close_code(ws, timeout_s=10) == 4001


def test_no_pong_closes_the_connection(start_gateway: Any, world: World) -> None:
    import threading

    _, gw = start_gateway(name="fastping", WS_PING_INTERVAL="0.3", WS_PING_TIMEOUT="0.3")
    answering = _welcomed(gw["url"], world.admin)  # websocket-client answers pings while it reads
    pongs: list[dict[str, Any]] = []

    def keep_reading() -> None:
        # Several ping rounds long; `request` reads (and so answers server pings) until its pong.
        for _ in range(10):
            pongs.append(answering.request({"type": "ping"}, timeout_s=5))
            time.sleep(0.2)

    reader = threading.Thread(target=keep_reading)
    reader.start()
    # A raw socket that completes the handshake and then never reads or answers anything.
    silent = socket.create_connection((gw["url"].split("//")[1].split(":")[0],
                                       int(gw["url"].rsplit(":", 1)[1].split("/")[0])))
    silent.sendall(
        b"GET /ws?token=" + world.admin.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    silent.settimeout(seconds(10))
    received = b""
    deadline = time.monotonic() + seconds(10)
    closed_by_server = False
    while time.monotonic() < deadline:
        try:
            chunk = silent.recv(65536)
        except ConnectionResetError:
            closed_by_server = True
            break
        if not chunk:
            closed_by_server = True
            break
        received += chunk
        if b"\x88" in received.split(b"\r\n\r\n", 1)[-1]:  # a close frame
            closed_by_server = True
            break
    silent.close()
    assert closed_by_server, received[-200:]
    reader.join(timeout=seconds(20))
    # The client that answers pings is still served after several ping rounds.
    assert [p["type"] for p in pongs] == ["pong"] * 10
    answering.close()


def test_a_slow_consumer_is_closed_with_4008_and_others_keep_flowing(gateway: dict[str, str], infra: Infra,
                                                                     world: World) -> None:
    import threading

    channel = f"restaurant:{world.restaurant_id}"
    frames, pad = 600, "x" * 30_000  # ~18 MB: far past a stalled client's socket buffers and 1 MiB queue
    slow = _welcomed(gateway["url"], world.admin)
    fast = _welcomed(gateway["url"], world.admin)
    received: list[int] = []

    def read_fast() -> None:  # the healthy client reads as fast as frames come
        while len(received) < frames:
            received.append(fast.recv_until(lambda f: f.get("event") == "test.bulk", timeout_s=20)["data"]["n"])

    try:
        slow.subscribe(channel)
        fast.subscribe(channel)
        publisher = redis.Redis.from_url(infra.redis_url)
        reader = threading.Thread(target=read_fast)
        reader.start()
        for n in range(frames):
            frame = json.dumps({"type": "event", "channel": channel, "id": None, "event": "test.bulk",
                                "data": {"n": n, "pad": pad}, "ts": "2026-01-01T00:00:00Z"})
            publisher.publish(REDIS_PREFIX + channel, f"-|{frame}")
            time.sleep(0.01)  # ~3 MB/s: a reading client keeps up, a stalled one cannot
        reader.join(timeout=seconds(60))
        publisher.close()
        assert received == list(range(frames))
        assert _close_code(slow, timeout_s=20) == 4008
    finally:
        slow.close()
        fast.close()


@pytest.mark.parametrize("frame", ['{"type": "subscribe", "channel": "orders"}'])
def test_demo_and_drivers_cannot_reach_admin_channels(gateway: dict[str, str], world: World, frame: str) -> None:
    for token in (world.demo, world.driver, world.restaurant):
        ws = _welcomed(gateway["url"], token)
        ws.send(frame)
        reply = ws.recv_until(lambda f: f.get("type") in ("error", "subscribed"))
        ws.close()
        assert reply["type"] == "error" and reply["code"] == "forbidden"


def test_admin_counts_are_published(gateway: dict[str, str], infra: Infra, world: World) -> None:
    from common.gateway_stats import read_all

    client = redis.Redis.from_url(infra.redis_url, decode_responses=True)
    ws = _welcomed(gateway["url"], world.demo)
    try:
        body = wait_for(lambda: (b := read_all(client)) and b["by_role"]["demo"] >= 1 and b,
                        message="the gateway's numbers in Redis")
        assert body["total"] >= 1 and any(i["id"] == "gw-test" for i in body["instances"])
        admin = _welcomed(gateway["url"], world.admin)
        admin.subscribe("admin:connections")
        stats = admin.recv_until(lambda f: f.get("event") == "connections.stats", timeout_s=10)
        assert stats["id"] is None and stats["data"]["total"] >= 2
        admin.close()
    finally:
        ws.close()
