"""One connection's read loop and the dispatch of what the protocol session decides.

The connection's greenlet blocks in the read (no polling timeout), feeds the bytes to the frame
parser and the protocol session, and carries out the resulting actions; the timer loop
(gateway.timers) hands its actions to the same `act`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

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

    def read_loop(self, conn: Connection) -> None:
        """Block in the read; parse; act. Returns when the peer or an abort ends the connection."""
        transport, session = conn.transport, conn.session
        parser: framing.Parser | None = framing.Parser(max_message_bytes=self.max_message_bytes)
        while True:
            data = transport.read()
            if not data:
                return
            if parser is None:
                continue  # after a protocol error: discard until the peer or the close timeout ends it
            broken: ProtocolError | None = None
            try:
                frames = parser.feed(data)
            except ProtocolError as exc:
                frames, broken = exc.frames, exc  # the whole frames before the broken one still count
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
                        return
            if broken is not None:
                conn.log.info("protocol error {}: {}", int(broken.code), broken.reason)
                conn.close(closes.protocol_error(broken), discard_queued=True)
                parser = None

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
