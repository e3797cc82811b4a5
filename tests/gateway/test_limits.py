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
from common.events import publish_ephemeral
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import World
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


class RawClient:
    """A bare WebSocket client on a blocking socket: what it reads is counted, not raced."""

    def __init__(self, url: str, token: str, *, rcvbuf: int | None = None) -> None:
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.sock = socket.socket()
        if rcvbuf is not None:  # set before connect so the advertised window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        self.sock.sendall(
            b"GET /ws?token=" + token.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.buf = b""
        self.sock.settimeout(seconds(10))
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, body: dict[str, Any]) -> None:
        payload, mask = json.dumps(body).encode(), b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def frame(self) -> tuple[int, bytes]:
        """The next server frame (opcode, payload); (-1, b"") when the connection ended."""
        while True:
            if len(self.buf) >= 2:
                n, offset = self.buf[1] & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, offset = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127 and len(self.buf) >= 10:
                    n, offset = int.from_bytes(self.buf[2:10], "big"), 10
                if n < 126 or offset > 2:
                    if len(self.buf) >= offset + n:
                        opcode, body = self.buf[0] & 0x0F, self.buf[offset:offset + n]
                        self.buf = self.buf[offset + n:]
                        return opcode, body
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                return -1, b""
            if not chunk:
                return -1, b""
            self.buf += chunk

    def text(self, predicate: Any) -> dict[str, Any]:
        while True:
            opcode, body = self.frame()
            assert opcode != -1, "the connection ended"
            if opcode == 1 and predicate(frame := json.loads(body)):
                return frame  # type: ignore[no-any-return]


def test_a_slow_consumer_is_closed_with_4008_and_others_keep_flowing(gateway: dict[str, str], infra: Infra,
                                                                     world: World) -> None:
    """A client that never reads beside one that reads every frame before the next is published:
    the stalled one is closed with 4008, the reader gets every frame in order. Nothing races."""
    channel = f"restaurant:{world.restaurant_id}"
    frames, pad = 600, "x" * 30_000  # ~18 MB: far past a stalled client's socket buffers and 1 MiB queue
    stalled = RawClient(gateway["url"], world.admin, rcvbuf=4096)
    healthy = RawClient(gateway["url"], world.admin)
    publisher = redis.Redis.from_url(infra.redis_url)
    try:
        for client in (stalled, healthy):
            client.text(lambda f: f["type"] == "welcome")
            client.send({"type": "subscribe", "channel": channel, "ref": "s"})
            client.text(lambda f: f["type"] == "subscribed")
        received = []
        for n in range(frames):
            frame = json.dumps({"type": "event", "channel": channel, "id": None, "event": "test.bulk",
                                "data": {"n": n, "pad": pad}, "ts": "2026-01-01T00:00:00Z"})
            publish_ephemeral(publisher, channel, frame)
            received.append(healthy.text(lambda f: f.get("event") == "test.bulk")["data"]["n"])
        assert received == list(range(frames))
        # Now the stalled client reads: an in-order prefix of the frames, then the 4008 close.
        got, code = [], None
        while code is None:
            opcode, body = stalled.frame()
            if opcode == 1:
                got.append(json.loads(body)["data"]["n"])
            elif opcode == 8:
                code = int.from_bytes(body[:2], "big")
            elif opcode == -1:
                break
        assert code == 4008
        assert got == list(range(len(got))) and len(got) < frames
    finally:
        publisher.close()
        stalled.sock.close()
        healthy.sock.close()


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
