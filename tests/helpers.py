"""Test helpers: a scaled time unit, deadline waits, a real WebSocket client, gateway processes."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import websocket

# Every deadline in the tests is a multiple of this; raise DMS_TEST_TIME_SCALE on a slow machine.
SCALE = float(os.environ.get("DMS_TEST_TIME_SCALE", "1"))
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def seconds(value: float) -> float:
    return value * SCALE


def wait_for(condition: Callable[[], T], *, timeout_s: float = 10.0, interval_s: float = 0.02,
             message: str = "condition") -> T:
    """Poll until `condition()` is truthy; fail with `message` at the (scaled) deadline."""
    deadline = time.monotonic() + seconds(timeout_s)
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {seconds(timeout_s):.1f}s waiting for {message} (last: {last!r})")


# Every frame any WsClient has read, for the check against /api/asyncapi.json (tests/gateway/conftest.py).
RECEIVED_FRAMES: list[dict[str, Any]] = []


@dataclass
class WsClient:
    """A real WebSocket client that keeps frames it has read but not yet asked for."""

    ws: websocket.WebSocket
    seen: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def connect(cls, url: str, *, token: str | None = None, headers: list[str] | None = None,
                origin: str | None = None, timeout_s: float = 10.0) -> WsClient:
        full = f"{url}?token={token}" if token else url
        options = {"origin": origin} if origin else {}
        ws = websocket.create_connection(full, timeout=seconds(timeout_s), header=headers or [], **options)
        return cls(ws)

    def send(self, frame: dict[str, Any] | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def recv(self, *, timeout_s: float = 10.0) -> dict[str, Any]:
        self.ws.settimeout(seconds(timeout_s))
        opcode, raw = self.ws.recv_data()  # answers pings itself; returns data frames only
        while opcode != websocket.ABNF.OPCODE_TEXT:
            opcode, raw = self.ws.recv_data()
        frame = json.loads(raw)
        self.seen.append(frame)
        RECEIVED_FRAMES.append(frame)
        return frame  # type: ignore[no-any-return]

    def recv_until(self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float = 10.0
                   ) -> dict[str, Any]:
        deadline = time.monotonic() + seconds(timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching frame within {seconds(timeout_s):.1f}s; saw {self.seen[-5:]}")
            try:
                frame = self.recv(timeout_s=remaining / SCALE)
            except websocket.WebSocketTimeoutException:
                continue
            if predicate(frame):
                return frame

    def request(self, frame: dict[str, Any], *, timeout_s: float = 10.0) -> dict[str, Any]:
        """Send a frame with a fresh ref and return the reply carrying that ref."""
        ref = frame.setdefault("ref", f"r{time.monotonic_ns()}")
        self.send(frame)
        return self.recv_until(lambda f: f.get("ref") == ref and f.get("type") != "event", timeout_s=timeout_s)

    def subscribe(self, channel: str, *, since: int | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if since is not None:
            frame["since"] = since
        return self.request(frame)

    def events(self, count: int, *, channel: str | None = None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(got) < count:
            got.append(self.recv_until(
                lambda f: f.get("type") == "event" and (channel is None or f.get("channel") == channel),
                timeout_s=timeout_s,
            ))
        return got

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except (OSError, websocket.WebSocketException):
            pass
        self.ws.shutdown()  # close() skips the socket once the server has closed the connection


def http_json(method: str, url: str, body: Any = None, *, token: str | None = None,
              headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """A real HTTP call to a running process (for tests that cross process boundaries)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=seconds(timeout_s)) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if raw else None


class Process:
    """A `python -m MODULE` child with its own environment and log file, stopped by SIGTERM."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path, *, python: str = sys.executable,
                 cwd: Path = ROOT) -> None:
        self.module = module
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([python, "-m", module], env={**os.environ, **env},
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd)

    def wait_http_ok(self, url: str, *, timeout_s: float = 30.0) -> None:
        def ok() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited ({self.proc.returncode}): {self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(ok, timeout_s=timeout_s, interval_s=0.05, message=f"{self.module} at {url}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, *, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=seconds(timeout_s))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def split_server_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole (opcode, payload) server frames at the head of `buf`, and the rest to read more onto."""
    frames: list[tuple[int, bytes]] = []
    while len(buf) >= 2:
        n, offset = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, offset = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, offset = struct.unpack_from("!Q", buf, 2)[0], 10
        if len(buf) < offset + n:
            break
        assert buf[1] & 0x80 == 0, "server frames are never masked"
        frames.append((buf[0] & 0x0F, buf[offset:offset + n]))
        buf = buf[offset + n:]
    return frames, buf
