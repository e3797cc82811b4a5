"""permessage-deflate without a server: the offer's negotiation, RFC 7692's examples, compress once, bounded inflate."""

from __future__ import annotations

import json
import zlib

import pytest

from gateway import compression, framing
from gateway.compression import Deflate
from gateway.connection import Outgoing, batch_frame, batch_text
from gateway.framing import CloseCode, Message, Parser, ProtocolError
from tests.gateway.test_framing import client_frame

RSV1 = 0x40
ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def inflate(payload: bytes) -> bytes:
    """What a browser does with a server frame under server_no_context_takeover: a fresh inflater."""
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


def server_frame(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of one unmasked server frame."""
    return frame[0], frame[len(frame) - framing.payload_length(frame):]


# -- negotiation (RFC 7692 section 5 and 7.1) ------------------------------------------------------
@pytest.mark.parametrize(("offer", "answer"), [
    ("permessage-deflate", ANSWER),
    ("permessage-deflate; client_max_window_bits", ANSWER),
    ("permessage-deflate; client_max_window_bits=10; client_no_context_takeover", ANSWER),
    ("permessage-deflate; server_no_context_takeover", ANSWER),
    ("PerMessage-Deflate; Server_No_Context_Takeover", ANSWER),
    ("permessage-deflate; server_max_window_bits=12", ANSWER + "; server_max_window_bits=12"),
    ("permessage-deflate; server_max_window_bits=15", ANSWER + "; server_max_window_bits=15"),
    ('permessage-deflate; server_max_window_bits="10"', ANSWER + "; server_max_window_bits=10"),
    ("x-webkit-deflate-frame, permessage-deflate", ANSWER),
    # The first offer is declined (zlib has no 8-bit window; a repeated parameter; an unknown one):
    # the next acceptable one is taken.
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate", ANSWER),
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover, permessage-deflate; "
     "server_max_window_bits=11", ANSWER + "; server_max_window_bits=11"),
    ('permessage-deflate; foo="a,b", permessage-deflate', ANSWER),
    # Nothing acceptable: plain frames, and the handshake still succeeds.
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_max_window_bits=0x0f", None),
    ("permessage-deflate; client_max_window_bits=7", None),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ("permessage-deflate; mystery", None),
    ('permessage-deflate; server_max_window_bits="1 0"', None),
    ("permessage-deflate;", None),
    ("x-webkit-deflate-frame", None),
    ('"permessage-deflate"', None),
    ("", None),
    (None, None),
])
def test_negotiation_takes_the_first_acceptable_offer(offer: str | None, answer: str | None) -> None:
    agreed = compression.negotiate(offer)
    assert (agreed.response if agreed is not None else None) == answer


def test_negotiation_is_off_when_disabled() -> None:
    assert compression.negotiate("permessage-deflate", enabled=False) is None


def test_the_101_answer_names_the_extension_only_when_agreed() -> None:
    from gateway.transport import upgrade_response

    plain = upgrade_response("dGhlIHNhbXBsZSBub25jZQ==")
    assert b"Sec-WebSocket-Extensions" not in plain
    agreed = upgrade_response("dGhlIHNhbXBsZSBub25jZQ==", deflate=Deflate())
    assert agreed == plain[:-2] + b"Sec-WebSocket-Extensions: " + ANSWER.encode() + b"\r\n\r\n"


# -- server frames -------------------------------------------------------------------------------------
def test_hello_compresses_to_rfc_7692_bytes() -> None:
    """Section 7.2.3.1: "Hello" in one compressed frame is c1 07 f2 48 cd c9 c9 07 00."""
    assert framing.deflated(b"Hello", Deflate()) == bytes.fromhex("c107f248cdc9c90700")
    # No context carries over: the same message compresses to the same bytes every time (7.2.3.2
    # shows the shorter second message a shared window would give; we never send that).
    assert framing.deflated(b"Hello", Deflate()) == bytes.fromhex("c107f248cdc9c90700")


def test_frames_under_256_bytes_stay_plain() -> None:
    for size in (0, 5, 125, 255):
        body = "x" * size
        assert framing.text_for(body, Deflate()) == framing.text(body)
    first, payload = server_frame(framing.text_for("x" * 256, Deflate()))
    assert first == 0x80 | RSV1 | framing.OP_TEXT and inflate(payload) == b"x" * 256


def test_a_client_without_deflate_gets_the_plain_frame() -> None:
    body = json.dumps({"type": "event", "data": {"pad": "y" * 400}})
    assert framing.text_for(body, None) == framing.text(body)
    out = Outgoing.of(1, body)
    assert out.frame_for(None) is out.frame


@pytest.fixture
def deflate_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every payload `framing.deflated` compresses from now on, in order."""
    calls: list[bytes] = []
    real = framing.deflated

    def counting(payload: bytes, deflate: Deflate) -> bytes:
        calls.append(payload)
        return real(payload, deflate)

    monkeypatch.setattr(framing, "deflated", counting)
    return calls


def test_an_event_is_compressed_once_per_publication(deflate_calls: list[bytes]) -> None:
    calls = deflate_calls
    body = json.dumps({"type": "event", "channel": "orders", "id": 7, "data": {"note": "z" * 300}})
    out = Outgoing.of(7, body)
    frames = {id(out.frame_for(Deflate())) for _ in range(100)}
    assert len(calls) == 1 and len(frames) == 1
    first, payload = server_frame(out.frame_for(Deflate()))
    assert first & RSV1 and inflate(payload) == body.encode()
    # A client that limited our window gets bytes made with that window, again once.
    small = out.frame_for(Deflate(server_max_window_bits=9))
    assert out.frame_for(Deflate(server_max_window_bits=9)) is small and len(calls) == 2
    assert inflate(server_frame(small)[1]) == body.encode()
    tiny = Outgoing.of(8, '{"type":"event"}')
    assert tiny.frame_for(Deflate()) is tiny.frame and len(calls) == 2


def test_subscribers_with_the_same_batch_share_its_compressed_frame(deflate_calls: list[bytes]) -> None:
    outs = [Outgoing.of(n, json.dumps({"type": "event", "id": n, "data": {"n": n, "pad": "p" * 40}}))
            for n in range(10)]
    calls = deflate_calls
    first = batch_frame(list(outs), Deflate())
    assert batch_frame(list(outs), Deflate()) is first and len(calls) == 1
    assert inflate(server_frame(first)[1]).decode() == batch_text([out.text for out in outs])
    shorter = batch_frame(outs[1:], Deflate())  # another subscriber's window: its own bytes
    assert len(calls) == 2 and inflate(server_frame(shorter)[1]).decode() == batch_text([o.text for o in outs[1:]])
    assert batch_frame(list(outs), None) == framing.text(batch_text([out.text for out in outs]))
    small = [Outgoing.of(n, '{"type":"event"}') for n in range(3)]
    assert batch_frame(small, Deflate()) == framing.text(batch_text([out.text for out in small])) and len(calls) == 2


def test_a_batch_of_similar_events_compresses_well() -> None:
    events = [json.dumps({"type": "event", "channel": "restaurant:r", "id": n, "event": "order.status_changed",
                          "data": {"order_id": f"{n:08d}-0000-4000-8000-000000000000", "status": "preparing"}})
              for n in range(10)]
    body = batch_text(events)
    assert len(body) / len(framing.deflated(body.encode(), Deflate())) > 3


# -- client frames (RFC 7692 section 7.2.3, sent masked as a client must) -------------------------------
@pytest.mark.parametrize("frames", [
    [(0xC1, "f248cdc9c90700")],  # 7.2.3.1, one frame
    [(0x41, "f248cd"), (0x80, "c9c90700")],  # 7.2.3.1, fragmented: RSV1 on the first frame only
    [(0xC1, "000500faff48656c6c6f00")],  # 7.2.3.3, a stored (uncompressed) block
    [(0xC1, "f348cdc9c9070000")],  # 7.2.3.4, a block with BFINAL set
    [(0xC1, "f24805000000ffffcac9c90700")],  # 7.2.3.5, two blocks
], ids=["one-frame", "fragmented", "stored-block", "bfinal", "two-blocks"])
def test_rfc_7692_examples_inflate_to_hello(frames: list[tuple[int, str]]) -> None:
    """The RFC's server frames (first byte, payload), sent masked as a client sends them."""
    parser = Parser(max_message_bytes=1000, inflate=True)
    data = b"".join(client_frame(first & 0x0F, bytes.fromhex(payload), fin=bool(first & 0x80), rsv=first & 0x70)
                    for first, payload in frames)
    assert parser.feed(data) == [Message("Hello")]


def test_each_client_message_inflates_alone() -> None:
    """client_no_context_takeover: a fresh inflater per message, so no window is kept per connection."""
    parser = Parser(max_message_bytes=1000, inflate=True)
    hello = client_frame(framing.OP_TEXT, bytes.fromhex("f248cdc9c90700"), rsv=RSV1)
    plain = client_frame(framing.OP_TEXT, b"plain")
    assert parser.feed(hello + plain + hello) == [Message("Hello"), Message("plain"), Message("Hello")]


@pytest.mark.parametrize(("frame", "inflate_on", "code"), [
    (client_frame(framing.OP_TEXT, bytes.fromhex("f248cdc9c90700"), rsv=RSV1), False, CloseCode.PROTOCOL_ERROR),
    (client_frame(framing.OP_PING, b"", rsv=RSV1), True, CloseCode.PROTOCOL_ERROR),
    (client_frame(framing.OP_TEXT, b"a", fin=False) + client_frame(0, b"b", rsv=RSV1), True,
     CloseCode.PROTOCOL_ERROR),
    (client_frame(framing.OP_TEXT, b"a", rsv=0x20), True, CloseCode.PROTOCOL_ERROR),
    (client_frame(framing.OP_TEXT, b"\xff\xff\xff\xff", rsv=RSV1), True, CloseCode.INVALID_DATA),
    (client_frame(framing.OP_TEXT, compression.deflate(b"\xc3\x28"), rsv=RSV1), True, CloseCode.INVALID_DATA),
], ids=["rsv1-not-agreed", "rsv1-on-ping", "rsv1-on-continuation", "rsv2", "not-deflate", "not-utf8"])
def test_broken_compressed_frames_close(frame: bytes, inflate_on: bool, code: CloseCode) -> None:
    with pytest.raises(ProtocolError) as info:
        Parser(max_message_bytes=1000, inflate=inflate_on).feed(frame)
    assert info.value.code == code


def test_an_inflation_bomb_gets_the_close_of_a_frame_too_big() -> None:
    """The limit holds for the inflated size: 10 kB of DEFLATE that would become 10 MB is refused with 1009."""
    bomb = compression.deflate(b"{" + b" " * 10_000_000 + b"}")
    assert len(bomb) < 11_000
    parser = Parser(max_message_bytes=65536, inflate=True)
    with pytest.raises(ProtocolError) as info:
        parser.feed(client_frame(framing.OP_TEXT, bomb, rsv=RSV1))
    assert info.value.code == CloseCode.TOO_BIG
    exact = b"a" * 65536  # at the limit is still accepted
    fine = Parser(max_message_bytes=65536, inflate=True).feed(
        client_frame(framing.OP_TEXT, compression.deflate(exact), rsv=RSV1))
    assert fine == [Message(exact.decode())]
