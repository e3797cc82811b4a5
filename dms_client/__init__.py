"""dms_client: the Python client of the dms WebSocket protocol, for plain threads and for gevent.

    client = DmsClient("ws://127.0.0.1:8081/ws", token=token, api_url="http://127.0.0.1:8000")
    client.subscribe("restaurant:RID", lambda event: print(event["event"], event["data"]))
    client.start()

The same behaviour as dms-client.js: last id per channel, full-jitter reconnects (base 0.5 s, cap 15 s)
that wait at least Retry-After, resubscribe with `since`, connect tickets (`?token=` only when the API
has no ticket endpoint), `auth` refresh through `get_token`, `batch` frames, `unsubscribed` with a reason,
and a bounded offline buffer for `send_location` flushed in order over REST. One reader per client:
a thread, or a greenlet when gevent has patched threading, so 20,000 clients need no 20,000 threads.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from dms_client._ws import Connection, ConnectionClosed, HandshakeRefused

__all__ = ["DmsClient", "Frame", "HandshakeRefused"]

Frame = dict[str, Any]
Handler = Callable[..., None]
BATCH_LIMIT = 500  # points per REST request (the endpoint's maximum)
MAX_POINT_AGE_S = 23 * 3600


@dataclass
class _Channel:
    handler: Callable[[Frame], None] | None
    recover: bool
    last_id: int | None = None


def _claims(token: str) -> dict[str, Any]:
    import base64

    try:
        part = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
    except (IndexError, ValueError):
        return {}


class DmsClient:
    """One reconnecting WebSocket connection; handlers run on its reader (thread or greenlet)."""

    def __init__(self, url: str, *, token: str | None = None, get_token: Callable[[], str] | None = None,
                 api_url: str | None = None, batch_ms: int = 0, base_s: float = 0.5, cap_s: float = 15.0,
                 refresh_before_s: float = 60.0, buffer_limit: int = 5000, origin: str | None = None,
                 timeout_s: float = 10.0, tickets: bool = True, compression: bool = True) -> None:
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
        self.channels: dict[str, _Channel] = {}
        # "frame": every frame as it arrives, before the client's own handling (load tests count duplicates).
        self.listeners: dict[str, list[Handler]] = {k: [] for k in ("state", "error", "subscribed", "unsubscribed",
                                                                     "welcome", "frame")}
        self.buffer: deque[dict[str, Any]] = deque(maxlen=buffer_limit)
        self.state = "idle"
        self.attempt = 0
        self.reconnects = 0
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._connected = threading.Event()
        self._refs = 0
        self._refresh_at = float("inf")
        self._reader: threading.Thread | None = None
        self._unacked: dict[str, dict[str, Any]] = {}

    # -- public API ----------------------------------------------------------------------------------------
    def start(self) -> DmsClient:
        self._reader = threading.Thread(target=self._run, name="dms-client", daemon=True)
        self._reader.start()
        return self

    def subscribe(self, channel: str, handler: Callable[[Frame], None] | None = None, *,
                  recover: bool = True) -> None:
        known = self.channels.get(channel)
        self.channels[channel] = _Channel(handler, recover, known.last_id if known else None)
        if known is None:
            self._send_subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
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
    def _run(self) -> None:
        while not self._closed.is_set():
            retry_after = 0.0
            try:
                self._set_state("reconnecting" if self.attempt else "connecting")
                # Only a client that refreshes its token needs a timer; the others block in recv.
                self._conn = Connection.open(self._handshake_url(), timeout_s=self.timeout_s, origin=self.origin,
                                             wake_s=1.0 if self.get_token is not None else None,
                                             compress=self.compression)
                self._read(self._conn)
            except HandshakeRefused as exc:
                retry_after = exc.retry_after_s or 0.0
                if exc.status == 401 and self.get_token is not None:
                    self.token = None
                self._emit("error", {"code": "handshake_refused", "message": str(exc), "status": exc.status})
            except ConnectionClosed as exc:
                if exc.code == 4001:
                    if self.get_token is None:
                        self._closed.set()
                        self._set_state("closed", reason="the token expired")
                        break
                    self.token = None
            except (OSError, ValueError) as exc:
                self._emit("error", {"code": "connect_failed", "message": str(exc)})
            finally:
                self._connected.clear()
                if self._unacked:  # sent but not acknowledged: they go first, in the order they were taken
                    self.buffer.extendleft(reversed(list(self._unacked.values())))
                    self._unacked.clear()
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
            if self._closed.is_set():
                break
            delay = max(random.uniform(0, min(self.cap_s, self.base_s * 2 ** self.attempt)), retry_after)
            self.attempt += 1
            self._set_state("reconnecting", delay_s=delay, attempt=self.attempt, retry_after_s=retry_after)
            self._closed.wait(delay)

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
            if time.time() >= self._refresh_at:
                self._refresh()
            try:
                text = conn.recv()
            except TimeoutError:
                continue
            try:
                frame = json.loads(text)
            except ValueError:
                continue
            self._on_frame(frame)

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
            self._emit("error", frame)

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
        self._send(frame)

    def _send(self, frame: Frame) -> bool:
        conn = self._conn
        if conn is None or not self.connected:
            return False
        try:
            with self._lock:
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
