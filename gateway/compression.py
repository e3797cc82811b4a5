"""permessage-deflate (RFC 7692) with no per-connection state: negotiation, compress, inflate.

The gateway always agrees `server_no_context_takeover` and `client_no_context_takeover`. Every
message then stands alone: an event is compressed once when it is first needed and the same bytes
go to every subscriber that negotiated it, and a client's message is inflated with a fresh
decompressor. No connection keeps a compressor's or an inflater's window (about 256 KiB and
44 KiB each in zlib), which is what makes per-connection compression expensive at 20,000
connections. A server may add `client_no_context_takeover` even when the client did not offer it
(RFC 7692 section 7.1.1.2).

No I/O: the handshake calls `negotiate`, framing calls `deflate` and `inflate`.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

EXTENSION = "permessage-deflate"
# Below this a frame leaves uncompressed: the deflate header and the CPU are not worth it.
MIN_COMPRESSED_BYTES = 256
# zlib's level 6 (its default) gets what level 9 gets on event-sized JSON; level 1 loses a few percent.
LEVEL = 6
MAX_WINDOW_BITS = 15
# zlib cannot compress with an 8-bit window (it refuses windowBits -8), so an offer that demands
# `server_max_window_bits=8` is declined; any client window is inflated with the 15-bit one.
MIN_SERVER_WINDOW_BITS = 9
_EMPTY_STORED_BLOCK = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.1: the sender removes it, the receiver adds it
_QUOTED_PAIR = re.compile(r"\\(.)")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class InflateError(Exception):
    """A client's compressed message is not valid DEFLATE data."""


class InflatedTooBig(Exception):
    """A client's compressed message inflates past the message size limit."""


@dataclass(frozen=True, slots=True)
class Deflate:
    """The permessage-deflate agreed with one client; it holds parameters, never a zlib object."""

    # The client's `server_max_window_bits`, if it sent one: our compressor's window, echoed in the
    # answer (RFC 7692 section 7.1.2.1 requires the echo, even of 15).
    server_max_window_bits: int | None = None

    @property
    def server_window_bits(self) -> int:
        """The window our compressor uses: 15 unless the client asked for less."""
        return self.server_max_window_bits or MAX_WINDOW_BITS

    @property
    def response(self) -> str:
        """The Sec-WebSocket-Extensions value of the 101 answer."""
        value = f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
        if self.server_max_window_bits is not None:
            value += f"; server_max_window_bits={self.server_max_window_bits}"
        return value


def negotiate(header: str | None, *, enabled: bool = True) -> Deflate | None:
    """The first acceptable permessage-deflate offer of a Sec-WebSocket-Extensions header, or None.

    An offer with an unknown, repeated or malformed parameter is declined and the next one tried
    (RFC 7692 section 5); a header that cannot be parsed at all declines compression, never the
    handshake.
    """
    if not enabled or not header:
        return None
    for offer in _offers(header):
        if offer is None:
            continue
        name, params = offer
        if name.lower() != EXTENSION:
            continue
        agreed = _accept(params)
        if agreed is not None:
            return agreed
    return None


def _accept(params: list[tuple[str, str | None]]) -> Deflate | None:
    """Our answer to one permessage-deflate offer; None declines it."""
    seen: set[str] = set()
    server_bits: int | None = None
    for raw_name, value in params:
        name = raw_name.lower()
        if name in seen:
            return None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            bits = _window_bits(value)
            if bits is None or bits < MIN_SERVER_WINDOW_BITS:
                return None
            server_bits = bits
        elif name == "client_max_window_bits":
            # The client may limit its own window; we inflate any window with a 15-bit one, and do
            # not answer the parameter, which leaves the client free to use the size it offered.
            if value is not None and _window_bits(value) is None:
                return None
        else:
            return None
    return Deflate(server_max_window_bits=server_bits)


def _window_bits(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= MAX_WINDOW_BITS else None


def _offers(header: str) -> list[tuple[str, list[tuple[str, str | None]]] | None]:
    """Split `ext; a=1; b="2", ext2` into offers (RFC 6455 section 9.1); a broken offer is None."""
    return [_offer(part) for part in _split(header, ",") if part.strip()]


def _offer(text: str) -> tuple[str, list[tuple[str, str | None]]] | None:
    name, *raw_params = _split(text, ";")
    name = name.strip()
    if not _is_token(name):
        return None
    params: list[tuple[str, str | None]] = []
    for raw in raw_params:
        key, eq, raw_value = raw.partition("=")
        key = key.strip()
        if not _is_token(key):
            return None
        if not eq:
            params.append((key, None))
            continue
        value = raw_value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])  # RFC 7692 section 7.1.2: unquoted, a token
        if not _is_token(value):
            return None
        params.append((key, value))
    return name, params


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside quoted strings (a quoted value may hold commas or semicolons)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _is_token(text: str) -> bool:
    return bool(text) and all(char in _TOKEN_CHARS for char in text)


def compressible(payload_bytes: int) -> bool:
    return payload_bytes >= MIN_COMPRESSED_BYTES


def deflate(payload: bytes, *, window_bits: int = MAX_WINDOW_BITS) -> bytes:
    """One message's compressed payload: raw DEFLATE, sync-flushed, the final 00 00 ff ff removed.

    A fresh compressor per message is what `server_no_context_takeover` allows, and the only state
    there is; callers share the result between every subscriber of the message.
    """
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_EMPTY_STORED_BLOCK) else data


def inflate(payload: bytes, *, max_bytes: int) -> bytes:
    """A client's compressed message, inflated by a fresh decompressor to at most `max_bytes`.

    The output is bounded while inflating, so a small message that would inflate to gigabytes costs
    `max_bytes` of memory at most before it is refused.
    """
    inflater = zlib.decompressobj(-MAX_WINDOW_BITS)
    try:
        data = inflater.decompress(payload + _EMPTY_STORED_BLOCK, max_bytes + 1)
    except zlib.error as exc:
        raise InflateError(str(exc)) from exc
    if len(data) > max_bytes:
        raise InflatedTooBig(f"message inflates past {max_bytes} bytes")
    return data
