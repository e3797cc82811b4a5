"""A minimal RFC 6455 client connection over a plain socket (cooperative under gevent's monkey patching).

With `compress=True` it offers permessage-deflate (RFC 7692) and inflates the server's compressed
messages; it never compresses its own (small) frames, which the extension allows.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import ssl
import struct
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover"
_EMPTY_STORED_BLOCK = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.2: the receiver appends what the sender removed


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status, self.headers, self.body = status, headers, body

    @property
    def retry_after_s(self) -> float | None:
        try:
            return max(0.0, float(self.headers.get("retry-after", "")))
        except ValueError:
            return None


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed ({code}) {reason}".strip())
        self.code, self.reason = code, reason


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    """An IP literal connects without a name lookup (gevent resolves names on a thread pool)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return socket.create_connection((host, port), timeout=timeout_s)
    sock = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Inflater:
    """The server's side of an agreed permessage-deflate, as the client inflates it."""

    def __init__(self, response: str) -> None:
        params = [part.strip().lower() for part in response.split(";")]
        if params[0] != "permessage-deflate":
            raise ConnectionClosed(None, f"the server agreed an extension we did not offer: {response}")
        # With server_no_context_takeover each message stands alone; without, the window carries over.
        self.fresh_per_message = "server_no_context_takeover" in params[1:]
        self._inflater = zlib.decompressobj(-15)

    def inflate(self, payload: bytes) -> bytes:
        if self.fresh_per_message:
            self._inflater = zlib.decompressobj(-15)
        try:
            data = self._inflater.decompress(payload + _EMPTY_STORED_BLOCK, MAX_FRAME_BYTES + 1)
        except zlib.error as exc:
            raise ConnectionClosed(1007, f"bad compressed message: {exc}") from exc
        if len(data) > MAX_FRAME_BYTES:
            raise ConnectionClosed(1009, "message inflates too large")
        return data


@dataclass
class Connection:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    message: bytearray = field(default_factory=bytearray)
    inflater: Inflater | None = None  # set when the server agreed permessage-deflate
    message_compressed: bool = False
    wire_bytes: int = 0  # bytes read from the socket after the handshake's head

    @classmethod
    def open(cls, url: str, *, timeout_s: float, origin: str | None = None,
             wake_s: float | None = None, compress: bool = False) -> Connection:
        """Connect and upgrade; `compress` offers permessage-deflate (off by default: load tools that
        count the bytes of plain frames rely on it, and DmsClient turns it on as browsers do)."""
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        raw = _connect(host, port, timeout_s)
        sock: socket.socket = ssl.create_default_context().wrap_socket(raw, server_hostname=host) if secure else raw
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if origin:
            lines.append(f"Origin: {origin}")
        if compress:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        conn = cls(sock)
        status, headers = conn._read_head()
        if status != 101:
            length = int(headers.get("content-length", "0") or 0)
            body = conn._read_exact(min(length, 65536)) if length else b""
            sock.close()
            raise HandshakeRefused(status, headers, body)
        agreed = headers.get("sec-websocket-extensions")
        if agreed:
            if not compress:
                sock.close()
                raise ConnectionClosed(None, f"the server agreed an extension we did not offer: {agreed}")
            conn.inflater = Inflater(agreed)
        conn.wire_bytes = len(conn.buffer)
        # With `wake_s`, reads wake up that often (TimeoutError) so the owner can do timed work between
        # frames; without, a read blocks until a frame or close() (the lean case: no timer per socket).
        sock.settimeout(wake_s)
        return conn

    def _read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
            if len(self.buffer) > 65536:
                raise ConnectionClosed(None, "response head too large")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed(None, "connection lost")
        self.wire_bytes += len(chunk)
        self.buffer += chunk

    def _read_exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        """One masked frame (clients must mask)."""
        header = bytearray([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header.append(0x80 | length)
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + mask + masked)

    def recv(self) -> str:
        """The next text message; answers pings, raises ConnectionClosed on a close frame or EOF.

        A frame is consumed only once it is complete, so a socket timeout (TimeoutError) leaves the
        connection usable: the caller may do periodic work and call again."""
        while True:
            frame = self._take_frame()
            if frame is None:
                self._fill()
                continue
            opcode, final, compressed, payload = frame
            if opcode == OP_PING:
                self.send(payload, OP_PONG)
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                try:
                    self.send(payload[:2], OP_CLOSE)
                except OSError:
                    pass
                raise ConnectionClosed(code, payload[2:].decode(errors="replace"))
            elif opcode in (OP_TEXT, OP_BINARY, 0x0):
                if opcode != 0x0:
                    self.message_compressed = compressed
                self.message += payload
                if final:
                    body = bytes(self.message)
                    self.message = bytearray()
                    if self.message_compressed:
                        if self.inflater is None:
                            raise ConnectionClosed(1002, "compressed message without permessage-deflate")
                        body = self.inflater.inflate(body)
                    return body.decode()

    def _take_frame(self) -> tuple[int, bool, bool, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, final, compressed = data[0] & 0x0F, bool(data[0] & 0x80), bool(data[0] & 0x40)
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        if length > MAX_FRAME_BYTES:
            raise ConnectionClosed(1009, "frame too large")
        if len(data) < offset + length:
            return None
        payload = bytes(data[offset:offset + length])
        del data[:offset + length]
        return opcode, final, compressed, payload

    def close(self, code: int = 1000) -> None:
        try:
            self.send(struct.pack("!H", code), OP_CLOSE)
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
