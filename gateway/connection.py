"""One client: its protocol session, its subscriptions, and pre-framed delivery onto its transport.

The hub hands every subscriber the same `Outgoing` (frame bytes built once per event); the
connection only decides whether this subscriber gets it (subscription state, replay buffer,
duplicates, the per-restaurant filter on `driver:*`) and passes the bytes to its transport.
With `batch_ms` events that arrive within that window leave as one `batch` frame.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from loguru import logger

from common.auth import Identity
from common.roles import ROLES_WITH_RESTAURANT
from gateway import framing
from gateway.framing import CloseCode
from gateway.protocol import Session, TokenBucket
from gateway.transport import Transport

# Live events held while a subscription replays history; past this the client is too slow.
MAX_REPLAY_BUFFER = 10_000
GPS_POINTS_PER_S = 5.0
GPS_BURST = 10.0


@dataclass(slots=True)
class Outgoing:
    """One event as it leaves the hub: its JSON text and its frame bytes, both built once."""

    event_id: int | None
    text: str
    frame: bytes
    # Set on order events carried by `driver:*`: only admins, the driver and this restaurant get it.
    restaurant_id: str | None = None

    @classmethod
    def of(cls, event_id: int | None, text: str, restaurant_id: str | None = None) -> Outgoing:
        return cls(event_id, text, framing.text(text), restaurant_id)


@dataclass
class Subscription:
    """Delivery state of one channel on one connection."""

    last_id: int | None = None
    # Live events that arrived while history was being replayed; None once live.
    buffer: list[Outgoing] | None = field(default_factory=list)


class Connection:
    def __init__(self, *, connection_id: str, identity: Identity, transport: Transport, session: Session,
                 batch_ms: int = 0) -> None:
        self.id = connection_id
        self.identity = identity
        self.transport = transport
        self.session = session
        self.batch_ms = batch_ms
        self.subscriptions: dict[str, Subscription] = {}
        self.gps_rate = TokenBucket(rate_per_s=GPS_POINTS_PER_S, burst=GPS_BURST)
        self.log = logger.bind(connection_id=connection_id, user_id=identity.user_id, role=identity.role)
        transport.on_slow_consumer = self._slow_consumer
        self._batch: list[str] = []
        self._batch_timer: gevent.Greenlet | None = None
        # Restaurants see only their own orders' events on a driver's channel.
        self.own_restaurant = identity.restaurant_id if identity.role in ROLES_WITH_RESTAURANT else None

    @property
    def closed(self) -> bool:
        return self.transport.closing

    @property
    def close_code(self) -> int | None:
        return self.transport.close_code

    @property
    def queued_frames(self) -> int:
        return self.transport.queued_frames

    @property
    def frames_sent(self) -> int:
        return self.transport.frames_sent

    def _slow_consumer(self) -> None:
        self.log.warning("slow consumer: {} frames / {} bytes queued", self.transport.queued_frames,
                         self.transport.queued_bytes)

    # -- outbound ------------------------------------------------------------------------------
    def send_json(self, body: dict[str, Any]) -> None:
        self._flush_batch()  # replies never overtake events already delivered
        self.transport.send(framing.text(json.dumps(body, separators=(",", ":"))))

    def send_frame(self, out: Outgoing) -> bool:
        if self.batch_ms <= 0:
            return self.transport.send(out.frame)
        self._batch.append(out.text)
        if self._batch_timer is None:
            self._batch_timer = gevent.spawn_later(self.batch_ms / 1000.0, self._flush_batch)
        return not self.transport.closing

    def _flush_batch(self) -> None:
        timer, self._batch_timer = self._batch_timer, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)
        if not self._batch:
            return
        texts, self._batch = self._batch, []
        if len(texts) == 1:
            self.transport.send(framing.text(texts[0]))
        else:
            self.transport.send(framing.text('{"type":"batch","events":[' + ",".join(texts) + "]}"))

    def ping(self) -> None:
        self.transport.send_control(framing.ping(b"dms"))

    def close(self, code: CloseCode | int, reason: str, *, discard_queued: bool = False) -> None:
        """Send a close frame (once); the timer loop drops the socket if the peer never answers."""
        if not discard_queued:
            self._flush_batch()
        else:
            self._batch.clear()
        if self.transport.close(code, reason, discard_queued=discard_queued):
            self.session.close_sent(time.monotonic())

    # -- inbound events from the hub -------------------------------------------------------------
    def deliver(self, channel: str, out: Outgoing) -> None:
        sub = self.subscriptions.get(channel)
        if sub is None:
            return
        if sub.buffer is not None:
            sub.buffer.append(out)
            if len(sub.buffer) > MAX_REPLAY_BUFFER:
                self.log.warning("slow consumer: {} live events held during replay", len(sub.buffer))
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer", discard_queued=True)
            return
        if out.event_id is not None:
            if sub.last_id is not None and out.event_id <= sub.last_id:
                return  # already delivered by replay or before a resync
            sub.last_id = out.event_id
        if self.may_see(out):
            self.send_frame(out)

    def may_see(self, out: Outgoing) -> bool:
        """Restaurants see only their own orders' events on a driver's channel."""
        return out.restaurant_id is None or self.own_restaurant is None or out.restaurant_id == self.own_restaurant

    def go_live(self, channel: str) -> None:
        """End a replay: deliver buffered live events that replay did not cover, then go live."""
        sub = self.subscriptions.get(channel)
        if sub is None or sub.buffer is None:
            return
        buffered, sub.buffer = sub.buffer, None
        for out in buffered:
            self.deliver(channel, out)
