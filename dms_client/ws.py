"""The WebSocket layer of dms_client: a minimal RFC 6455 client connection over a plain socket.

DmsClient is built on it, and so is anything that needs a WebSocket without our protocol on top
(the benchmarks' Engine.IO clients, idle connections). Cooperative under gevent's monkey patching.

    conn = Connection.open("ws://127.0.0.1:8001/ws?token=...", timeout_s=10)
    welcome = conn.recv_bytes()          # the next data message, as the server's bytes
    conn.send(b'{"type":"ping","ref":"p1"}')
    conn.close()

Opening is two steps a caller may take apart, to tell where it failed: `dial` (the TCP connection)
and `Connection.upgrade` (the HTTP upgrade). Failures are OSError (TimeoutError included) for the
socket, HandshakeRefused for an answer other than 101, ConnectionClosed for a close frame or EOF.

With `compress=True` it offers permessage-deflate (RFC 7692) and inflates the server's compressed
messages; it never compresses its own (small) frames, which the extension allows. Without, no
extension is offered and server frames arrive as they are (load tools that count the bytes of
plain frames rely on that).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import ssl
import struct
import threading
import zlib
from urllib.parse import urlsplit

__all__ = ["Connection", "ConnectionClosed", "HandshakeRefused", "Inflater", "dial"]

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover"
_EMPTY_STORED_BLOCK = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.2: the receiver appends what the sender removed
MAX_HEAD_BYTES = 65536
READ_CHUNK = 65536


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
    """A close frame (`code` and `reason` as sent) or the end of the stream (`code` None)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed ({code}) {reason}".strip())
        self.code, self.reason = code, reason


def dial(url: str, *, timeout_s: float) -> socket.socket:
    """The TCP (and TLS for wss://) connection to the URL's host; an IP literal needs no name lookup
    (gevent resolves names on a thread pool)."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    else:
        raw = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(timeout_s)
        try:
            raw.connect((host, port))
        except OSError:
            raw.close()
            raise
    if not secure:
        return raw
    try:
        return ssl.create_default_context().wrap_socket(raw, server_hostname=host)
    except OSError:
        raw.close()
        raise


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


def _masked(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key repeated, as one big-integer operation instead of a loop per byte."""
    length = len(payload)
    if not length:
        return b""
    repeated = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame (RFC 6455 requires clients to mask)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", length)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", length)
    key = os.urandom(4)
    return header + key + _masked(payload, key)


class Connection:
    """One open WebSocket: frames read from a growing buffer, sends serialized by a lock.

    Slots and no thread of its own, so a process can hold tens of thousands."""

    __slots__ = ("_send_lock", "_timeout", "buffer", "inflater", "message", "message_compressed", "sock",
                 "wire_bytes")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.message = bytearray()  # the fragments of a message not yet complete
        self.message_compressed = False
        self.inflater: Inflater | None = None  # set when the server agreed permessage-deflate
        self.wire_bytes = 0  # bytes read from the socket after the handshake's head
        # The reader answers pings while another thread (or greenlet) may be sending: one frame at a time.
        self._send_lock = threading.Lock()
        self._timeout: float | None = sock.gettimeout()

    @classmethod
    def open(cls, url: str, *, timeout_s: float, origin: str | None = None,
             wake_s: float | None = None, compress: bool = False) -> Connection:
        """`dial` then `upgrade`; reads then wait as `settimeout(wake_s)` says. `compress` offers
        permessage-deflate (off by default: load tools that count the bytes of plain frames rely on it,
        and DmsClient turns it on as browsers do)."""
        conn = cls.upgrade(dial(url, timeout_s=timeout_s), url, origin=origin, compress=compress)
        conn.settimeout(wake_s)
        return conn

    @classmethod
    def upgrade(cls, sock: socket.socket, url: str, *, origin: str | None = None,
                compress: bool = False) -> Connection:
        """The HTTP upgrade on a dialled socket (its timeout bounds the wait for the answer).

        Raises HandshakeRefused on any status but 101, ConnectionClosed on EOF before the answer or
        on an extension it did not offer; the socket is closed whenever it raises."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13"]
        if origin:
            lines.append(f"Origin: {origin}")
        if compress:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        conn = cls(sock)
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            status, headers = conn._read_head()
            if status != 101:
                length = int(headers.get("content-length", "0") or 0)
                body = conn._read_exact(min(length, 65536)) if length else b""
                raise HandshakeRefused(status, headers, body)
            agreed = headers.get("sec-websocket-extensions")
            if agreed:
                if not compress:
                    raise ConnectionClosed(None, f"the server agreed an extension we did not offer: {agreed}")
                conn.inflater = Inflater(agreed)
        except BaseException:
            sock.close()
            raise
        conn.wire_bytes = len(conn.buffer)
        return conn

    def settimeout(self, seconds: float | None) -> None:
        """How long a read waits before TimeoutError (None: until a frame or close). With a timeout the
        owner can do timed work between frames; without, a socket costs no timer."""
        if seconds != self._timeout:  # a blocking socket's settimeout is a system call: not once per frame
            self.sock.settimeout(seconds)
            self._timeout = seconds

    # -- reading ------------------------------------------------------------------------------------
    def _read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
            if len(self.buffer) > MAX_HEAD_BYTES:
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
        chunk = self.sock.recv(READ_CHUNK)
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

    def recv_bytes(self) -> bytes:
        """The payload of the next data message, inflated if it came compressed, and not decoded (callers
        that only look at a prefix, or parse JSON from bytes, skip that work). Answers pings; raises
        ConnectionClosed on a close frame or EOF.

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
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
                if opcode != OP_CONTINUATION:
                    self.message_compressed = compressed
                if final and not self.message:
                    message = payload  # the usual case: one frame, one message, no copy
                else:
                    self.message += payload
                    if not final:
                        continue
                    message = bytes(self.message)
                    self.message = bytearray()
                if self.message_compressed:
                    if self.inflater is None:
                        raise ConnectionClosed(1002, "compressed message without permessage-deflate")
                    message = self.inflater.inflate(message)
                return message

    def recv(self) -> str:
        """The next text message, decoded."""
        return self.recv_bytes().decode()

    def _take_frame(self) -> tuple[int, bool, bool, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, final, compressed = data[0] & 0x0F, bool(data[0] & 0x80), bool(data[0] & 0x40)
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, offset = struct.unpack_from("!H", data, 2)[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, offset = struct.unpack_from("!Q", data, 2)[0], 10
        if length > MAX_FRAME_BYTES:
            raise ConnectionClosed(1009, "frame too large")
        if len(data) < offset + length:
            return None
        payload = bytes(data[offset:offset + length])
        del data[:offset + length]
        return opcode, final, compressed, payload

    # -- writing and closing ------------------------------------------------------------------------
    def send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        """One masked frame."""
        frame = encode_frame(payload, opcode)
        with self._send_lock:
            self.sock.sendall(frame)

    def close(self, code: int = 1000) -> None:
        """A close frame if the socket still takes one, then the socket closed (no wait for the answer)."""
        # Not behind a send stuck on a peer that stopped reading: then the close frame is skipped.
        if self._send_lock.acquire(blocking=False):
            try:
                self.sock.sendall(encode_frame(struct.pack("!H", code), OP_CLOSE))
            except OSError:
                pass
            finally:
                self._send_lock.release()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
