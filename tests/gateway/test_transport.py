"""The transport and pre-framed delivery on a socketpair, no server: write-through, partial sends,
the slow-consumer limit, abort, and batching."""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from collections.abc import Iterator

import gevent
import pytest
from gevent import socket as gsocket

from common.auth import Identity
from common.visibility import DriverEventTag
from gateway import framing
from gateway.connection import Connection, Outgoing, Subscription
from gateway.framing import CloseCode
from gateway.protocol import Session
from gateway.transport import Transport
from tests.helpers import split_server_frames


@pytest.fixture
def pair() -> Iterator[tuple[gsocket.socket, gsocket.socket]]:
    ours, peer = gsocket.socketpair()
    # Small kernel buffers so the kernel refuses part of what we write and the queue is used.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield ours, peer
    ours.close()
    peer.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[gsocket.socket, gsocket.socket]]:
    """A loopback TCP connection (ours, peer): unlike a socketpair, TCP accepts part of a frame."""
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = gsocket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    yield ours, peer
    ours.close()
    peer.close()


def read_frames(peer: gsocket.socket, *, until_close: bool = False, count: int | None = None,
                timeout_s: float = 10.0) -> list[tuple[int, bytes]]:
    """Decode server frames from the peer side: (opcode, payload) in arrival order."""
    buf, out = b"", []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frames, buf = split_server_frames(buf)
        for frame in frames:
            out.append(frame)
            if frame[0] == framing.OP_CLOSE and until_close:
                return out
        if count is not None and len(out) >= count:
            return out
        with gevent.Timeout(max(0.01, deadline - time.monotonic()), False):
            chunk = peer.recv(65536)
            if not chunk:
                return out
            buf += chunk
    return out


def payload(n: int) -> bytes:
    return framing.text(json.dumps({"n": n, "pad": "x" * 1500}))


def test_write_through_sends_at_once_without_a_writer(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    transport = Transport(ours)
    assert transport.send(framing.text("hello"))
    assert transport.queued_frames == 0 and transport._writer is None
    peer.settimeout(1)
    assert peer.recv(100) == framing.text("hello")  # already in the kernel, no greenlet had to run


class CountingSocket:
    """A socket that records each `send` (the transport's write-through)."""

    def __init__(self, sock: gsocket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def send(self, data: bytes, *args: object) -> int:
        self.writes.append(bytes(data))
        return int(self.sock.send(data, *args))

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_a_cork_sends_what_it_holds_in_one_write(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    counting = CountingSocket(ours)
    writes = counting.writes
    transport = Transport(counting)  # type: ignore[arg-type]
    with transport.corked():
        with transport.corked():  # nested: only the outermost end writes
            for n in range(3):
                assert transport.send(framing.text(f"e{n}"))
        assert writes == [] and transport.queued_frames == 3
        transport.push()  # what a subscribe does before it waits for the store
        assert len(writes) == 1 and transport.queued_frames == 0
        assert transport.send(framing.text("e3"))
        assert len(writes) == 1
    assert len(writes) == 2
    assert transport.send(framing.text("e4"))  # uncorked: written through at once
    assert len(writes) == 3
    frames = read_frames(peer, count=5)
    assert [body for _, body in frames] == [b"e0", b"e1", b"e2", b"e3", b"e4"]


def test_a_close_inside_a_cork_follows_the_frames_it_holds(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    transport = Transport(ours)
    with transport.corked():
        transport.send(framing.text("last words"))
        transport.close(CloseCode.GOING_AWAY, "bye")
    frames = read_frames(peer, until_close=True)
    assert [op for op, _ in frames] == [framing.OP_TEXT, framing.OP_CLOSE]


def test_partial_sends_lose_and_reorder_nothing(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    transport = Transport(ours)
    for n in range(300):  # ~450 kB into a few kB of socket buffer: most of it queues
        assert transport.send(payload(n))
    assert transport.queued_frames > 0
    frames = read_frames(peer, count=300)
    assert [json.loads(body)["n"] for _, body in frames] == list(range(300))
    assert transport.close_code is None and transport.queued_frames == 0


def test_the_queue_limit_closes_with_4008_after_an_intact_prefix(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    transport = Transport(ours, max_queued_frames=20)
    accepted = 0
    for n in range(200):  # nobody reads: the kernel buffer fills, then the queue
        if not transport.send(payload(n)):
            break
        accepted += 1
    assert transport.close_code == CloseCode.SLOW_CONSUMER and accepted < 200
    assert not transport.send(payload(999))  # nothing more after the close
    frames = read_frames(peer, until_close=True)
    data = [json.loads(body)["n"] for op, body in frames if op == framing.OP_TEXT]
    assert data == list(range(len(data)))  # what arrived is an in-order prefix, nothing skipped
    assert frames[-1][0] == framing.OP_CLOSE and struct.unpack("!H", frames[-1][1][:2])[0] == 4008


def test_the_4008_after_a_half_sent_frame_still_parses(
        tcp_pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    """On TCP the kernel takes part of a big frame; the rest waits for the writer greenlet. When the
    limit is hit before that greenlet ran (a busy hub delivering without yielding), the backlog is
    dropped but that rest must still go out before the close frame, or the peer reads the close
    frame as payload and never sees its 4008."""
    ours, peer = tcp_pair
    transport = Transport(ours)
    big = [framing.text(json.dumps({"n": n, "pad": "x" * 60_000})) for n in range(200)]
    accepted = 0
    for frame in big:  # no yield between sends: the writer greenlet never runs
        if not transport.send(frame):
            break
        accepted += 1
    assert transport.close_code == CloseCode.SLOW_CONSUMER and 0 < accepted < 200
    frames = read_frames(peer, until_close=True)
    data = [json.loads(body)["n"] for op, body in frames if op == framing.OP_TEXT]
    assert data == list(range(len(data)))
    assert frames[-1][0] == framing.OP_CLOSE and struct.unpack("!H", frames[-1][1][:2])[0] == 4008


def test_the_byte_limit_applies_too(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, _ = pair
    transport = Transport(ours, max_queued_bytes=20_000)
    results = [transport.send(payload(n)) for n in range(100)]
    assert False in results and transport.close_code == CloseCode.SLOW_CONSUMER


def test_abort_drops_the_connection_and_wakes_the_reader(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    transport = Transport(ours)
    reader = gevent.spawn(transport.read)
    gevent.sleep(0.01)
    transport.abort()
    assert reader.get(timeout=2) == b""
    peer.settimeout(2)
    assert peer.recv(10) == b""
    assert ours.fileno() == -1  # the descriptor is released


def _connection(sock: gsocket.socket, *, batch_ms: int = 0) -> Connection:
    who = Identity(user_id=str(uuid.uuid4()), role="admin", restaurant_id=None, expires_at=time.time() + 60)
    conn = Connection(connection_id="c1", identity=who, transport=Transport(sock), session=Session(role="admin"),
                      batch_ms=batch_ms)
    conn.subscriptions["orders"] = Subscription(last_id=0, buffer=None)
    return conn


def _event(n: int) -> Outgoing:
    return Outgoing.of(n, json.dumps({"type": "event", "channel": "orders", "id": n, "event": "e", "data": {},
                                      "ts": "2026-01-01T00:00:00Z"}, separators=(",", ":")))


def test_batching_puts_events_of_one_window_in_one_frame(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    conn = _connection(ours, batch_ms=30)
    for n in (1, 2, 3):
        conn.deliver("orders", _event(n))
    gevent.sleep(0.1)
    conn.deliver("orders", _event(4))
    conn.send_json({"type": "pong", "ref": None})  # a reply flushes the open batch first: order is kept
    frames = [json.loads(body) for _, body in read_frames(peer, count=3)]
    assert frames[0] == {"type": "batch", "events": [json.loads(_event(n).text) for n in (1, 2, 3)]}
    assert frames[1]["id"] == 4 and frames[2]["type"] == "pong"


def test_without_batching_every_event_is_its_own_frame(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    conn = _connection(ours)
    for n in (1, 2, 3, 2):  # a duplicate id is dropped
        conn.deliver("orders", _event(n))
    assert [json.loads(body)["id"] for _, body in read_frames(peer, count=3)] == [1, 2, 3]


def test_a_restaurant_gets_only_its_own_orders_on_a_driver_channel(pair: tuple[gsocket.socket, gsocket.socket]) -> None:
    ours, peer = pair
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    who = Identity(user_id=str(uuid.uuid4()), role="restaurant", restaurant_id=mine, expires_at=time.time() + 60)
    conn = Connection(connection_id="c2", identity=who, transport=Transport(ours), session=Session(role="restaurant"))
    conn.subscriptions["driver:d"] = Subscription(last_id=0, buffer=None)
    conn.deliver("driver:d", Outgoing.of(1, '{"id":1}', DriverEventTag(theirs, may_end_rights=False)))
    conn.deliver("driver:d", Outgoing.of(2, '{"id":2}', DriverEventTag(mine, may_end_rights=False)))
    conn.deliver("driver:d", Outgoing.of(None, '{"id":null}'))  # the driver's own: everyone
    assert [body for _, body in read_frames(peer, count=2)] == [b'{"id":2}', b'{"id":null}']
