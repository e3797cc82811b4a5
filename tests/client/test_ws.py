"""dms_client.ws without a server: masking, fragments, pings, close frames, a read that times out
halfway through a frame and goes on, and permessage-deflate."""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Iterator

import pytest

from dms_client.ws import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Connection,
    ConnectionClosed,
    Inflater,
    _masked,
    encode_frame,
)
from tests.client.fake_gateway import Peer


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Peer]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    theirs.settimeout(5)
    yield Connection(ours), Peer(theirs)
    ours.close()
    theirs.close()


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 70001])
def test_a_client_frame_is_masked_and_unmasks_to_the_payload(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    frame = encode_frame(payload)
    assert frame[0] == 0x80 | OP_TEXT and frame[1] & 0x80  # final, text, masked
    offset = 2 if length < 126 else 4 if length < 65536 else 10
    key, body = frame[offset:offset + 4], frame[offset + 4:]
    assert _masked(body, key) == payload
    assert length < 8 or body != payload


def test_fragments_make_one_message_and_a_ping_between_them_is_answered(pair: tuple[Connection, Peer]) -> None:
    conn, server = pair
    server.send_frame(b'{"type":', OP_TEXT, final=False)
    server.send_frame(b"hello", OP_PING)
    server.send_frame(b'"event"}', 0x0)
    assert conn.recv_bytes() == b'{"type":"event"}'
    assert server.read_frame() == (OP_PONG, b"hello")


def test_a_read_that_times_out_mid_frame_loses_nothing(pair: tuple[Connection, Peer]) -> None:
    conn, server = pair
    frame = b"\x81" + bytes([20]) + b"0123456789abcdefghij"
    server.sock.sendall(frame[:7])
    conn.settimeout(0.05)
    with pytest.raises(TimeoutError):
        conn.recv_bytes()
    server.sock.sendall(frame[7:])
    conn.settimeout(5)
    assert conn.recv() == "0123456789abcdefghij"


def test_a_close_frame_is_answered_and_raised_with_its_code(pair: tuple[Connection, Peer]) -> None:
    conn, server = pair
    server.send_frame(struct.pack("!H", 1001) + b"going away", OP_CLOSE)
    with pytest.raises(ConnectionClosed) as closed:
        conn.recv_bytes()
    assert (closed.value.code, closed.value.reason) == (1001, "going away")
    assert server.read_frame() == (OP_CLOSE, struct.pack("!H", 1001))


def test_the_end_of_the_stream_is_a_close_without_code(pair: tuple[Connection, Peer]) -> None:
    conn, server = pair
    server.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosed) as closed:
        conn.recv_bytes()
    assert closed.value.code is None


def test_a_compressed_message_is_inflated_whole_or_in_fragments(pair: tuple[Connection, Peer]) -> None:
    conn, server = pair
    conn.inflater = Inflater("permessage-deflate; server_no_context_takeover")
    body = b'{"type":"event","data":"' + b"x" * 600 + b'"}'
    squeezer = zlib.compressobj(wbits=-15)
    deflated = (squeezer.compress(body) + squeezer.flush(zlib.Z_SYNC_FLUSH))[:-4]  # RFC 7692: tail removed
    server.send_frame(deflated, OP_TEXT | 0x40)  # RSV1: compressed
    assert conn.recv_bytes() == body
    server.send_frame(deflated[:10], OP_TEXT | 0x40, final=False)
    server.send_frame(deflated[10:], 0x0)
    assert conn.recv_bytes() == body


def test_a_compressed_message_without_the_extension_is_refused(pair: tuple[Connection, Peer]) -> None:
    conn, server = pair
    server.send_frame(b"\x00", OP_TEXT | 0x40)
    with pytest.raises(ConnectionClosed) as closed:
        conn.recv_bytes()
    assert closed.value.code == 1002
