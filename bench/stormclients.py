"""One client process of the storm benchmark: thousands of raw-socket WebSocket subscribers under gevent.

Started as `python -m bench.stormclients CONFIG_JSON`. Every client keeps one channel the way the
contract's reconnecting client does (section 6): after a drop it waits a random time in
[0, min(cap, base * 2^attempt)] (full jitter), at least `Retry-After` when a handshake was refused
with one, reconnects and resubscribes with `since` = the last id it handled. Raw sockets and a
minimal RFC 6455 client (no compression offered, so server frames are plain text) keep a process
at tens of thousands of frames per second. Once a second it prints a status line (JSON) on stdout;
on stdin, `finish {"channel": [ids...]}` makes it account for every event, print the result and exit.
In `handshake` mode a client only opens its connection (101 and welcome) and holds it.
"""

from gevent import monkey

monkey.patch_all()  # first: the sockets below must be gevent's

import base64  # noqa: E402
import errno  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402

from bench.common import raise_nofile  # noqa: E402
from common.auth import mint_token  # noqa: E402

HANDSHAKE_TIMEOUT_S = 20.0
SUBSCRIBE_TIMEOUT_S = 30.0
EVENT_PREFIX = b'{"type":"event"'


class Refused(Exception):
    """A handshake or subscribe that did not go through; `kind` is what the report counts."""

    def __init__(self, kind: str, retry_after: float = 0.0) -> None:
        super().__init__(kind)
        self.kind, self.retry_after = kind, retry_after


class Dropped(Exception):
    """An established connection ended (close frame, EOF or reset)."""


class Shared:
    """Per-process counters and the parse cache: every subscriber of a channel gets the same bytes."""

    def __init__(self) -> None:
        self.running = True
        self.subscribed = 0  # clients subscribed right now
        self.connected = 0  # clients with an open WebSocket right now
        self.joined = 0  # clients subscribed at least once
        self.drops = 0
        self.refusals: dict[str, int] = {}
        self.recoveries: list[float] = []  # seconds from a drop to subscribed again
        self.handshakes = 0  # 101s received (handshake mode: the measure)
        self.frames = 0
        self.ids: dict[bytes, int | None] = {}

    def refused(self, kind: str) -> None:
        self.refusals[kind] = self.refusals.get(kind, 0) + 1

    def event_id(self, payload: bytes) -> int | None:
        hit = self.ids.get(payload, -1)
        if hit == -1:
            hit = json.loads(payload).get("id")
            if len(self.ids) > 50_000:
                self.ids.clear()
            self.ids[payload] = hit
        return hit


def _mask(payload: bytes) -> bytes:
    """A masked client frame (FIN + opcode text) as RFC 6455 requires of clients."""
    key = os.urandom(4)
    length = len(payload)
    header = bytes([0x81, 0x80 | length]) if length < 126 else bytes([0x81, 0xFE]) + struct.pack(">H", length)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def _control(opcode: int, payload: bytes = b"") -> bytes:
    key = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Conn:
    """One WebSocket over a raw socket: handshake, then frames read from a growing buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Dropped("eof")
        self.buf += chunk

    def handshake(self, host: str, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            try:
                self._fill()
            except Dropped:
                raise Refused("closed_before_answer") from None
        end = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        status = head[0].split(" ")[1] if len(head[0].split(" ")) > 1 else "?"
        if status != "101":
            retry_after = 0.0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "retry-after" and value.strip().isdigit():
                    retry_after = float(value.strip())
            raise Refused(f"http_{status}" + ("_retry_after" if retry_after else ""), retry_after)

    def frame(self) -> tuple[int, bytes]:
        """The next complete frame (opcode, payload); server frames are never masked."""
        buf = self.buf
        while True:
            if len(buf) >= 2:
                length = buf[1] & 0x7F
                start = 2
                if length == 126 and len(buf) >= 4:
                    length, start = struct.unpack_from(">H", buf, 2)[0], 4
                elif length == 127 and len(buf) >= 10:
                    length, start = struct.unpack_from(">Q", buf, 2)[0], 10
                if length < 126 or start > 2:
                    if len(buf) >= start + length:
                        opcode = buf[0] & 0x0F
                        payload = bytes(buf[start:start + length])
                        del buf[:start + length]
                        return opcode, payload
            self._fill()

    def send_json(self, body: dict[str, Any]) -> None:
        self.sock.sendall(_mask(json.dumps(body, separators=(",", ":")).encode()))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Client:
    def __init__(self, shared: Shared, config: dict[str, Any], index: int) -> None:
        self.shared = shared
        self.host, self.port = config["host"], config["port"]
        self.path = f"/ws?token={mint_token(config['secret'], role='admin', sub=None, ttl_s=3 * 3600)}"
        channels = config["channels"]
        self.channel = channels[(config["offset"] + index) % len(channels)]
        self.base_s, self.cap_s = config["base_s"], config["cap_s"]
        self.mode = config["mode"]
        self.ids = array("q")
        self.last_id: int | None = None
        self.first_id: int | None = None  # last_event_id at the first subscribe: later ids are promised
        self.dropped_at: float | None = None
        self.joined = False
        self.resubscribing = False
        self.holes: dict[str, Any] | None = None
        self.conn: Conn | None = None

    def _backoff(self, attempt: int, retry_after: float) -> None:
        wait = random.uniform(0, min(self.cap_s, self.base_s * 2 ** attempt))
        gevent.sleep(max(wait, retry_after))

    def _open(self) -> Conn:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            raise Refused("connect_timeout") from None
        except OSError as exc:
            raise Refused("connect_" + errno.errorcode.get(exc.errno or 0, "error").lower()) from None
        conn = Conn(sock)
        try:
            conn.handshake(f"{self.host}:{self.port}", self.path)
            self.shared.handshakes += 1
            opcode, payload = conn.frame()  # welcome
            if opcode != 1 or b'"welcome"' not in payload:
                raise Refused("no_welcome")
        except TimeoutError:
            conn.close()
            raise Refused("handshake_timeout") from None
        except (Dropped, ConnectionError):
            conn.close()
            raise Refused("reset_during_handshake") from None
        except Refused:
            conn.close()
            raise
        return conn

    def _subscribe(self, conn: Conn) -> None:
        """Subscribe with `since`. An error frame leaves the connection open (contract section 4):
        the refusal is counted and the subscribe sent again after a full-jitter wait."""
        tries = 0
        while not self._subscribe_once(conn):
            tries += 1
            self._backoff(tries, 0.0)

    def _subscribe_guarded(self, conn: Conn) -> None:
        """The first subscribe, inside the connect gate; on failure the connection is closed."""
        try:
            self._subscribe(conn)
        except BaseException:
            self.shared.connected -= 1
            conn.close()
            self.conn = None
            raise

    def _subscribe_once(self, conn: Conn) -> bool:
        frame: dict[str, Any] = {"type": "subscribe", "channel": self.channel, "ref": "s"}
        if self.last_id is not None:
            frame["since"] = self.last_id
        conn.send_json(frame)
        conn.sock.settimeout(SUBSCRIBE_TIMEOUT_S)
        while True:
            try:
                opcode, payload = conn.frame()
            except TimeoutError:
                raise Refused("subscribe_timeout") from None
            if opcode == 8:
                raise Dropped("close")
            if opcode == 9:
                conn.sock.sendall(_control(0xA, payload))
                continue
            if payload.startswith(EVENT_PREFIX):
                # Replayed (or live) events after `subscribed`; before it only when resubscribing.
                self._event(payload)
                continue
            reply = json.loads(payload)
            if reply.get("ref") != "s":
                continue
            if reply.get("type") != "subscribed":
                self.shared.refused("subscribe_" + str(reply.get("code", reply.get("type"))))
                return False
            if self.first_id is None:
                self.first_id = reply.get("last_event_id") or 0
                self.last_id = self.first_id
            return True

    def _event(self, payload: bytes) -> None:
        event_id = self.shared.event_id(payload)
        self.shared.frames += 1
        if event_id is not None:
            self.ids.append(event_id)
            if self.last_id is None or event_id > self.last_id:
                self.last_id = event_id

    def run(self, gate: BoundedSemaphore) -> None:
        shared = self.shared
        attempt = 0  # failed tries since the last success: the backoff's exponent
        while shared.running:
            retry_after = 0.0
            try:
                # The first join holds its place in the gate until subscribed (a ramp, not the
                # measured part); a reconnect after a drop holds it for the handshake only.
                with gate:
                    conn = self._open()
                    self.conn = conn
                    shared.connected += 1
                    if self.mode == "handshake":
                        return  # held open until the process ends
                    if not self.joined:
                        self._subscribe_guarded(conn)
                try:
                    if self.joined:
                        self._subscribe(conn)
                    attempt = 0
                    if not self.joined:
                        self.joined = True
                        shared.joined += 1
                    elif self.dropped_at is not None:
                        shared.recoveries.append(time.monotonic() - self.dropped_at)
                        self.dropped_at = None
                    shared.subscribed += 1
                    try:
                        self._receive(conn)
                    finally:
                        shared.subscribed -= 1
                finally:
                    shared.connected -= 1
                    conn.close()
                    self.conn = None
            except Refused as exc:
                shared.refused(exc.kind)
                retry_after = exc.retry_after
                attempt += 1
            except (Dropped, OSError):
                if self.joined and self.dropped_at is None:
                    self.dropped_at = time.monotonic()
                    shared.drops += 1
                else:
                    attempt += 1
            if shared.running:
                # After a drop the first wait is in [0, base]; every failure doubles the ceiling.
                self._backoff(attempt, retry_after)

    def _receive(self, conn: Conn) -> None:
        conn.sock.settimeout(None)
        shared = self.shared
        while shared.running:
            opcode, payload = conn.frame()
            if opcode == 1:
                if payload.startswith(EVENT_PREFIX):
                    self._event(payload)
                elif b'"ref":"s"' in payload and payload.startswith(b'{"type":"error"'):
                    # The replay after `subscribed` failed and the gateway dropped the subscription:
                    # subscribe again with `since` = the last id handled.
                    self.shared.refused("replay_" + str(json.loads(payload).get("code")))
                    self.resubscribing = True  # not subscribed until the next `subscribed`
                    self._backoff(1, 0.0)
                    self._subscribe(conn)
                    self.resubscribing = False
                    conn.sock.settimeout(None)
            elif opcode == 9:
                conn.sock.sendall(_control(0xA, payload))
            elif opcode == 8:
                raise Dropped("close")

    def account(self, expected: list[int]) -> dict[str, int]:
        got = list(self.ids)
        seen = set(got)
        promised = [i for i in expected if i > (self.first_id or 0)]
        missing = [i for i in promised if i not in seen]
        if missing:
            # Where the holes are (in the middle of what it got, or only after its last id) says
            # whether events were lost or were still on their way when the window closed.
            self.holes = {"first_missing": missing[0], "last_missing": missing[-1], "count": len(missing),
                          "last_received": self.last_id, "promised_last": promised[-1],
                          "missing_before_last_received": sum(1 for i in missing if self.last_id and i < self.last_id)}
        return {"missing": len(missing), "duplicated": len(got) - len(seen),
                "out_of_order": sum(1 for a, b in itertools.pairwise(got) if b <= a),
                "received": len(got)}


def main() -> int:
    config = json.loads(sys.argv[1])
    if raise_nofile(config["count"] + 256) < config["count"] + 64:
        print(f"open-files limit too low for {config['count']} clients", file=sys.stderr, flush=True)
    shared = Shared()
    clients = [Client(shared, config, n) for n in range(config["count"])]
    gate = BoundedSemaphore(config["concurrency"])
    greenlets = []
    for client in clients:
        greenlets.append(gevent.spawn(client.run, gate))
    out = sys.stdout

    def status() -> None:
        while shared.running:
            out.write(json.dumps({"status": {
                "at": time.time(), "connected": shared.connected, "subscribed": shared.subscribed,
                "joined": shared.joined, "drops": shared.drops, "back": len(shared.recoveries),
                "handshakes": shared.handshakes, "frames": shared.frames, "refusals": shared.refusals}}) + "\n")
            out.flush()
            gevent.sleep(1.0)

    reporter = gevent.spawn(status)
    stdin = FileObjectPosix(sys.stdin.fileno(), "r", close=False)
    for line in stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "finish":
            expected: dict[str, list[int]] = json.loads(arg)
            totals = {"missing": 0, "duplicated": 0, "out_of_order": 0, "received": 0, "subscribers_missing": 0,
                      "subscribers_duplicated": 0, "never_joined": 0, "never_back": 0,
                      "never_joined_missing": 0, "never_back_missing": 0}
            for client in clients:
                if not client.joined:
                    totals["never_joined"] += 1
                    totals["never_joined_missing"] += len(expected.get(client.channel, []))
                    continue
                result = client.account(expected.get(client.channel, []))
                if client.dropped_at is not None or client.resubscribing:
                    # Not subscribed at the end: what it missed is counted apart from losses.
                    totals["never_back"] += 1
                    totals["never_back_missing"] += result.pop("missing")
                    result["missing"] = 0
                for key, value in result.items():
                    totals[key] += value
                totals["subscribers_missing"] += result["missing"] > 0
                totals["subscribers_duplicated"] += result["duplicated"] > 0
            holes = [client.holes for client in clients if client.holes and not client.dropped_at
                     and not client.resubscribing][:5]
            out.write(json.dumps({"accounting": totals, "recoveries": [round(r, 3) for r in shared.recoveries],
                                  "holes": holes,
                                  "refusals": shared.refusals}) + "\n")
            out.flush()
            break
        if command == "stop":
            break
    shared.running = False
    reporter.kill()
    for client in clients:
        if client.conn is not None:
            client.conn.close()
    gevent.killall(greenlets, timeout=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
