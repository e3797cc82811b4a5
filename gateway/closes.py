"""Every way a connection ends: a connection's `State` and the catalogue of closes.

Each close is a named code, reason and metric label (as python-websockets' `protocol.py` and
centrifuge's `disconnect.go` name theirs); every close site picks one from here, and
`dms_ws_closes_total{reason=label}` counts each connection's end once. No I/O: the pure
protocol core uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.framing import CloseCode, ProtocolError


class State(Enum):
    CONNECTING = "connecting"  # upgraded, the welcome not sent yet
    OPEN = "open"
    CLOSING = "closing"  # a close frame went out (or came in); waiting for the other side or the timeout
    CLOSED = "closed"  # the TCP connection is gone


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: CloseCode
    reason: str
    label: str  # the metric label: a bounded set, never an id


SHUTDOWN = Disconnect(CloseCode.GOING_AWAY, "server shutting down", "shutdown")
TOKEN_EXPIRED = Disconnect(CloseCode.TOKEN_EXPIRED, "token expired", "token_expired")
PING_TIMEOUT = Disconnect(CloseCode.INTERNAL, "keepalive ping timeout", "ping_timeout")
TOO_MANY_FRAMES = Disconnect(CloseCode.POLICY, "too many frames", "too_many_frames")
SLOW_CONSUMER = Disconnect(CloseCode.SLOW_CONSUMER, "slow consumer", "slow_consumer")
RESYNC_FAILED = Disconnect(CloseCode.INTERNAL, "resynchronisation failed, reconnect with since", "resync_failed")
# Ends the client chose or caused: counted, but no close frame of ours chose them.
PEER_CLOSED = Disconnect(CloseCode.NORMAL, "", "peer_closed")
CLOSE_TIMEOUT = Disconnect(CloseCode.ABNORMAL, "no answer to our close frame", "close_timeout")
CONNECTION_LOST = Disconnect(CloseCode.ABNORMAL, "", "connection_lost")
PROTOCOL_ERROR_LABEL = "protocol_error"

CATALOGUE = (SHUTDOWN, TOKEN_EXPIRED, PING_TIMEOUT, TOO_MANY_FRAMES, SLOW_CONSUMER, RESYNC_FAILED, PEER_CLOSED,
             CLOSE_TIMEOUT, CONNECTION_LOST)
LABELS = (*(close.label for close in CATALOGUE), PROTOCOL_ERROR_LABEL)


def protocol_error(exc: ProtocolError) -> Disconnect:
    """A framing error: its own code (1002, 1007, 1009...) and reason, one label."""
    return Disconnect(exc.code, exc.reason, PROTOCOL_ERROR_LABEL)
