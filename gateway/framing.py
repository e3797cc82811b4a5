"""RFC 6455 framing with no I/O: server frames out (unmasked, built once), a client-frame parser in.

The server never masks, so one event's frame bytes serve every subscriber. The parser takes
whatever bytes arrived (`feed`) and returns whole messages and control frames; it enforces what a
server must: client frames are masked, reserved bits and unknown opcodes are refused (1002),
control frames are short and unfragmented and may come between fragments, a message over the
size limit is refused from its header alone (1009), and text must be valid UTF-8 (1007), checked
fragment by fragment. With permessage-deflate agreed (gateway.compression) RSV1 marks a
compressed message, inflated whole with its size limit applied to the inflated bytes.
tests/gateway/test_framing_reference.py holds it against wsproto, compressed frames included.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from gateway import compression

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_RSV1 = 0x40  # permessage-deflate: the message is compressed (RFC 7692 section 6)
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class CloseCode(IntEnum):
    """Close codes the gateway sends or understands (RFC 6455 section 7.4 and the contract)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008


class ProtocolError(Exception):
    """The client broke the framing rules; answer with a close frame carrying `code`."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # Whole frames that arrived before the broken one, in the same `feed`: still the peer's.
        self.frames: list[Frame] = []


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message (text decoded, binary as bytes)."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int
    reason: str


Frame = Message | Ping | Pong | CloseReceived


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID, usedforsecurity=False).digest()).decode("ascii")


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def encode(opcode: int, payload: bytes, *, compressed: bool = False) -> bytes:
    """One unfragmented, unmasked server frame; `compressed` sets RSV1 (a permessage-deflate payload)."""
    first = 0x80 | opcode | (_RSV1 if compressed else 0)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def text(body: str) -> bytes:
    return encode(OP_TEXT, body.encode("utf-8"))


def text_for(body: str, deflate: compression.Deflate | None) -> bytes:
    """A text frame for one client: compressed when it agreed permessage-deflate and the body is big enough."""
    payload = body.encode("utf-8")
    if deflate is None or not compression.compressible(len(payload)):
        return encode(OP_TEXT, payload)
    return deflated(payload, deflate)


def deflated(payload: bytes, deflate: compression.Deflate) -> bytes:
    """A compressed text frame (RSV1 set) of an encoded body."""
    return encode(OP_TEXT, compression.deflate(payload, window_bits=deflate.server_window_bits), compressed=True)


def payload_length(frame: bytes) -> int:
    """The payload size a server frame's header announces."""
    n = frame[1] & 0x7F
    if n == 126:
        return int(struct.unpack_from("!H", frame, 2)[0])
    if n == 127:
        return int(struct.unpack_from("!Q", frame, 2)[0])
    return n


def close(code: int, reason: str = "") -> bytes:
    # A control frame's payload is at most 125 bytes: 2 for the code, the rest a truncated reason.
    raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode(OP_CLOSE, struct.pack("!H", code) + raw)


def ping(payload: bytes = b"") -> bytes:
    return encode(OP_PING, payload[:125])


def pong(payload: bytes = b"") -> bytes:
    return encode(OP_PONG, payload[:125])


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, done as one big-integer operation rather than byte by byte."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _valid_close_code(code: int) -> bool:
    # 1004-1006 and 1015 are reserved; 1016-2999 unassigned; 3000-4999 for applications.
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999)


class Parser:
    """Incremental parser of client frames; one per connection."""

    def __init__(self, *, max_message_bytes: int, inflate: bool = False) -> None:
        self.max_message_bytes = max_message_bytes
        self.inflate = inflate  # permessage-deflate was agreed: RSV1 on a message's first frame is allowed
        self._buffer = bytearray()
        # Bytes of a binary or compressed message, decoded text of a plain text one.
        self._fragments: list[Any] = []
        self._fragment_bytes = 0
        self._fragment_opcode: int | None = None
        self._fragment_compressed = False
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Parse what arrived; raise ProtocolError on the first broken rule (its `frames` are those before)."""
        self._buffer += data
        out: list[Frame] = []
        try:
            while True:
                frame = self._next_frame()
                if frame is None:
                    return out
                result = self._handle(*frame)
                if result is not None:
                    out.append(result)
                    if isinstance(result, CloseReceived):
                        self._buffer.clear()  # nothing after a close frame counts
                        return out
        except ProtocolError as exc:
            exc.frames = out
            raise

    def _next_frame(self) -> tuple[bool, int, bool, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, opcode, compressed = bool(first & 0x80), first & 0x0F, bool(first & _RSV1)
        if first & 0x30 or (compressed and not self.inflate):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
        if compressed and opcode not in _DATA_OPS:
            # RFC 7692 section 6.1: only a message's first frame says it is compressed; never a control frame.
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "RSV1 set on a control or continuation frame")
        if opcode not in _DATA_OPS and opcode not in _CONTROL_OPS and opcode != OP_CONTINUATION:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        length, offset = second & 0x7F, 2
        if opcode in _CONTROL_OPS and (length > 125 or not fin):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frames are short and unfragmented")
        if length == 126:
            if len(buf) < 4:
                return None
            length, offset = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, offset = struct.unpack_from("!Q", buf, 2)[0], 10
            if length >> 63:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "frame length has its top bit set")
        # Out-of-order data frames are refused before their size: a protocol error whatever the length.
        if opcode == OP_CONTINUATION and self._fragment_opcode is None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation without a message to continue")
        if opcode in _DATA_OPS and self._fragment_opcode is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "a new message started inside a fragmented one")
        if opcode not in _CONTROL_OPS:
            # Decided from the header, before buffering: a 2 GB claim costs us nothing.
            total = length + (self._fragment_bytes if opcode == OP_CONTINUATION else 0)
            if total > self.max_message_bytes:
                raise ProtocolError(CloseCode.TOO_BIG, f"message over {self.max_message_bytes} bytes")
        end = offset + 4 + length
        if len(buf) < end:
            return None
        mask = bytes(buf[offset:offset + 4])
        payload = unmask(bytes(buf[offset + 4:end]), mask)
        del buf[:end]
        return fin, opcode, compressed, payload

    def _handle(self, fin: bool, opcode: int, compressed: bool, payload: bytes) -> Frame | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _close_received(payload)
        if opcode == OP_CONTINUATION:
            self._add_fragment(payload, final=fin)
            if not fin:
                return None
            parts, message_opcode = self._fragments, self._fragment_opcode
            self._fragments, self._fragment_bytes, self._fragment_opcode = [], 0, None
            if self._fragment_compressed:
                self._fragment_compressed = False
                return self._message(message_opcode or OP_TEXT, self._inflate(b"".join(parts)))
            return Message(b"".join(parts) if message_opcode == OP_BINARY else "".join(parts))
        if not fin:
            self._fragment_opcode, self._fragments, self._fragment_bytes = opcode, [], 0
            self._fragment_compressed = compressed
            # A compressed message is checked as UTF-8 once inflated, at its end.
            self._decoder = codecs.getincrementaldecoder("utf-8")() if opcode == OP_TEXT and not compressed else None
            self._add_fragment(payload, final=False)
            return None
        return self._message(opcode, self._inflate(payload) if compressed else payload)

    def _message(self, opcode: int, payload: bytes) -> Message:
        if opcode == OP_BINARY:
            return Message(payload)
        try:
            return Message(payload.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError(CloseCode.INVALID_DATA, "text frame is not valid UTF-8") from exc

    def _inflate(self, payload: bytes) -> bytes:
        """A compressed message's bytes; the size limit holds for what it inflates to (a zip bomb is a 1009)."""
        try:
            return compression.inflate(payload, max_bytes=self.max_message_bytes)
        except compression.InflatedTooBig as exc:
            raise ProtocolError(CloseCode.TOO_BIG, f"message over {self.max_message_bytes} bytes") from exc
        except compression.InflateError as exc:
            raise ProtocolError(CloseCode.INVALID_DATA, "compressed message is not valid DEFLATE data") from exc

    def _add_fragment(self, payload: bytes, *, final: bool) -> None:
        """Keep one fragment; text is decoded as it comes, so invalid UTF-8 fails at once (RFC 6455
        section 8.1), not only when the message ends: a peer cannot park a broken message."""
        self._fragment_bytes += len(payload)
        if self._decoder is None:
            self._fragments.append(payload)
            return
        try:
            self._fragments.append(self._decoder.decode(payload, final=final))
        except UnicodeDecodeError as exc:
            raise ProtocolError(CloseCode.INVALID_DATA, "text frame is not valid UTF-8") from exc


def _close_received(payload: bytes) -> CloseReceived:
    if not payload:
        return CloseReceived(CloseCode.NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = struct.unpack_from("!H", payload)[0]
    if not _valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from exc
    return CloseReceived(code, reason)
