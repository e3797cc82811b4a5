"""permessage-deflate on the real gateway: a client that offers it and one that does not, side by side.

The client here is a raw socket, so the test sees the 101 answer and every frame's RSV1 bit as sent.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.request
import zlib
from typing import Any

from common.db import connect
from common.events import write_event
from gateway import compression
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import seconds

OFFER = "permessage-deflate; client_max_window_bits"
ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
RSV1 = 0x40
MASK = b"\x11\x22\x33\x44"


class RawClient:
    """A WebSocket client that keeps each server frame's first byte and raw payload."""

    def __init__(self, url: str, token: str, *, offer: str | None = None, query: str = "") -> None:
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=seconds(10))
        extension = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        self.sock.sendall(f"GET /ws?token={token}{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          f"Sec-WebSocket-Version: 13\r\n{extension}\r\n".encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101 "), lines[0]
        self.headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        self.frames: list[tuple[int, bytes]] = []  # (first byte, payload) of every frame read

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the gateway closed the connection"
        self.buffer += chunk

    def frame(self) -> tuple[int, bytes]:
        """The next server frame as sent: (first byte, payload)."""
        while True:
            if len(self.buffer) >= 2:
                n, offset = self.buffer[1] & 0x7F, 2
                if n == 126 and len(self.buffer) >= 4:
                    n, offset = struct.unpack_from("!H", self.buffer, 2)[0], 4
                elif n == 127 and len(self.buffer) >= 10:
                    n, offset = struct.unpack_from("!Q", self.buffer, 2)[0], 10
                if (offset > 2 or n < 126) and len(self.buffer) >= offset + n:
                    first, payload = self.buffer[0], self.buffer[offset:offset + n]
                    self.buffer = self.buffer[offset + n:]
                    self.frames.append((first, payload))
                    return first, payload
            self._fill()

    def message(self) -> dict[str, Any]:
        """The next text frame as JSON, inflated when RSV1 says it is compressed."""
        first, payload = self.frame()
        assert first & 0x0F == 0x1, f"expected a text frame, got {first:#x}"
        return json.loads(inflate(payload) if first & RSV1 else payload)

    def until(self, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + seconds(10)
        while time.monotonic() < deadline:
            body = self.message()
            if body["type"] == kind:
                return body
        raise AssertionError(f"no {kind} frame")

    def send(self, body: dict[str, Any], *, compressed: bool = False) -> None:
        payload = json.dumps(body).encode()
        if compressed:
            payload = compression.deflate(payload)
        self.send_raw((0xC1 if compressed else 0x81), payload)

    def send_raw(self, first: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([first, 0x80 | n]) if n < 126 else bytes([first, 0x80 | 126]) + struct.pack("!H", n)
        masked = bytes(byte ^ MASK[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(head + MASK + masked)

    def close_code(self) -> int:
        deadline = time.monotonic() + seconds(10)
        while time.monotonic() < deadline:
            first, payload = self.frame()
            if first & 0x0F == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])
        raise AssertionError("no close frame")

    def close(self) -> None:
        self.sock.close()


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


def metric_values(base_url: str) -> dict[str, float]:
    with urllib.request.urlopen(base_url + "/metrics", timeout=seconds(10)) as response:
        lines = response.read().decode().splitlines()
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines if line[:1] != "#")}


def publish(infra: Infra, channel: str, datas: list[dict[str, Any]]) -> None:
    with connect(infra.database_url) as conn:
        for data in datas:
            write_event(conn, event="test.compression", channels=[channel], data=data)
        conn.commit()


def subscribed(client: RawClient, channel: str, *, compressed: bool = False) -> None:
    client.send({"type": "subscribe", "channel": channel, "ref": "s"}, compressed=compressed)
    assert client.until("subscribed")["channel"] == channel


def test_compressed_and_plain_clients_get_the_same_events(gateway: dict[str, str], world: World,
                                                          infra: Infra) -> None:
    channel = f"order:{world.restaurant_id}"
    offering = RawClient(gateway["url"], world.admin, offer=OFFER)
    plain = RawClient(gateway["url"], world.admin)
    try:
        assert offering.headers["sec-websocket-extensions"] == ANSWER
        assert "sec-websocket-extensions" not in plain.headers
        assert offering.until("welcome") and plain.until("welcome")
        subscribed(offering, channel, compressed=True)  # a compressed client message is inflated
        subscribed(plain, channel)
        publish(infra, channel, [{"note": "a big order " * 40}, {"n": 1}])
        big_plain, small_plain = plain.until("event"), plain.until("event")
        big, small = offering.until("event"), offering.until("event")
        assert (big, small) == (big_plain, small_plain)
        (big_first, big_payload), (small_first, small_payload) = offering.frames[-2:]
        (plain_big_first, plain_big_payload), (plain_small_first, plain_small_payload) = plain.frames[-2:]
        # The big event: RSV1, raw DEFLATE that inflates to the plain client's exact bytes.
        assert big_first == 0xC1 and inflate(big_payload) == plain_big_payload
        assert len(big_payload) < len(plain_big_payload) / 2
        # Under 256 bytes nothing is compressed: the same frame for both.
        assert len(small_payload) < 256 and small_first == plain_small_first == 0x81
        assert small_payload == plain_small_payload
        # The client that offered nothing sees no RSV1 bit, ever.
        assert all(first & 0x70 == 0 for first, _ in plain.frames) and plain_big_first == 0x81
        scraped = metric_values(gateway["http"])
        assert scraped["dms_gateway_deflate_connections"] >= 1
        assert scraped['dms_gateway_deflated_frames_total{kind="event"}'] >= 1
    finally:
        offering.close()
        plain.close()


def test_a_batch_is_compressed_as_one_message(gateway: dict[str, str], world: World, infra: Infra) -> None:
    channel = f"order:{world.restaurant_id}"
    client = RawClient(gateway["url"], world.admin, offer="permessage-deflate", query="&batch_ms=100")
    try:
        client.until("welcome")
        subscribed(client, channel)
        publish(infra, channel, [{"n": n, "note": "same words again"} for n in range(10)])
        got: list[int] = []
        deadline = time.monotonic() + seconds(10)
        while len(got) < 10 and time.monotonic() < deadline:
            body = client.message()
            if body["type"] == "batch":
                got += [event["data"]["n"] for event in body["events"]]
            elif body["type"] == "event":
                got.append(body["data"]["n"])
        assert got == list(range(10))
        assert any(first == 0xC1 for first, _ in client.frames[-10:])
    finally:
        client.close()


def test_an_inflation_bomb_closes_with_1009(gateway: dict[str, str], world: World) -> None:
    client = RawClient(gateway["url"], world.admin, offer=OFFER)
    try:
        client.until("welcome")
        bomb = compression.deflate(b'{"type":"ping","pad":"' + b" " * 1_000_000 + b'"}')
        assert len(bomb) < 2000  # well under WS_MAX_MESSAGE_BYTES on the wire
        client.send_raw(0xC1, bomb)
        assert client.close_code() == 1009
    finally:
        client.close()


def test_rsv1_without_the_extension_is_a_protocol_error(gateway: dict[str, str], world: World) -> None:
    client = RawClient(gateway["url"], world.admin)
    try:
        client.until("welcome")
        client.send({"type": "ping", "ref": "p"}, compressed=True)
        assert client.close_code() == 1002
    finally:
        client.close()


def test_ws_compression_off_answers_plain(start_gateway: Any, world: World) -> None:
    _, gw = start_gateway(name="nodeflate", WS_COMPRESSION="off")
    client = RawClient(gw["url"], world.admin, offer=OFFER)
    try:
        assert "sec-websocket-extensions" not in client.headers
        assert client.until("welcome")["type"] == "welcome"
    finally:
        client.close()

