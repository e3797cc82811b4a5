"""One client socket: a bounded outbound queue drained by a single writer greenlet.

Only the writer touches the socket for sending, so a stalled client blocks nobody but itself;
when its queue passes the limits it is closed with 4008 (slow consumer).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event as GEvent
from loguru import logger
from wsproto.events import CloseConnection, Ping, TextMessage

from common.auth import Identity
from gateway.metrics import FRAMES_OUT
from gateway.protocol import CLOSE_SLOW_CONSUMER, Session

MAX_QUEUED_FRAMES = 1000
MAX_QUEUED_BYTES = 1024 * 1024
# Live events held while a subscription replays history; past this the client is too slow.
MAX_REPLAY_BUFFER = 10_000
_PING = object()


@dataclass
class Subscription:
    """Delivery state of one channel on one connection."""

    last_id: int | None = None
    # Live events that arrived while history was being replayed; None once live.
    buffer: list[tuple[int | None, str]] | None = field(default_factory=list)


class Connection:
    def __init__(self, *, connection_id: str, identity: Identity, ws: Any, session: Session) -> None:
        self.id = connection_id
        self.identity = identity
        self.ws = ws
        self.session = session
        self.subscriptions: dict[str, Subscription] = {}
        self.closed = GEvent()
        self.close_code: int | None = None
        self.frames_sent = 0
        # Keepalive state, driven by the gateway's one timer loop.
        self.next_ping_at = 0.0
        self.ping_sent_at: float | None = None
        self._queue: deque[Any] = deque()
        self._queued_bytes = 0
        self._wake = GEvent()
        self._close_request: tuple[int, str] | None = None
        self._writer = gevent.spawn(self._write_forever)
        self.log = logger.bind(connection_id=connection_id, user_id=identity.user_id, role=identity.role)

    # -- outbound ------------------------------------------------------------------------------
    def send_json(self, body: dict[str, Any]) -> None:
        self.enqueue(json.dumps(body, separators=(",", ":")))

    def enqueue(self, frame: str) -> bool:
        """Queue a frame for the writer; False (and a 4008 close) when the client is too far behind."""
        if self.closed.is_set() or self._close_request is not None:
            return False
        if len(self._queue) >= MAX_QUEUED_FRAMES or self._queued_bytes + len(frame) > MAX_QUEUED_BYTES:
            self.log.warning("slow consumer: {} frames / {} bytes queued", len(self._queue), self._queued_bytes)
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer", discard_queued=True)
            return False
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._wake.set()
        return True

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    def ping(self) -> None:
        if not self.closed.is_set():
            self._queue.append(_PING)
            self._wake.set()

    def close(self, code: int, reason: str, *, discard_queued: bool = False) -> None:
        """Ask the writer to send a close frame after what is queued (or instead of it); idempotent."""
        if self._close_request is None and not self.closed.is_set():
            self._close_request = (code, reason)
            self.close_code = code
            if discard_queued:
                self._queue.clear()
                self._queued_bytes = 0
            self._wake.set()

    def _write_forever(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                while self._queue:
                    item = self._queue.popleft()
                    if item is _PING:
                        self._send_raw(self.ws.ws.send(Ping(b"dms")))
                        continue
                    self._queued_bytes -= len(item)
                    self._send_raw(self.ws.ws.send(TextMessage(data=item)))
                    self.frames_sent += 1
                    FRAMES_OUT.inc()
                if self._close_request is not None:
                    code, reason = self._close_request
                    self._send_raw(self.ws.ws.send(CloseConnection(code, reason)))
                    self.ws.connected = False
                    return
                if not self.ws.connected:
                    return
        except Exception as exc:
            self.log.debug("writer stopped: {}", type(exc).__name__)
        finally:
            self.ws.connected = False
            self.ws.event.set()  # wake the reader so the handler notices
            self.closed.set()

    def _send_raw(self, data: bytes) -> None:
        # simple-websocket's send() uses socket.send, which may write part of a large frame;
        # sendall keeps frames whole. Called from the writer greenlet only.
        self.ws.sock.sendall(data)

    # -- inbound events from the hub -------------------------------------------------------------
    def deliver(self, channel: str, event_id: int | None, frame: str) -> None:
        sub = self.subscriptions.get(channel)
        if sub is None:
            return
        if sub.buffer is not None:
            sub.buffer.append((event_id, frame))
            if len(sub.buffer) > MAX_REPLAY_BUFFER:
                self.close(CLOSE_SLOW_CONSUMER, "slow consumer", discard_queued=True)
            return
        if event_id is not None:
            if sub.last_id is not None and event_id <= sub.last_id:
                return  # already delivered by replay or before a resync
            sub.last_id = event_id
        self.enqueue(frame)

    def go_live(self, channel: str) -> None:
        """End a replay: deliver buffered live events that replay did not cover, then go live."""
        sub = self.subscriptions.get(channel)
        if sub is None or sub.buffer is None:
            return
        buffered, sub.buffer = sub.buffer, None
        for event_id, frame in buffered:
            self.deliver(channel, event_id, frame)
