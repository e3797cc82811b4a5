"""Closing (contract section 5): after a server close the TCP connection goes, answered or not."""

from __future__ import annotations

import os
import socket
from typing import Any

from tests.fix_world import World
from tests.helpers import WsClient, seconds, wait_for

SILENT = 100


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _silent_client(host: str, port: int, token: str) -> socket.socket:
    """Completes the handshake (reads the 101), then never reads, never answers a ping or a close."""
    sock = socket.create_connection((host, port))
    sock.sendall(
        b"GET /ws?token=" + token.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.settimeout(seconds(10))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the response head is consumed
        assert chunk, "the gateway closed before answering the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _ended_by_peer(sock: socket.socket) -> bool:
    """Read what is left (welcome, pings, the close frame) until FIN or reset; False if it stays silent."""
    sock.settimeout(seconds(5))
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False  # still open: the gateway kept the connection
    return True


def test_silent_peers_cost_no_descriptors_after_the_close_timeout(start_gateway: Any, world: World) -> None:
    process, gw = start_gateway(name="closing", WS_PING_INTERVAL="0.5", WS_PING_TIMEOUT="0.5",
                                WS_CLOSE_TIMEOUT="1", WS_MAX_CONNECTIONS_PER_USER=str(SILENT + 10))
    pid = process.proc.pid
    host, port = "127.0.0.1", int(gw["url"].rsplit(":", 1)[1].split("/")[0])
    warm = WsClient.connect(gw["url"], token=world.admin)  # the pool and Redis are connected by now
    assert warm.recv()["type"] == "welcome"
    warm.close()
    baseline = wait_for(lambda: (n := _open_fds(pid)) and n, message="a descriptor count")
    silent: list[socket.socket] = []
    try:
        # Every client is accepted (each got its 101). The first may already be closed by the time the
        # last connects on a slow machine, so the descriptors are not required to peak all at once.
        peak = baseline
        for _ in range(SILENT):
            silent.append(_silent_client(host, port, world.admin))
            peak = max(peak, _open_fds(pid))
        print(f"gateway descriptors: baseline {baseline}, peak with {SILENT} silent clients {peak}")
        # Ping (0.5 s) + no pong (0.5 s) -> 1011 close; no answer to it (1 s) -> the socket is dropped.
        after = wait_for(lambda: (n := _open_fds(pid)) <= baseline + 3 and n, timeout_s=30,
                         message="descriptors back to the baseline")
        print(f"gateway descriptors after the close timeout: {after}")
        # The peers see the connection end (FIN or reset), not silence.
        still_open = [n for n, sock in enumerate(silent[:10]) if not _ended_by_peer(sock)]
        assert not still_open, f"connections the gateway kept open: {still_open}"
    finally:
        for sock in silent:
            sock.close()
