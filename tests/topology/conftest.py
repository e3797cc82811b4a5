"""Topology fixtures: API processes, nginx in front of them, and a client that follows a channel."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websocket

from devstack import embedded, nginx
from tests.conftest import Infra
from tests.helpers import Process, seconds

FAST_LIMITS = {"RATE_LIMIT_IP": "1000000/minute", "RATE_LIMIT_USER": "1000000/hour"}


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (dms up numbers its processes that way), below
    the ephemeral range so that a process dms up restarts can bind its port again."""
    return embedded.stable_free_port(count=count)


@pytest.fixture
def start_api(infra: Infra, tmp_path: Path) -> Iterator[Callable[..., tuple[Process, str]]]:
    """Start `python -m api` processes with their own settings; all are stopped after the test."""
    started: list[Process] = []

    def start(*, name: str = "api", **settings: str) -> tuple[Process, str]:
        port = embedded.free_port()
        env = infra.env(API_PORT=str(port), TRUSTED_PROXIES="127.0.0.1", **{**FAST_LIMITS, **settings})
        process = Process("api", env, tmp_path / f"{name}-{port}.log")
        started.append(process)
        process.wait_http_ok(f"http://127.0.0.1:{port}/ready")
        return process, f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.stop(timeout_s=15)


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[..., tuple[embedded.ServerProcess, str]]]:
    """nginx in a prefix under the test's temporary directory, on a free port."""
    started: list[embedded.ServerProcess] = []

    def start(api_ports: list[int], gateway_ports: list[int]) -> tuple[embedded.ServerProcess, str]:
        site = nginx.Site(api_ports=tuple(api_ports), gateway_ports=tuple(gateway_ports),
                          listen_port=embedded.free_port())
        server = nginx.start(site, tmp_path / "nginx")
        started.append(server)
        return server, f"127.0.0.1:{site.listen_port}"

    yield start
    for server in started:
        server.stop(sig=signal.SIGTERM, timeout_s=10)


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
