"""Control frames count toward the outbound queue limits: a client that pings and never reads is
closed with 4008 like any slow consumer (on a socketpair, and against a real gateway)."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from gevent import socket as gsocket

from gateway import framing
from gateway.framing import CloseCode
from gateway.transport import Transport
from tests.fix_world import World
from tests.helpers import seconds, split_server_frames


def test_pongs_alone_reach_the_queue_limit() -> None:
    ours, peer = gsocket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        transport = Transport(ours, max_queued_frames=10, max_queued_bytes=1 << 20)
        slow: list[bool] = []
        transport.on_slow_consumer = lambda: slow.append(True)
        for _ in range(2000):  # nobody reads: the kernel buffer fills, then the queue
            if not transport.send_control(framing.pong(b"p" * 125)):
                break
        assert transport.close_code == CloseCode.SLOW_CONSUMER and slow == [True]
        assert transport.queued_frames <= 11  # the backlog was dropped, only the close frame waits
    finally:
        ours.close()
        peer.close()


def _masked_ping(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x89, 0x80 | len(payload)]) + mask + framing.unmask(payload, mask)


def test_a_client_that_pings_and_never_reads_is_closed_with_4008(world: World, start_gateway: Any) -> None:
    # A long close timeout: the client reads its backlog after the close, before the gateway drops it.
    _, gw = start_gateway(name="pinger", WS_CLOSE_TIMEOUT="60")
    host, port = gw["http"].split("//")[1].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        b"GET /ws?token=" + world.admin.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.settimeout(seconds(10))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the gateway closed before answering the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    # Ping and never read: 16 MB of pings ask for more pongs than the kernel buffers hold (4 MB at
    # most on Linux), so the gateway's queue must take the rest, pass its limit and close with 4008.
    batch = _masked_ping(b"x" * 125) * 1000
    for _ in range(128):
        sock.sendall(batch)
    buf, last_op, last_body = b"", -1, b""
    while last_op != framing.OP_CLOSE:
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended without a close frame (last frame op {last_op})"
        frames, buf = split_server_frames(buf + chunk)
        closes = [body for op, body in frames if op == framing.OP_CLOSE]
        if closes:
            last_op, last_body = framing.OP_CLOSE, closes[0]
        elif frames:
            last_op = frames[-1][0]
    assert struct.unpack("!H", last_body[:2])[0] == CloseCode.SLOW_CONSUMER
    sock.close()
