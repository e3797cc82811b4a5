"""RFC 6455 framing without a server: server frames out, every client-frame rule in."""

from __future__ import annotations

import os
import struct

import pytest

from gateway import framing
from gateway.framing import CloseCode, CloseReceived, Message, Parser, Ping, Pong, ProtocolError

MASK = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = MASK, rsv: int = 0,
                 length_override: int | None = None) -> bytes:
    """A frame as a client sends it (masked unless `mask` is None)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload) if length_override is None else length_override
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is None:
        return header + payload
    return header + mask + framing.unmask(payload, mask)


def parse(*frames: bytes, limit: int = 65536) -> list[framing.Frame]:
    return Parser(max_message_bytes=limit).feed(b"".join(frames))


def refused(*frames: bytes, limit: int = 65536) -> CloseCode:
    with pytest.raises(ProtocolError) as info:
        parse(*frames, limit=limit)
    return info.value.code


def test_server_frames_use_the_shortest_length_and_no_mask() -> None:
    assert framing.text("hi") == b"\x81\x02hi"
    medium = framing.encode(framing.OP_TEXT, b"x" * 300)
    assert medium[:4] == b"\x81\x7e\x01\x2c" and len(medium) == 304
    large = framing.encode(framing.OP_BINARY, b"x" * 70_000)
    assert large[:2] == b"\x82\x7f" and struct.unpack("!Q", large[2:10])[0] == 70_000
    assert framing.close(4008, "slow consumer") == b"\x88\x0f\x0f\xa8slow consumer"
    assert len(framing.close(1000, "é" * 200)) <= 127  # reason cut to fit a control frame, still UTF-8
    framing.close(1000, "é" * 200)[4:].decode("utf-8")


def test_accept_key_matches_the_rfc_example() -> None:
    assert framing.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert framing.valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not framing.valid_key("short") and not framing.valid_key("not base64 at all!!")


def test_masked_text_and_binary_messages() -> None:
    body = '{"type":"ping","ref":"é"}'.encode()
    assert parse(client_frame(framing.OP_TEXT, body)) == [Message(body.decode())]
    assert parse(client_frame(framing.OP_BINARY, b"\x00\xff")) == [Message(b"\x00\xff")]
    random_payload = os.urandom(1000)
    assert parse(client_frame(framing.OP_BINARY, random_payload)) == [Message(random_payload)]


def test_bytes_arriving_one_at_a_time_give_the_same_messages() -> None:
    stream = client_frame(framing.OP_TEXT, b"a" * 200) + client_frame(framing.OP_PING, b"p") + \
        client_frame(framing.OP_TEXT, b"b" * 70_000)
    parser = Parser(max_message_bytes=100_000)
    out: list[framing.Frame] = []
    for byte in stream:
        out += parser.feed(bytes([byte]))
    assert out == [Message("a" * 200), Ping(b"p"), Message("b" * 70_000)]


def test_fragments_join_and_control_frames_may_come_between_them() -> None:
    frames = parse(
        client_frame(framing.OP_TEXT, b'{"type":', fin=False),
        client_frame(framing.OP_PING, b"1"),
        client_frame(framing.OP_CONTINUATION, b'"ping"', fin=False),
        client_frame(framing.OP_PONG, b"2"),
        client_frame(framing.OP_CONTINUATION, b"}"),
    )
    assert frames == [Ping(b"1"), Pong(b"2"), Message('{"type":"ping"}')]


def test_a_utf8_character_split_across_fragments_is_valid() -> None:
    encoded = "é".encode()
    assert parse(client_frame(framing.OP_TEXT, encoded[:1], fin=False),
                 client_frame(framing.OP_CONTINUATION, encoded[1:])) == [Message("é")]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ((client_frame(framing.OP_TEXT, b"x", mask=None),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_TEXT, b"x", rsv=0x40),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(0x3, b"x"),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_CONTINUATION, b"x"),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_TEXT, b"a", fin=False), client_frame(framing.OP_TEXT, b"b")),
         CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_PING, b"x" * 126),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_PING, b"x", fin=False),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_CLOSE, b"\x03"),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_CLOSE, struct.pack("!H", 1005)),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_CLOSE, struct.pack("!H", 999)),), CloseCode.PROTOCOL_ERROR),
        ((client_frame(framing.OP_TEXT, b"\xff\xfe{bad"),), CloseCode.INVALID_DATA),
        ((client_frame(framing.OP_TEXT, b"\xc3", fin=False), client_frame(framing.OP_CONTINUATION, b"(")),
         CloseCode.INVALID_DATA),
        ((client_frame(framing.OP_CLOSE, struct.pack("!H", 1000) + b"\xff"),), CloseCode.INVALID_DATA),
    ],
    ids=["unmasked", "reserved-bit", "unknown-opcode", "orphan-continuation", "message-inside-fragments",
         "long-ping", "fragmented-ping", "one-byte-close", "reserved-close-code", "invalid-close-code",
         "invalid-utf8", "invalid-utf8-across-fragments", "invalid-utf8-close-reason"],
)
def test_broken_rules_are_refused_with_the_right_code(frames: tuple[bytes, ...], code: CloseCode) -> None:
    assert refused(*frames) == code


def test_an_oversized_message_is_refused_from_its_header_alone() -> None:
    # Only the header of a 2 GB frame arrives: refused at once, nothing buffered.
    header = client_frame(framing.OP_TEXT, b"", length_override=2**31)[:10]
    assert refused(header, limit=65536) == CloseCode.TOO_BIG
    # Fragments add up: three of 30 kB pass one by one but not together under a 64 KiB limit.
    assert refused(client_frame(framing.OP_TEXT, b"x" * 30_000, fin=False),
                   client_frame(framing.OP_CONTINUATION, b"x" * 30_000, fin=False),
                   client_frame(framing.OP_CONTINUATION, b"x" * 30_000)) == CloseCode.TOO_BIG
    assert parse(client_frame(framing.OP_TEXT, b"x" * 65536)) == [Message("x" * 65536)]


def test_close_frames_and_nothing_after_them() -> None:
    frames = parse(client_frame(framing.OP_CLOSE, struct.pack("!H", 1000) + b"bye"),
                   client_frame(framing.OP_TEXT, b"ignored"))
    assert frames == [CloseReceived(1000, "bye")]
    assert parse(client_frame(framing.OP_CLOSE, b"")) == [CloseReceived(CloseCode.NO_STATUS, "")]
    assert parse(client_frame(framing.OP_CLOSE, struct.pack("!H", 4321))) == [CloseReceived(4321, "")]
