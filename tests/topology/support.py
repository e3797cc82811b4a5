"""Helpers of the topology tests: fast limits, consecutive free ports, a client that follows a channel."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import websocket

from devstack import embedded
from tests.helpers import seconds

FAST_LIMITS = {"RATE_LIMIT_IP": "1000000/minute", "RATE_LIMIT_USER": "1000000/hour"}


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (dms up numbers its processes that way), below
    the ephemeral range so that a process dms up restarts can bind its port again."""
    return embedded.stable_free_port(count=count)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@dataclass
class Follower:
    """A WebSocket client in a thread that keeps one channel: reconnects with backoff and `since`.

    It records every event it handles and every (re)connection, as a real client would.
    """

    url: str
    token: str
    channel: str
    events: list[dict[str, Any]] = field(default_factory=list)
    connects: int = 0
    errors: list[str] = field(default_factory=list)
    last_id: int | None = None
    subscribed: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ws: websocket.WebSocket | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._session()
                backoff = 0.05
            except (OSError, websocket.WebSocketException, ValueError) as exc:
                self.errors.append(type(exc).__name__)
            if not self._stop.is_set():
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def _session(self) -> None:
        ws = websocket.create_connection(f"{self.url}?token={self.token}", timeout=seconds(5))
        self._ws = ws
        try:
            self.connects += 1
            frame: dict[str, Any] = {"type": "subscribe", "channel": self.channel, "ref": "s"}
            if self.last_id is not None:
                frame["since"] = self.last_id
            ws.send(json.dumps(frame))
            ws.settimeout(0.5)
            while not self._stop.is_set():
                try:
                    opcode, raw = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return
                if opcode != websocket.ABNF.OPCODE_TEXT:
                    continue
                message = json.loads(raw)
                if message.get("type") == "subscribed":
                    if self.last_id is None:
                        self.last_id = message.get("last_event_id") or 0
                    self.subscribed.set()
                elif message.get("type") == "event" and message.get("channel") == self.channel:
                    if message["id"] is not None and message["id"] > (self.last_id or 0):
                        self.last_id = message["id"]
                        self.events.append(message)
        finally:
            ws.shutdown()

    def ids(self) -> list[int]:
        return [event["id"] for event in self.events]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
