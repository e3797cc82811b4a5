"""dms_client: the Python client of the dms WebSocket protocol, for plain threads and for gevent.

    client = DmsClient("ws://127.0.0.1:8081/ws", token=token, api_url="http://127.0.0.1:8000")
    client.subscribe("restaurant:RID", lambda event: print(event["event"], event["data"]))
    client.start()

The same behaviour as dms-client.js: last id per channel, full-jitter reconnects (base 0.5 s, cap 15 s)
that wait at least Retry-After, resubscribe with `since`, connect tickets (`?token=` only when the API
has no ticket endpoint), `auth` refresh through `get_token`, `batch` frames, `unsubscribed` with a reason,
and a bounded offline buffer for `send_location` flushed in order over REST. A subscribe the gateway
answers with a passing error (its replay failed, `rate_limited`) is sent again after a full-jitter wait.

One reader per client: `start()` gives it a thread (a greenlet when gevent has patched threading), or
the caller runs `run()` in a greenlet of its own, so 20,000 clients need no 20,000 threads. Many
clients in one process can share a `SharedDecoder` (each event parsed once) and a `dial_gate`
(handshakes in flight). The layers under it are public: `dms_client.ws` (RFC 6455),
`dms_client.backoff` (when to reconnect), `dms_client.frames` (bytes to frames).
"""

from __future__ import annotations

import errno
import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from dms_client.backoff import reconnect_delay
from dms_client.frames import Frame, SharedDecoder, decode_json
from dms_client.ws import Connection, ConnectionClosed, HandshakeRefused, dial

__all__ = ["DmsClient", "Frame", "HandshakeRefused", "SharedDecoder"]

Handler = Callable[..., None]
BATCH_LIMIT = 500  # points per REST request (the endpoint's maximum)
MAX_POINT_AGE_S = 23 * 3600
# Subscribe errors that another try cannot change; any other (`unavailable` after a failed replay,
# `rate_limited`) is tried again on the same connection after a full-jitter wait.
FINAL_SUBSCRIBE_ERRORS = frozenset({"bad_request", "unknown_type", "invalid_channel", "forbidden",
                                    "subscription_limit"})
# Timed work between frames (token refresh, subscribe retries) wakes the reader at least this often.
MAX_WAKE_S, MIN_WAKE_S = 1.0, 0.05


@dataclass(slots=True)
class _Channel:
    handler: Callable[[Frame], None] | None
    recover: bool
    last_id: int | None = None
    ref: str | None = None  # of the last subscribe sent: an error with it is about this channel
    refusals: int = 0  # subscribe errors in a row: the exponent of the wait before the next try


class _Unreachable(Exception):
    """An attempt that ended before a welcome; `reason` names where (see DmsClient's "state" detail)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


@dataclass(frozen=True, slots=True)
class _Ended:
    reason: str
    dropped: bool  # a welcomed connection ended (else: this attempt never got that far)
    retry_after_s: float | None = None


def _unreachable_reason(stage: str, exc: BaseException) -> str:
    """Where an attempt failed: `connect_timeout`, `connect_<errno>`, `http_<status>`, `closed_before_answer`,
    `handshake_timeout`, `reset_during_handshake`, `bad_answer`, `no_welcome`."""
    if isinstance(exc, HandshakeRefused):
        return f"http_{exc.status}"
    if isinstance(exc, TimeoutError):
        return "connect_timeout" if stage == "connect" else "handshake_timeout"
    if stage == "connect" and isinstance(exc, OSError):
        return "connect_" + errno.errorcode.get(exc.errno or 0, "error").lower()
    if stage == "upgrade" and isinstance(exc, ConnectionClosed):
        return "closed_before_answer"
    if isinstance(exc, OSError | ConnectionClosed):
        return "reset_during_handshake"
    return "bad_answer" if stage == "upgrade" else "no_welcome"


def _claims(token: str) -> dict[str, Any]:
    import base64

    try:
        part = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
    except (IndexError, ValueError):
        return {}


class DmsClient:
    """One reconnecting WebSocket connection; handlers run on its reader (thread or greenlet).

    Listeners (`on(kind, handler)`): "state" (state, detail), "error" (frame), "subscribed" (frame,
    had_since), "unsubscribed" (frame), "welcome" (frame), "frame" (every frame as it arrives, before
    the client's own handling: load tests count duplicates there). After each failed attempt or lost
    connection, "state" gets "reconnecting" with `delay_s`, `attempt`, `retry_after_s`, `dropped` (a
    welcomed connection ended) and `reason`: `closed_<code>` or `lost` when dropped, else where the
    attempt failed (`connect_timeout`, `connect_<errno>`, `http_<status>`, `closed_before_answer`,
    `handshake_timeout`, `reset_during_handshake`, `bad_answer`, `no_welcome`, `ticket_failed`).
    An "error" frame answering a subscribe carries that subscribe's `channel`.

    `compression` offers permessage-deflate (on by default, as browsers do; off asks for plain frames).
    `decode` turns a frame's bytes into a dict (a `SharedDecoder` parses each event once for many
    clients); `dial_gate` is held from the TCP connect to the welcome (a `BoundedSemaphore(n)` shared
    by many clients keeps at most n handshakes in flight)."""

    def __init__(self, url: str, *, token: str | None = None, get_token: Callable[[], str] | None = None,
                 api_url: str | None = None, batch_ms: int = 0, base_s: float = 0.5, cap_s: float = 15.0,
                 refresh_before_s: float = 60.0, buffer_limit: int = 5000, origin: str | None = None,
                 timeout_s: float = 10.0, tickets: bool = True, compression: bool = True,
                 decode: Callable[[bytes], Frame] = decode_json,
                 dial_gate: AbstractContextManager[Any] | None = None) -> None:
        self.url = url
        self.token = token
        self.get_token = get_token
        parts = urlsplit(url)
        self.api_url = (api_url or f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}").rstrip("/")
        self.batch_ms = batch_ms
        self.base_s, self.cap_s = base_s, cap_s
        self.refresh_before_s = refresh_before_s
        self.origin = origin
        self.timeout_s = timeout_s
        self.tickets = tickets
        # Offer permessage-deflate, as every browser does for dms-client.js: events of 256 bytes or more
        # arrive in about half the bytes, and inflating them costs the client far less than the network.
        self.compression = compression
        self.decode = decode
        self.dial_gate = dial_gate
        self.channels: dict[str, _Channel] = {}
        # "frame": every frame as it arrives, before the client's own handling (load tests count duplicates).
        self.listeners: dict[str, list[Handler]] = {k: [] for k in ("state", "error", "subscribed", "unsubscribed",
                                                                     "welcome", "frame")}
        self.buffer: deque[dict[str, Any]] = deque(maxlen=buffer_limit)
        self.state = "idle"
        self.attempt = 0
        self.reconnects = 0
        self._conn: Connection | None = None
        self._closed = threading.Event()
        self._connected = threading.Event()
        self._refs = 0
        self._refresh_at = float("inf")
        self._reader: threading.Thread | None = None
        self._unacked: dict[str, dict[str, Any]] = {}
        self._subscribe_refs: dict[str, str] = {}  # ref -> channel, for the subscribes of this connection
        self._retry_at: dict[str, float] = {}  # channel -> when its refused subscribe goes out again

    # -- public API ----------------------------------------------------------------------------------------
    def start(self) -> DmsClient:
        """Run the client on a thread of its own (a greenlet when gevent has patched threading)."""
        self._reader = threading.Thread(target=self.run, name="dms-client", daemon=True)
        self._reader.start()
        return self

    def subscribe(self, channel: str, handler: Callable[[Frame], None] | None = None, *,
                  recover: bool = True) -> None:
        known = self.channels.get(channel)
        self.channels[channel] = _Channel(handler, recover, known.last_id if known else None)
        if known is None:
            self._send_subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        self._retry_at.pop(channel, None)
        if self.channels.pop(channel, None) is not None:
            self._send({"type": "unsubscribe", "channel": channel, "ref": self._ref("u")})

    def on(self, kind: str, handler: Handler) -> DmsClient:
        self.listeners[kind].append(handler)
        return self

    def close(self) -> None:
        self._closed.set()
        conn = self._conn
        if conn is not None:
            conn.close()
        self._set_state("closed")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def last_id(self, channel: str) -> int | None:
        state = self.channels.get(channel)
        return state.last_id if state else None

    def drop(self) -> None:
        """Lose the connection as a network failure would; the usual backoff brings it back."""
        conn = self._conn
        if conn is not None:
            conn.close(4000)

    @property
    def unacknowledged(self) -> int:
        """Locations sent over the socket and not yet acknowledged (resent over REST after a drop)."""
        return len(self._unacked)

    def send_location(self, point: dict[str, Any]) -> str:
        """Over the socket when connected and nothing older waits; else buffered for REST on reconnect."""
        full = {**point, "recorded_at": point.get("recorded_at") or _now_iso()}
        ref = self._ref("l")
        if self.connected and not self.buffer:
            self._unacked[ref] = full  # until the server's ack: a lost connection sends it again over REST
            if self._send({"type": "location", **full, "ref": ref}):
                return "sent"
            self._unacked.pop(ref, None)
        self.buffer.append(full)
        return "buffered"

    # -- the reader: connect, read, reconnect ------------------------------------------------------------
    def run(self) -> None:
        """Connect, read and reconnect until `close()`, in the calling thread or greenlet."""
        while not self._closed.is_set():
            self._set_state("reconnecting" if self.attempt else "connecting")
            ended = self._session()
            if ended is None or self._closed.is_set():
                break
            delay = reconnect_delay(self.attempt, base_s=self.base_s, cap_s=self.cap_s,
                                    retry_after_s=ended.retry_after_s)
            self.attempt += 1
            self._set_state("reconnecting", delay_s=delay, attempt=self.attempt,
                            retry_after_s=ended.retry_after_s or 0.0, reason=ended.reason, dropped=ended.dropped)
            self._closed.wait(delay)

    def _session(self) -> _Ended | None:
        """One attempt and, once welcomed, the connection until it ends; None: closed for good."""
        try:
            conn, welcome = self._dial()
            self._conn = conn
            self._on_frame(welcome)
            self._read(conn)
            return _Ended("closed_by_client", dropped=True)
        except _Unreachable as exc:
            return _Ended(exc.reason, dropped=False, retry_after_s=exc.retry_after_s)
        except ConnectionClosed as exc:
            if exc.code == 4001:
                if self.get_token is None:
                    self._closed.set()
                    self._set_state("closed", reason="the token expired")
                    return None
                self.token = None
            return _Ended(f"closed_{exc.code}" if exc.code is not None else "lost", dropped=True)
        except OSError:
            return _Ended("lost", dropped=True)
        finally:
            self._connected.clear()
            if self._unacked:  # sent but not acknowledged: they go first, in the order they were taken
                self.buffer.extendleft(reversed(list(self._unacked.values())))
                self._unacked.clear()
            ended_conn, self._conn = self._conn, None
            if ended_conn is not None:
                ended_conn.close()

    def _dial(self) -> tuple[Connection, Frame]:
        """Ticket, TCP connect, upgrade and welcome; raises _Unreachable naming where it failed."""
        try:
            url = self._handshake_url()
        except (OSError, ValueError) as exc:
            self._emit("error", {"code": "connect_failed", "message": str(exc)})
            raise _Unreachable("ticket_failed") from exc
        stage = "connect"
        conn: Connection | None = None
        try:
            with self.dial_gate if self.dial_gate is not None else nullcontext():
                sock = dial(url, timeout_s=self.timeout_s)
                stage = "upgrade"
                conn = Connection.upgrade(sock, url, origin=self.origin, compress=self.compression)
                stage = "welcome"  # still under timeout_s: a gateway that never welcomes does not hold us
                welcome = self.decode(conn.recv_bytes())
            if welcome.get("type") != "welcome":
                raise ValueError("the first frame is not a welcome")
            return conn, welcome
        except HandshakeRefused as exc:
            if exc.status == 401 and self.get_token is not None:
                self.token = None
            self._emit("error", {"code": "handshake_refused", "message": str(exc), "status": exc.status})
            raise _Unreachable(_unreachable_reason(stage, exc), exc.retry_after_s) from exc
        except (OSError, ConnectionClosed, ValueError, IndexError) as exc:
            if conn is not None:
                conn.close()
            self._emit("error", {"code": "connect_failed", "message": str(exc)})
            raise _Unreachable(_unreachable_reason(stage, exc)) from exc

    def _current_token(self) -> str:
        if self.get_token is not None and (not self.token or _claims(self.token).get("exp", 1e18) - time.time() < 5):
            self.token = self.get_token()
        if not self.token:
            raise ValueError("no token")
        return self.token

    def _handshake_url(self) -> str:
        token = self._current_token()
        separator = "&" if "?" in self.url else "?"
        batch = f"batch_ms={self.batch_ms}&" if self.batch_ms else ""
        if self.tickets:
            try:
                body = self._http("POST", "/api/realtime/ticket", {})
                return f"{self.url}{separator}{batch}ticket={quote(str(body['ticket']))}"
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code != 404:
                    raise OSError(f"ticket request failed: HTTP {exc.code}") from exc
                self.tickets = False  # an API without tickets: the token goes in the URL
        return f"{self.url}{separator}{batch}token={quote(token)}"

    def _read(self, conn: Connection) -> None:
        while not self._closed.is_set():
            conn.settimeout(self._timed_work())
            try:
                payload = conn.recv_bytes()
            except TimeoutError:
                continue
            try:
                frame = self.decode(payload)
            except ValueError:
                continue
            self._on_frame(frame)

    def _timed_work(self) -> float | None:
        """Do what is due (token refresh, subscribe retries); how long the next read may wait (None: no limit,
        the usual case, so a socket costs no timer)."""
        if not self._retry_at and self._refresh_at == float("inf"):
            return None  # checked once per frame: the common case costs two lookups
        now = time.time()
        if now >= self._refresh_at:
            self._refresh()
        for channel, due in list(self._retry_at.items()):
            if now >= due:
                del self._retry_at[channel]
                if channel in self.channels:
                    self._send_subscribe(channel)
        next_at = min([self._refresh_at, *self._retry_at.values()])
        if next_at == float("inf"):
            return None
        return min(MAX_WAKE_S, max(MIN_WAKE_S, next_at - time.time()))

    def send(self, frame: Frame) -> bool:
        """Send one protocol frame as it is (False when not connected)."""
        return self._send(frame)

    def _on_frame(self, frame: Frame) -> None:
        self._emit("frame", frame)
        kind = frame.get("type")
        if kind == "welcome":
            self.attempt = 0
            if self.reconnects or self.state == "reconnecting":
                self.reconnects += 1
            self._subscribe_refs.clear()
            self._retry_at.clear()  # every channel goes out again below
            self._connected.set()
            self._set_state("connected")
            for channel in list(self.channels):
                self._send_subscribe(channel)
            self._schedule_refresh()
            self._flush_locations()
            self._emit("welcome", frame)
        elif kind == "subscribed":
            state = self.channels.get(frame["channel"])
            if state is None:
                return
            had_since = state.recover and state.last_id is not None
            state.refusals = 0
            if not frame.get("recovered"):
                state.last_id = frame.get("last_event_id")
            self._emit("subscribed", frame, had_since)
        elif kind == "event":
            self._deliver(frame)
        elif kind == "batch":
            for event in frame.get("events", []):
                self._deliver(event)
        elif kind == "unsubscribed":
            if frame.get("reason"):  # the server ended it (the right is gone): never resubscribe
                self.channels.pop(frame["channel"], None)
            self._emit("unsubscribed", frame)
        elif kind == "authed":
            self._schedule_refresh()
        elif kind == "ack":
            self._unacked.pop(frame.get("ref") or "", None)
        elif kind == "error":
            subscribing = self._subscribe_refs.get(frame.get("ref") or "")
            if subscribing is None:
                self._emit("error", frame)
            else:
                self._subscribe_refused(subscribing, frame)

    def _subscribe_refused(self, channel: str, frame: Frame) -> None:
        """An error with a subscribe's ref: refused, or its replay failed after `subscribed` (the gateway
        then dropped the subscription). Either way the channel is not held; a passing error is tried
        again after a full-jitter wait, as a reconnect would be."""
        self._emit("error", {**frame, "channel": channel})  # a copy: frames may be shared (SharedDecoder)
        state = self.channels.get(channel)
        if state is None or state.ref != frame.get("ref") or frame.get("code") in FINAL_SUBSCRIBE_ERRORS:
            return
        state.refusals += 1
        self._retry_at[channel] = time.time() + reconnect_delay(state.refusals, base_s=self.base_s,
                                                                cap_s=self.cap_s)

    def _deliver(self, frame: Frame) -> None:
        state = self.channels.get(frame.get("channel", ""))
        if state is None:
            return
        event_id = frame.get("id")
        if event_id is not None and state.last_id is not None and event_id <= state.last_id:
            return  # seen already (replay overlapping live)
        if event_id is not None:
            state.last_id = event_id
        if state.handler is not None:
            state.handler(frame)

    # -- token refresh (checked between frames; the server pings every interval, so it wakes up) -------------
    def _schedule_refresh(self) -> None:
        exp = _claims(self.token or "").get("exp")
        self._refresh_at = float("inf") if self.get_token is None or not isinstance(exp, int | float) \
            else max(time.time() + 1, exp - self.refresh_before_s)

    def _refresh(self) -> None:
        assert self.get_token is not None
        self._refresh_at = float("inf")
        try:
            self.token = self.get_token()
        except Exception as exc:  # the caller's function, whatever it raises: try again shortly
            self._emit("error", {"code": "refresh_failed", "message": str(exc)})
            self._refresh_at = time.time() + 5
            return
        self._send({"type": "auth", "token": self.token, "ref": self._ref("a")})

    # -- frames and REST out ----------------------------------------------------------------------------------
    def _ref(self, prefix: str) -> str:
        self._refs += 1
        return f"{prefix}{self._refs}"

    def _send_subscribe(self, channel: str) -> None:
        state = self.channels[channel]
        frame: Frame = {"type": "subscribe", "channel": channel, "ref": self._ref("s")}
        if state.recover and state.last_id is not None:
            frame["since"] = state.last_id
        if state.ref is not None:
            self._subscribe_refs.pop(state.ref, None)
        state.ref = frame["ref"]
        self._subscribe_refs[frame["ref"]] = channel
        self._send(frame)

    def _send(self, frame: Frame) -> bool:
        conn = self._conn
        if conn is None or not self.connected:
            return False
        try:
            conn.send(json.dumps(frame).encode())
            return True
        except OSError:
            return False

    def _http(self, method: str, path: str, body: Any) -> Any:
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must be http(s): {self.api_url}")
        request = urllib.request.Request(self.api_url + path, method=method, data=json.dumps(body).encode(),  # noqa: S310
                                         headers={"Authorization": f"Bearer {self._current_token()}",
                                                  "Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - checked above
            raw = response.read()
        return json.loads(raw) if raw else None

    def _flush_locations(self) -> None:
        while self.buffer and self.connected:
            oldest = time.time() - MAX_POINT_AGE_S
            fresh = [p for p in self.buffer if _parse_time(p["recorded_at"]) > oldest]
            chunk = fresh[:BATCH_LIMIT]
            if not chunk:
                self.buffer.clear()
                return
            try:
                self._http("POST", "/api/drivers/me/locations", {"points": chunk})
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code >= 500 or exc.code in (401, 429):
                    return  # later: the next welcome flushes again
                self._emit("error", {"code": "locations_refused", "message": f"HTTP {exc.code}"})
            except OSError:
                return
            self.buffer = deque(fresh[len(chunk):], maxlen=self.buffer.maxlen)

    # -- listeners ------------------------------------------------------------------------------------------
    def _set_state(self, state: str, **detail: Any) -> None:
        self.state = state
        self._emit("state", state, detail)

    def _emit(self, kind: str, *args: Any) -> None:
        for handler in self.listeners[kind]:
            handler(*args)


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def _parse_time(value: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
