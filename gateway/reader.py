"""One connection's reading and the dispatch of what the protocol session decides.

A silent connection holds no greenlet: the transport's watcher calls back when bytes arrive, a
greenlet takes everything readable, feeds the frame parser and the protocol session, carries out
the resulting actions (which may wait on Redis or PostgreSQL), watches again and ends. So at most
one greenlet reads a connection, and frames are handled in order. The timer loop
(gateway.timers) hands its actions to the same `act`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import gevent

from common.logging import log_context
from gateway import closes, framing
from gateway.connection import Connection
from gateway.framing import CloseReceived, Message, Ping, Pong, ProtocolError
from gateway.gps import GpsIntake
from gateway.protocol import Abort, Action, Auth, Close, Location, Reply, SendPing, Subscribe, Unsubscribe
from gateway.refresh import TokenRefresh
from gateway.subscriptions import Subscriptions


class Reader:
    def __init__(self, *, max_message_bytes: int, subscriptions: Subscriptions, gps: GpsIntake,
                 refresh: TokenRefresh) -> None:
        self.max_message_bytes = max_message_bytes
        self.subscriptions = subscriptions
        self.gps = gps
        self.refresh = refresh
        self.frames_in = 0  # a plain integer, read by the metrics collector at scrape time

    def start(self, conn: Connection, on_end: Callable[[Connection], None]) -> None:
        """Read `conn` from now on; `on_end(conn)` once the peer, a close or an abort ends it."""
        parser = framing.Parser(max_message_bytes=self.max_message_bytes, inflate=conn.deflate is not None)
        reading = _Reading(parser, on_end)
        reading.wake = partial(gevent.spawn, self._drain, conn, reading)
        conn.transport.watch_reads(reading.wake)

    def _drain(self, conn: Connection, reading: _Reading) -> None:
        """Handle everything readable now, then watch again; or end the connection."""
        with log_context(connection_id=conn.id):
            try:
                while True:
                    data = conn.transport.read_nowait()
                    if data is None:
                        conn.transport.watch_reads(reading.wake)
                        return
                    if not data or not self._feed(conn, reading, data):
                        break
            except Exception:
                conn.log.exception("connection failed")
                reading.on_end(conn)
                raise
            reading.on_end(conn)

    def _feed(self, conn: Connection, reading: _Reading, data: bytes) -> bool:
        """Parse and act on `data`; False once the peer's close has been handled (the end)."""
        if reading.parser is None:
            return True  # after a protocol error: discard until the peer or the close timeout ends it
        broken: ProtocolError | None = None
        try:
            frames = reading.parser.feed(data)
        except ProtocolError as exc:
            frames, broken = exc.frames, exc  # the whole frames before the broken one still count
        session, transport = conn.session, conn.transport
        for frame in frames:
            match frame:
                case Message(data=body):
                    self.frames_in += 1
                    if conn.closed:
                        continue  # after our close frame only the peer's close matters
                    for action in session.receive(body, now_s=time.monotonic(), now=datetime.now(UTC)):
                        self.act(conn, action)
                case Ping(payload=payload):
                    transport.send_control(framing.pong(payload))
                case Pong():
                    session.pong(time.monotonic())
                case CloseReceived(code=code):
                    conn.peer_closed(code)
                    return False
        if broken is not None:
            conn.log.info("protocol error {}: {}", int(broken.code), broken.reason)
            conn.close(closes.protocol_error(broken), discard_queued=True)
            reading.parser = None
        return True

    def act(self, conn: Connection, action: Action) -> None:
        match action:
            case Reply(body=body):
                conn.send_json(body)
            case Subscribe():
                self.subscriptions.subscribe(conn, action)
            case Unsubscribe():
                self.subscriptions.unsubscribe(conn, action)
            case Location():
                self.gps.location(conn, action)
            case Auth():
                self.refresh.refresh(conn, action)
            case Close(disconnect=disconnect):
                conn.close(disconnect)
            case SendPing():
                conn.ping()
            case Abort(reason=reason):
                conn.log.info("dropping the connection: {}", reason)
                conn.abort(closes.CLOSE_TIMEOUT)


class _Reading:
    """One connection's reading state between wake-ups: its frame parser and how to wake and end."""

    __slots__ = ("on_end", "parser", "wake")

    def __init__(self, parser: framing.Parser, on_end: Callable[[Connection], None]) -> None:
        self.parser: framing.Parser | None = parser
        self.on_end = on_end
        self.wake: Callable[[], object] = lambda: None
