"""The client protocol with no I/O: parse frames, hold subscriptions, decide replies and closes.

Data comes in through `Session.receive(text, now)`; what to do comes out as a list of actions
(`Reply`, `Subscribe`, `Unsubscribe`, `Location`, `Auth`, `Close`). Nothing here touches a socket,
Redis or PostgreSQL, so every rule is unit-tested without a server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from common import gps
from common.channels import InvalidChannel, parse_channel
from common.clock import iso
from common.roles import Role
from common.wire import MAX_REF_CHARS
from gateway import closes
from gateway.closes import Disconnect
from gateway.framing import CloseCode

if TYPE_CHECKING:  # the dataclass only: the protocol imports no database code
    from common.auth import Identity

CLOSE_POLICY = CloseCode.POLICY  # the one name kept for callers that predate the enum

MAX_TOKEN_CHARS = 8192
RATE_PER_S = 20.0
RATE_BURST = 40.0
# Frames refused for rate while already limited; past this the client is closed with 1008.
MAX_RATE_VIOLATIONS = 20


@dataclass(frozen=True)
class Reply:
    body: dict[str, Any]


@dataclass(frozen=True)
class Subscribe:
    channel: str
    since: int | None
    ref: str | None


@dataclass(frozen=True)
class Unsubscribe:
    channel: str
    ref: str | None


@dataclass(frozen=True)
class Location:
    point: gps.GpsPoint
    ref: str | None


@dataclass(frozen=True)
class Auth:
    """Replace the connection's token (contract section 6, "Token refresh"); the server verifies it."""

    token: str
    ref: str | None


@dataclass(frozen=True)
class Close:
    """Send this close frame (then wait for the answer or the close timeout)."""

    disconnect: Disconnect

    @property
    def code(self) -> CloseCode:
        return self.disconnect.code

    @property
    def reason(self) -> str:
        return self.disconnect.reason


@dataclass(frozen=True)
class SendPing:
    """Send a WebSocket ping; a pong must follow within the ping timeout."""


@dataclass(frozen=True)
class Abort:
    """Drop the TCP connection now: the peer did not answer our close frame in time."""

    reason: str


Action = Reply | Subscribe | Unsubscribe | Location | Auth | Close | SendPing | Abort


def error(code: str, message: str, ref: str | None = None) -> Reply:
    return Reply({"type": "error", "code": code, "message": message, "ref": ref})


def welcome(*, connection_id: str, user_id: str, role: str, ping_interval_s: float, max_subscriptions: int,
            now: datetime) -> dict[str, Any]:
    return {
        "type": "welcome",
        "connection_id": connection_id,
        "user": {"id": user_id, "role": role},
        # Whole seconds go out as an integer, as the contract shows them.
        "ping_interval": int(ping_interval_s) if float(ping_interval_s).is_integer() else ping_interval_s,
        "max_subscriptions": max_subscriptions,
        "server_time": iso(now),
    }


def authed(ref: str | None, expires_at: float) -> dict[str, Any]:
    return {"type": "authed", "ref": ref, "expires_at": iso(datetime.fromtimestamp(expires_at, UTC))}


def invalid_token(message: str, ref: str | None) -> Reply:
    return error("invalid_token", message, ref)


def refresh_refusal(old: Identity, new: Identity) -> str | None:
    """Why a verified new token may not replace the old one, or None: same `sub` and `role` only."""
    if new.user_id != old.user_id or new.role != old.role:
        return "the new token names another user or role"
    return None


def subscribed(channel: str, ref: str | None, last_event_id: int | None, recovered: bool) -> dict[str, Any]:
    return {"type": "subscribed", "channel": channel, "ref": ref, "last_event_id": last_event_id,
            "recovered": recovered}


@dataclass
class Subscription:
    """Delivery state of one channel on one connection: the connection's one subscription record."""

    last_id: int | None = None
    # Live events (the connection's `Outgoing`) that arrived while history was replayed; None once live.
    buffer: list[Any] | None = field(default_factory=list)
    # Buffering since the hub lost this channel's upstream subscription: the resync that follows the
    # resubscription replays the gap, then goes live (events arriving before it must wait for it).
    held: bool = False


class TokenBucket:
    """`rate_per_s` tokens a second up to `burst`; `take()` says whether a frame may pass."""

    def __init__(self, *, rate_per_s: float = RATE_PER_S, burst: float = RATE_BURST) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.updated: float | None = None

    def take(self, now_s: float) -> bool:
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now_s - self.updated) * self.rate_per_s)
        self.updated = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Session:
    """One connection's protocol state; `subscriptions` is the connection's one subscription map."""

    role: str
    max_subscriptions: int = 50
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # subscribes the server is still working on
    rate: TokenBucket = field(default_factory=TokenBucket)
    rate_violations: int = 0
    # Time rules, driven by `tick`: seconds on the caller's monotonic clock, `expires_at` wall time.
    ping_interval_s: float = 30.0
    ping_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    expires_at: float = math.inf
    next_ping_at: float = math.inf
    ping_sent_at: float | None = None
    close_sent_at: float | None = None

    def start(self, now_s: float) -> None:
        """The connection is open: the first ping is due one interval from now."""
        self.next_ping_at = now_s + self.ping_interval_s

    def pong(self, now_s: float) -> None:
        if self.ping_sent_at is not None:
            self.ping_sent_at = None
            self.next_ping_at = now_s + self.ping_interval_s

    def reauthenticated(self, expires_at: float) -> None:
        """A refreshed token: the 4001 deadline moves to its expiry."""
        self.expires_at = expires_at

    def close_sent(self, now_s: float) -> None:
        """We sent a close frame: the peer has `close_timeout_s` to answer before we drop it."""
        if self.close_sent_at is None:
            self.close_sent_at = now_s

    def tick(self, now_s: float, wall_s: float) -> list[Action]:
        """What the clock decides: a ping due, a keepalive or token expiry close, a close timed out."""
        if self.close_sent_at is not None:
            if now_s - self.close_sent_at >= self.close_timeout_s:
                return [Abort("no answer to our close frame")]
            return []
        if wall_s >= self.expires_at:
            return [Close(closes.TOKEN_EXPIRED)]
        if self.ping_sent_at is not None:
            if now_s - self.ping_sent_at >= self.ping_timeout_s:
                return [Close(closes.PING_TIMEOUT)]
            return []
        if now_s >= self.next_ping_at:
            self.ping_sent_at = now_s
            return [SendPing()]
        return []

    def receive(self, text: str | bytes, *, now_s: float, now: datetime) -> list[Action]:
        """Decide what one client frame leads to."""
        if not self.rate.take(now_s):
            self.rate_violations += 1
            if self.rate_violations > MAX_RATE_VIOLATIONS:
                return [Close(closes.TOO_MANY_FRAMES)]
            return [error("rate_limited", f"at most {RATE_PER_S:g} frames per second (burst {RATE_BURST:g})",
                          _ref_of(text))]
        if isinstance(text, bytes):
            return [error("bad_request", "frames are JSON text, not binary")]
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            return [error("bad_request", "the frame is not valid JSON")]
        if not isinstance(frame, dict):
            return [error("bad_request", "a frame is a JSON object")]
        ref = frame.get("ref")
        if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_REF_CHARS):
            return [error("bad_request", f"ref must be a string of at most {MAX_REF_CHARS} characters")]
        kind = frame.get("type")
        if kind == "ping":
            return [Reply({"type": "pong", "ref": ref, "server_time": iso(now)})]
        if kind == "subscribe":
            return self._subscribe(frame, ref)
        if kind == "unsubscribe":
            return self._unsubscribe(frame, ref)
        if kind == "location":
            return self._location(frame, ref, now)
        if kind == "auth":
            token = frame.get("token")
            if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
                return [invalid_token(f"'token' must be a JWT string of at most {MAX_TOKEN_CHARS} characters", ref)]
            return [Auth(token, ref)]
        if not isinstance(kind, str):
            return [error("bad_request", "a frame needs a string 'type'", ref)]
        return [error("unknown_type", f"unknown frame type {kind[:40]!r}", ref)]

    def _channel(self, frame: dict[str, Any], ref: str | None) -> str | Reply:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            return error("bad_request", "'channel' must be a string", ref)
        try:
            kind, key = parse_channel(channel)
        except InvalidChannel as exc:
            return error("invalid_channel", exc.message, ref)
        return kind if key is None else f"{kind}:{key}"

    def _subscribe(self, frame: dict[str, Any], ref: str | None) -> list[Action]:
        channel = self._channel(frame, ref)
        if isinstance(channel, Reply):
            return [channel]
        since = frame.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
            return [error("bad_request", "'since' must be a non-negative integer event id", ref)]
        held = channel in self.subscriptions or channel in self.pending
        # A subscribe in progress may already hold its entry (replaying): count each channel once.
        if not held and len(self.pending | self.subscriptions.keys()) >= self.max_subscriptions:
            return [error("subscription_limit", f"at most {self.max_subscriptions} subscriptions", ref)]
        if channel in self.pending:
            return [error("bad_request", f"a subscribe to {channel} is already in progress", ref)]
        self.pending.add(channel)
        return [Subscribe(channel, since, ref)]

    def hold(self, channel: str) -> Subscription:
        """The server allowed a subscribe: its entry exists from now on (replaying until live)."""
        sub = self.subscriptions[channel] = Subscription()
        return sub

    def subscribe_done(self, channel: str, *, ok: bool) -> None:
        """The server finished (or refused) a subscribe this session asked for."""
        self.pending.discard(channel)
        if ok:
            self.subscriptions.setdefault(channel, Subscription(buffer=None))

    def _unsubscribe(self, frame: dict[str, Any], ref: str | None) -> list[Action]:
        channel = self._channel(frame, ref)
        if isinstance(channel, Reply):
            return [channel]
        self.subscriptions.pop(channel, None)
        return [Unsubscribe(channel, ref)]

    def _location(self, frame: dict[str, Any], ref: str | None, now: datetime) -> list[Action]:
        if self.role != Role.DRIVER:
            return [error("forbidden", "only drivers send locations", ref)]
        point, problems = gps.check_point(frame, now)
        if point is None:
            return [error("bad_request", "; ".join(f"{name} {problem}" for name, problem in problems.items()), ref)]
        return [Location(point, ref)]


def _ref_of(text: str | bytes) -> str | None:
    """Best effort: the ref of a frame we refuse to process, so the client can match the error."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    ref = frame.get("ref") if isinstance(frame, dict) else None
    return ref if isinstance(ref, str) and len(ref) <= MAX_REF_CHARS else None
