"""A scripted WebSocket server on a loopback port, for client tests that need a gateway to misbehave
in one exact way (refuse, close mid-handshake, refuse a subscribe) and no real servers."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from dms_client.ws import OP_TEXT, _masked

Script = Callable[["Peer"], None]


class Peer:
    """The server's side of one accepted connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def read_request(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client went away")
            self.buffer += chunk
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head

    def upgrade(self) -> None:
        self.read_request()
        self.sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: unchecked\r\n\r\n")

    def send_frame(self, payload: bytes, opcode: int = OP_TEXT, *, final: bool = True) -> None:
        """An unmasked server frame."""
        first = (0x80 if final else 0) | opcode
        length = len(payload)
        header = bytes((first, length)) if length < 126 else bytes((first, 126)) + struct.pack("!H", length)
        self.sock.sendall(header + payload)

    def send_json(self, body: dict[str, Any]) -> None:
        self.send_frame(json.dumps(body, separators=(",", ":")).encode())

    def welcome(self) -> None:
        self.upgrade()
        self.send_json({"type": "welcome", "connection_id": "fake", "user": {"id": None, "role": "admin"},
                        "ping_interval": 30, "max_subscriptions": 50, "server_time": "2026-01-01T00:00:00Z"})

    def read_frame(self) -> tuple[int, bytes]:
        """The next client frame, unmasked."""
        while True:
            data = self.buffer
            if len(data) >= 6:
                length, offset = data[1] & 0x7F, 2
                if length == 126:
                    length, offset = struct.unpack_from("!H", data, 2)[0], 4
                if len(data) >= offset + 4 + length:
                    key = bytes(data[offset:offset + 4])
                    payload = _masked(bytes(data[offset + 4:offset + 4 + length]), key)
                    opcode = data[0] & 0x0F
                    del data[:offset + 4 + length]
                    return opcode, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk

    def read_json(self) -> dict[str, Any]:
        opcode, payload = self.read_frame()
        assert opcode == OP_TEXT, opcode
        return dict(json.loads(payload))


class FakeGateway:
    """Accepts connections on 127.0.0.1 and runs the next script on each (the last one repeats)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.accepted = 0
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            script = self.scripts[min(self.accepted, len(self.scripts) - 1)]
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(script, sock), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, script: Script, sock: socket.socket) -> None:
        try:
            script(Peer(sock))
        except (ConnectionError, OSError):
            pass  # the client closed first: what most scripts end with
        except Exception as exc:  # an assertion in a script: the test reports it
            self.errors.append(exc)
        finally:
            sock.close()

    def close(self) -> None:
        self.listener.close()
