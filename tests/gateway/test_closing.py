"""Closing (contract section 5): after a server close the TCP connection goes, answered or not."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from tests.fix_world import World
from tests.helpers import WsClient, seconds, wait_for

SILENT = 100


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _silent_client(host: str, port: int, token: str) -> socket.socket:
    """Completes the handshake, then never reads, never answers a ping or a close frame."""
    sock = socket.create_connection((host, port))
    sock.sendall(
        b"GET /ws?token=" + token.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return sock


def test_silent_peers_cost_no_descriptors_after_the_close_timeout(start_gateway: Any, world: World) -> None:
    process, gw = start_gateway(name="closing", WS_PING_INTERVAL="0.5", WS_PING_TIMEOUT="0.5",
                                WS_CLOSE_TIMEOUT="1", WS_MAX_CONNECTIONS_PER_USER=str(SILENT + 10))
    pid = process.proc.pid
    host, port = "127.0.0.1", int(gw["url"].rsplit(":", 1)[1].split("/")[0])
    warm = WsClient.connect(gw["url"], token=world.admin)  # the pool and Redis are connected by now
    assert warm.recv()["type"] == "welcome"
    warm.close()
    baseline = wait_for(lambda: (n := _open_fds(pid)) and n, message="a descriptor count")
    silent = [_silent_client(host, port, world.admin) for _ in range(SILENT)]
    try:
        peak = wait_for(lambda: (n := _open_fds(pid)) >= baseline + SILENT and n, timeout_s=30,
                        message="all silent clients connected")
        print(f"gateway descriptors: baseline {baseline}, with {SILENT} silent clients {peak}")
        # Ping (0.5 s) + no pong (0.5 s) -> 1011 close; no answer to it (1 s) -> the socket is dropped.
        after = wait_for(lambda: (n := _open_fds(pid)) <= baseline + 3 and n, timeout_s=30,
                         message="descriptors back to the baseline")
        print(f"gateway descriptors after the close timeout: {after}")
        for sock in silent[:5]:  # the peer sees the connection end (FIN or reset), not silence
            sock.settimeout(seconds(5))
            ended = False
            deadline = time.monotonic() + seconds(5)
            while time.monotonic() < deadline and not ended:
                try:
                    ended = sock.recv(65536) == b""
                except (ConnectionResetError, TimeoutError):
                    ended = True
            assert ended
    finally:
        for sock in silent:
            sock.close()
