"""One client process of the fan-out harness: many gevent WebSocket clients, driven over stdin/stdout.

Started as `python -m bench.wsclients CONFIG_JSON`. Speaks our protocol (`kind: dms`) through
`DmsClient`, each run in a greenlet of its own and all sharing one `SharedDecoder`, or Socket.IO
(`kind: socketio`) as Engine.IO v4 over `dms_client.ws`, the same WebSocket layer. Both reconnect
after the contract's full-jitter wait (`dms_client.backoff`); a client that fails its first five
attempts gives up and is counted as failed. Commands on stdin, one a line: `phase NAME` (latencies
from now on count for NAME), `report` (histograms so far), and `finish {"channel": [ids...]}`
(delivery accounting against the ids written, then exit).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # first: the sockets below must be gevent's

import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402

from bench.common import Histogram, raise_nofile  # noqa: E402
from common.auth import mint_token  # noqa: E402
from dms_client import DmsClient, Frame, SharedDecoder  # noqa: E402
from dms_client.backoff import reconnect_delay  # noqa: E402
from dms_client.ws import Connection, ConnectionClosed, HandshakeRefused  # noqa: E402

CONNECT_CONCURRENCY = 64
FIRST_TRIES = 5  # failed attempts before a client that never connected gives up
TIMEOUT_S = 30.0
SOCKETIO_EVENT = '42["event",'


class Shared:
    """Per-process state: the current phase, its histogram, and the parse caches (a room's clients
    all get the same bytes, so each event is decoded once per process, not once per client)."""

    def __init__(self) -> None:
        self.phase = "warmup"
        self.hists: dict[str, Histogram] = {"warmup": Histogram()}
        self.frames = 0
        self.decode = SharedDecoder()
        self.commit_times: dict[str, float] = {}  # event `ts` -> epoch seconds
        self.socketio_events: dict[str, tuple[int | None, float]] = {}
        self.connected = 0
        self.failed = 0
        self.reconnects = 0
        self.running = True

    def commit_time(self, ts: str) -> float:
        hit = self.commit_times.get(ts)
        if hit is None:
            hit = datetime.fromisoformat(ts).timestamp()
            if len(self.commit_times) > 20_000:
                self.commit_times.clear()
            self.commit_times[ts] = hit
        return hit

    def socketio_event(self, raw: str) -> tuple[int | None, float]:
        hit = self.socketio_events.get(raw)
        if hit is None:
            body = json.loads(raw)
            hit = (body.get("id"), self.commit_time(body["ts"]))
            if len(self.socketio_events) > 20_000:
                self.socketio_events.clear()
            self.socketio_events[raw] = hit
        return hit

    def arrived(self, event_id: int | None, committed: float, now: float, ids: array[int]) -> None:
        self.hists[self.phase].add((now - committed) * 1000)
        self.frames += 1
        if event_id is not None:
            ids.append(event_id)


class Subscriber:
    """What every client of the harness has: a channel, the ids it got, and the accounting."""

    channel: str
    ids: array[int]
    connected_once: bool

    def run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def account(self, expected: list[int]) -> dict[str, int]:
        got = list(self.ids)
        seen = set(got)
        return {
            "received": len(got),
            "missing": len(set(expected) - seen),
            "duplicated": len(got) - len(seen),
            "out_of_order": sum(1 for a, b in itertools.pairwise(got) if b <= a),
        }


class DmsSubscriber(Subscriber):
    """A DmsClient on one channel; latencies and ids from every event frame as it arrives."""

    def __init__(self, shared: Shared, url: str, token: str, channel: str, gate: BoundedSemaphore) -> None:
        self.shared, self.channel = shared, channel
        self.ids = array("q")
        self.connected_once = False
        self.failures = 0
        # Plain frames, no permessage-deflate: the fan-out is compared with peers that send them plain.
        self.client = DmsClient(url, token=token, tickets=False, compression=False, timeout_s=TIMEOUT_S,
                                decode=shared.decode, dial_gate=gate)
        self.client.on("frame", self._on_frame).on("subscribed", self._on_subscribed).on("state", self._on_state)
        self.client.subscribe(channel)

    def run(self) -> None:
        self.client.run()

    def close(self) -> None:
        self.client.close()

    def _on_frame(self, frame: Frame) -> None:
        if frame.get("type") == "event":
            self.shared.arrived(frame.get("id"), self.shared.commit_time(frame["ts"]), time.time(), self.ids)

    def _on_subscribed(self, _frame: Frame, _had_since: bool) -> None:
        if self.connected_once:
            self.shared.reconnects += 1
        else:
            self.connected_once = True
            self.shared.connected += 1

    def _on_state(self, state: str, detail: dict[str, Any]) -> None:
        if state == "reconnecting" and detail and not self.connected_once:
            self.failures += 1
            if self.failures >= FIRST_TRIES:
                self.shared.failed += 1
                self.client.close()


class SocketIoSubscriber(Subscriber):
    """Socket.IO over a raw Engine.IO v4 WebSocket: open, join the room, then `42["event",{...}]` frames."""

    def __init__(self, shared: Shared, url: str, token: str, channel: str, gate: BoundedSemaphore) -> None:
        self.shared, self.channel, self.gate = shared, channel, gate
        self.url = f"{url}?EIO=4&transport=websocket&token={token}"
        self.ids = array("q")
        self.connected_once = False
        self.conn: Connection | None = None

    def _connect(self) -> Connection:
        conn = Connection.open(self.url, timeout_s=TIMEOUT_S, wake_s=TIMEOUT_S)
        opened = conn.recv()
        if not opened.startswith("0"):
            raise ValueError(f"unexpected engine.io open: {opened[:80]}")
        conn.send(b"40")
        self._until(conn, "40")
        conn.send(('420["subscribe",' + json.dumps({"channel": self.channel}) + "]").encode())
        self._until(conn, "430")
        conn.settimeout(None)
        return conn

    @staticmethod
    def _until(conn: Connection, prefix: str) -> None:
        while not (reply := conn.recv()).startswith(prefix):
            if reply == "2":  # Engine.IO ping
                conn.send(b"3")

    def run(self) -> None:
        failures = 0
        while self.shared.running:
            try:
                with self.gate:
                    self.conn = self._connect()
                if self.connected_once:
                    self.shared.reconnects += 1
                else:
                    self.connected_once = True
                    self.shared.connected += 1
                failures = 0
                self._receive(self.conn)
            except (OSError, ConnectionClosed, HandshakeRefused, ValueError) as exc:
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                if not self.connected_once and failures + 1 >= FIRST_TRIES:
                    self.shared.failed += 1
                    return
                retry_after = exc.retry_after_s if isinstance(exc, HandshakeRefused) else None
                gevent.sleep(reconnect_delay(failures, retry_after_s=retry_after))
                failures += 1

    def _receive(self, conn: Connection) -> None:
        shared, ids, skip = self.shared, self.ids, len(SOCKETIO_EVENT)
        while shared.running:
            raw = conn.recv()
            now = time.time()
            if raw == "2":
                conn.send(b"3")
            elif raw.startswith(SOCKETIO_EVENT):
                event_id, committed = shared.socketio_event(raw[skip:-1])
                shared.arrived(event_id, committed, now, ids)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def main() -> int:
    config = json.loads(sys.argv[1])
    # Thousands of sockets in one process: the default soft limit (often 1024) is not enough.
    if raise_nofile() < config["count"] + 64:
        print(f"open-files limit too low for {config['count']} clients", file=sys.stderr, flush=True)
    shared = Shared()
    gate = BoundedSemaphore(config.get("connect_concurrency", CONNECT_CONCURRENCY))
    kind = DmsSubscriber if config["kind"] == "dms" else SocketIoSubscriber
    clients: list[Subscriber] = [
        kind(shared, config["url"], mint_token(config["secret"], role="admin", sub=None, ttl_s=3 * 3600),
             config["channels"][(config["offset"] + n) % len(config["channels"])], gate)
        for n in range(config["count"])
    ]
    greenlets = [gevent.spawn(client.run) for client in clients]
    deadline = time.monotonic() + config.get("connect_timeout_s", 120)
    while shared.connected + shared.failed < len(clients) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    # Clients still dialling at the deadline give up: a late connect would join in the middle of a
    # measured step, and the ready count must be the count that is measured.
    for client, greenlet in zip(clients, greenlets, strict=True):
        if not client.connected_once:
            client.close()
            greenlet.kill(block=False)
    out = sys.stdout
    rooms: dict[str, int] = {}
    for client in clients:
        if client.connected_once:
            rooms[client.channel] = rooms.get(client.channel, 0) + 1
    out.write(json.dumps({"ready": shared.connected, "failed": shared.failed, "rooms": rooms}) + "\n")
    out.flush()
    stdin = FileObjectPosix(sys.stdin.fileno(), "r", close=False)
    for line in stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "phase":
            shared.hists.setdefault(arg, Histogram())
            shared.phase = arg
        elif command == "report":
            out.write(json.dumps({"frames": shared.frames, "reconnects": shared.reconnects,
                                  "hists": {k: v.to_json() for k, v in shared.hists.items()}}) + "\n")
            out.flush()
        elif command == "finish":
            expected: dict[str, list[int]] = json.loads(arg)
            totals = {"received": 0, "missing": 0, "duplicated": 0, "out_of_order": 0, "never_connected": 0}
            for client in clients:
                if not client.connected_once:  # nothing was promised to a client the server never took
                    totals["never_connected"] += 1
                    continue
                for key, value in client.account(expected.get(client.channel, [])).items():
                    totals[key] += value
            totals["reconnects"] = shared.reconnects
            out.write(json.dumps({"accounting": totals}) + "\n")
            out.flush()
            break
    shared.running = False
    for client in clients:
        client.close()
    gevent.killall(greenlets, timeout=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
