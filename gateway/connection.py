"""One client: its protocol session, its subscriptions, its close state, and pre-framed delivery.

The hub hands every subscriber the same `Outgoing` (frame bytes built once per event, plain and,
for clients that agreed permessage-deflate, compressed); the connection only decides whether this
subscriber gets it (subscription state, replay buffer, duplicates, the visibility filter on
`driver:*`) and passes the bytes to its transport.
With `batch_ms` events that arrive within that window leave as one `batch` frame. The
connection's `state` and `disconnect` are its one close state; every close goes through `close`.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from loguru import logger

from common import visibility
from common.auth import Identity
from common.visibility import DriverEventTag
from gateway import closes, compression, framing, metrics
from gateway.closes import Disconnect, State
from gateway.compression import Deflate
from gateway.protocol import Session, Subscription, TokenBucket
from gateway.transport import Transport

__all__ = ["Connection", "Outgoing", "Subscription", "batch_frame"]

# Live events held while a subscription replays history; past this the client is too slow.
MAX_REPLAY_BUFFER = 10_000
GPS_POINTS_PER_S = 5.0
GPS_BURST = 10.0


_sequence = itertools.count()


@dataclass(slots=True)
class Outgoing:
    """One event as it leaves the hub: its JSON text and its frame bytes, both built once.

    The compressed frame (permessage-deflate) is made on first demand, once per publication and
    window size, and shared like the plain one; so is the compressed `batch` frame that ends with
    this event, for the subscribers whose batch holds the same events (`batch_frame`).
    """

    event_id: int | None
    text: str
    frame: bytes
    # Set on order events carried by `driver:*` (see common.visibility).
    tag: DriverEventTag | None = None
    # Unique for the process's life: names this event in a batch's cache key without holding it.
    seq: int = field(default_factory=lambda: next(_sequence), compare=False)
    _deflated: dict[int, bytes] | None = field(default=None, repr=False, compare=False)
    _batch: tuple[tuple[int, ...], int, bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, event_id: int | None, text: str, tag: DriverEventTag | None = None) -> Outgoing:
        return cls(event_id, text, framing.text(text), tag)

    def frame_for(self, deflate: Deflate | None) -> bytes:
        """The bytes for one subscriber: compressed if it agreed permessage-deflate and the event is big enough."""
        if deflate is None:
            return self.frame
        cache = self._deflated
        if cache is None:
            cache = self._deflated = {}
        bits = deflate.server_window_bits
        frame = cache.get(bits)
        if frame is None:
            if compression.compressible(framing.payload_length(self.frame)):
                frame = framing.deflated(self.text.encode("utf-8"), deflate)
                metrics.DEFLATED.labels("event").inc()
            else:
                frame = self.frame
            cache[bits] = frame
        return frame


def batch_text(texts: list[str]) -> str:
    return '{"type":"batch","events":[' + ",".join(texts) + "]}"


def batch_frame(outs: list[Outgoing], deflate: Deflate | None) -> bytes:
    """The `batch` frame of several events for one subscriber.

    Subscribers of a channel with the same `batch_ms` mostly collect the same events in a window;
    the compressed frame is kept on the batch's last event, keyed by the events' sequence numbers,
    so the first of them compresses and the others reuse its bytes. The plain frame is built per
    subscriber, as it was before compression existed.
    """
    if deflate is None:
        return framing.text(batch_text([out.text for out in outs]))
    last, key, bits = outs[-1], tuple(out.seq for out in outs), deflate.server_window_bits
    cached = last._batch
    if cached is not None and cached[0] == key and cached[1] == bits:
        return cached[2]
    body = batch_text([out.text for out in outs]).encode("utf-8")
    if compression.compressible(len(body)):
        frame = framing.deflated(body, deflate)
        metrics.DEFLATED.labels("batch").inc()
    else:
        frame = framing.encode(framing.OP_TEXT, body)
    last._batch = (key, bits, frame)
    return frame


class Connection:
    def __init__(self, *, connection_id: str, identity: Identity, transport: Transport, session: Session,
                 batch_ms: int = 0) -> None:
        self.id = connection_id
        self.identity = identity
        self.transport = transport
        self.session = session
        self.batch_ms = batch_ms
        self.state = State.CONNECTING
        self.disconnect: Disconnect | None = None  # why the connection ended (or is ending)
        self.gps_rate = TokenBucket(rate_per_s=GPS_POINTS_PER_S, burst=GPS_BURST)
        self.log = logger.bind(connection_id=connection_id, user_id=identity.user_id, role=identity.role)
        transport.on_slow_consumer = self._slow_consumer
        transport.on_abort = self._lost
        self.deflate = transport.deflate  # permessage-deflate as agreed in the handshake, or None
        self._batch: list[Outgoing] = []
        self._batch_timer: gevent.Greenlet | None = None
        self.own_restaurant = visibility.own_restaurant(identity)

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The one subscription map (the protocol session counts and caps from the same map)."""
        return self.session.subscriptions

    @property
    def closed(self) -> bool:
        return self.state in (State.CLOSING, State.CLOSED)

    @property
    def close_code(self) -> int | None:
        return None if self.disconnect is None else int(self.disconnect.code)

    @property
    def queued_frames(self) -> int:
        return self.transport.queued_frames

    @property
    def frames_sent(self) -> int:
        return self.transport.frames_sent

    def _slow_consumer(self) -> None:
        self.log.warning("slow consumer: {} frames / {} bytes queued", self.transport.queued_frames,
                         self.transport.queued_bytes)
        self.close(closes.SLOW_CONSUMER, discard_queued=True)

    def opened(self) -> None:
        self.state = State.OPEN
        self.session.start(time.monotonic())

    # -- outbound ------------------------------------------------------------------------------
    def send_json(self, body: dict[str, Any]) -> None:
        self._flush_batch()  # replies never overtake events already delivered
        self.transport.send(framing.text_for(json.dumps(body, separators=(",", ":")), self.deflate))

    def send_frame(self, out: Outgoing) -> bool:
        if self.batch_ms <= 0:
            return self.transport.send(out.frame_for(self.deflate))
        self._batch.append(out)
        if self._batch_timer is None:
            self._batch_timer = gevent.spawn_later(self.batch_ms / 1000.0, self._flush_batch)
        return not self.transport.closing

    def _flush_batch(self) -> None:
        timer, self._batch_timer = self._batch_timer, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)
        if not self._batch:
            return
        outs, self._batch = self._batch, []
        if len(outs) == 1:
            self.transport.send(outs[0].frame_for(self.deflate))
        else:
            self.transport.send(batch_frame(outs, self.deflate))

    def ping(self) -> None:
        self.transport.send_control(framing.ping(b"dms"))

    def close(self, disconnect: Disconnect, *, discard_queued: bool = False) -> None:
        """Send a close frame (once); the timer loop drops the socket if the peer never answers."""
        if self.closed:
            return
        if not discard_queued:
            self._flush_batch()
        else:
            self._batch.clear()
        self._ending(disconnect, State.CLOSING)
        if self.transport.close(disconnect.code, disconnect.reason, discard_queued=discard_queued):
            self.session.close_sent(time.monotonic())

    def peer_closed(self, code: int) -> None:
        """The peer's close, or its answer to ours: echo once, then drop the TCP connection."""
        self._ending(closes.PEER_CLOSED, State.CLOSING)
        echo = code if code not in (framing.CloseCode.NO_STATUS,) else framing.CloseCode.NORMAL
        self.transport.close(echo, "")

    def abort(self, disconnect: Disconnect = closes.CONNECTION_LOST) -> None:
        """Drop the TCP connection now; the end counts as `disconnect` unless one was chosen before."""
        self._ending(disconnect, State.CLOSED)
        self.transport.abort()

    def _lost(self) -> None:
        self._ending(closes.CONNECTION_LOST, State.CLOSED)

    def _ending(self, disconnect: Disconnect, state: State) -> None:
        if self.disconnect is None:
            self.disconnect = disconnect
            metrics.count_close(disconnect.label)
        self.state = state

    # -- inbound events from the hub -------------------------------------------------------------
    def deliver(self, channel: str, out: Outgoing) -> None:
        sub = self.subscriptions.get(channel)
        if sub is None:
            return
        if sub.buffer is not None:
            sub.buffer.append(out)
            if len(sub.buffer) > MAX_REPLAY_BUFFER:
                self.log.warning("slow consumer: {} live events held during replay", len(sub.buffer))
                self.close(closes.SLOW_CONSUMER, discard_queued=True)
            return
        if out.event_id is not None:
            if sub.last_id is not None and out.event_id <= sub.last_id:
                return  # already delivered by replay or before a resync
            sub.last_id = out.event_id
        if self.may_see(out):
            self.send_frame(out)

    def hold(self, channel: str) -> None:
        """The hub lost `channel` upstream: buffer live events until the resync has replayed the gap.

        Without this, a live event arriving between the resubscription and the resync would move
        `last_id` past the gap, and the replay would skip it. A subscribe in progress buffers already.
        """
        sub = self.subscriptions.get(channel)
        if sub is not None and sub.buffer is None:
            sub.buffer, sub.held = [], True

    def may_see(self, out: Outgoing) -> bool:
        """The visibility rule's per-connection filter (a restaurant on `driver:*`)."""
        return visibility.may_see_event(self.own_restaurant, out.tag)

    def go_live(self, channel: str) -> None:
        """End a replay: deliver buffered live events that replay did not cover, then go live."""
        sub = self.subscriptions.get(channel)
        if sub is None or sub.buffer is None:
            return
        buffered, sub.buffer = sub.buffer, None
        for out in buffered:
            self.deliver(channel, out)
