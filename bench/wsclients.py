"""One client process of the fan-out harness: many gevent WebSocket clients, driven over stdin/stdout.

Started as `python -m bench.wsclients CONFIG_JSON`. Speaks our protocol (`kind: dms`) or
Socket.IO over a raw Engine.IO v4 WebSocket (`kind: socketio`). Commands on stdin, one a line:
`phase NAME` (latencies from now on count for NAME), `report` (histograms so far), and
`finish {"channel": [ids...]}` (delivery accounting against the ids written, then exit).
"""

from gevent import monkey

monkey.patch_all()  # first: websocket-client must see gevent's sockets

import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import websocket  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from gevent.lock import BoundedSemaphore  # noqa: E402

from bench.common import Histogram, raise_nofile  # noqa: E402
from common.auth import mint_token  # noqa: E402

CONNECT_CONCURRENCY = 64


class Shared:
    """Per-process state: the current phase, its histogram, and a parse cache keyed by frame text."""

    def __init__(self) -> None:
        self.phase = "warmup"
        self.hists: dict[str, Histogram] = {"warmup": Histogram()}
        self.frames = 0
        self.parsed: dict[str, tuple[int | None, float]] = {}
        self.connected = 0
        self.failed = 0
        self.reconnects = 0
        self.running = True

    def parse(self, raw: str) -> tuple[int | None, float]:
        """Everyone in a room gets the same text: decode it once per process, not once per client."""
        hit = self.parsed.get(raw)
        if hit is None:
            body = json.loads(raw)
            hit = (body.get("id"), datetime.fromisoformat(body["ts"]).timestamp())
            if len(self.parsed) > 20_000:
                self.parsed.clear()
            self.parsed[raw] = hit
        return hit


class Client:
    def __init__(self, shared: Shared, kind: str, url: str, token: str, channel: str) -> None:
        self.shared, self.kind, self.url, self.token, self.channel = shared, kind, url, token, channel
        self.ids = array("q")
        self.last_id: int | None = None
        self.connected_once = False
        self.ws: websocket.WebSocket | None = None

    # -- connecting ----------------------------------------------------------------------------
    def connect(self) -> None:
        if self.kind == "dms":
            ws = websocket.create_connection(f"{self.url}?token={self.token}", timeout=30,
                                             skip_utf8_validation=True)
            json.loads(ws.recv())  # welcome
            frame: dict[str, Any] = {"type": "subscribe", "channel": self.channel, "ref": "s"}
            if self.last_id is not None:
                frame["since"] = self.last_id
            ws.send(json.dumps(frame))
            while True:
                reply = json.loads(ws.recv())
                if reply.get("ref") == "s":
                    if reply.get("type") != "subscribed":
                        raise RuntimeError(f"subscribe refused: {reply}")
                    break
        else:
            ws = websocket.create_connection(f"{self.url}?EIO=4&transport=websocket&token={self.token}",
                                             timeout=30, skip_utf8_validation=True)
            opened = ws.recv()
            if not opened.startswith("0"):
                raise RuntimeError(f"unexpected engine.io open: {opened[:80]}")
            ws.send("40")
            while not (reply := ws.recv()).startswith("40"):
                if reply == "2":
                    ws.send("3")
            ws.send('420["subscribe",' + json.dumps({"channel": self.channel}) + "]")
            while not (reply := ws.recv()).startswith("430"):
                if reply == "2":
                    ws.send("3")
        ws.settimeout(None)
        self.ws = ws

    # -- receiving -----------------------------------------------------------------------------
    def run(self, gate: BoundedSemaphore) -> None:
        backoff = 0.2
        first = True
        while self.shared.running:
            try:
                with gate:
                    self.connect()
                if first:
                    self.shared.connected += 1
                    self.connected_once = True
                    first = False
                else:
                    self.shared.reconnects += 1
                backoff = 0.2
                self.receive()
            except (OSError, websocket.WebSocketException, RuntimeError, ValueError):
                if first and backoff > 3:
                    self.shared.failed += 1
                    return
                # Back off with jitter so a restarted server is not hit by everyone at once.
                gevent.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 5.0)

    def receive(self) -> None:
        assert self.ws is not None
        ws, shared, ids = self.ws, self.shared, self.ids
        prefix = '42["event",' if self.kind == "socketio" else None
        while shared.running:
            raw = ws.recv()
            now = time.time()
            if not raw:
                raise websocket.WebSocketConnectionClosedException("closed")
            if prefix is not None:
                if raw == "2":
                    ws.send("3")
                    continue
                if not raw.startswith(prefix):
                    continue
                raw = raw[len(prefix):-1]
            elif not raw.startswith('{"type":"event"'):
                continue
            event_id, ts = shared.parse(raw)
            shared.hists[shared.phase].add((now - ts) * 1000)
            shared.frames += 1
            if event_id is not None:
                ids.append(event_id)
                self.last_id = event_id

    def account(self, expected: list[int]) -> dict[str, int]:
        got = list(self.ids)
        seen = set(got)
        return {
            "received": len(got),
            "missing": len(set(expected) - seen),
            "duplicated": len(got) - len(seen),
            "out_of_order": sum(1 for a, b in itertools.pairwise(got) if b <= a),
        }


def main() -> int:
    config = json.loads(sys.argv[1])
    # Thousands of sockets in one process: the default soft limit (often 1024) is not enough.
    if raise_nofile() < config["count"] + 64:
        print(f"open-files limit too low for {config['count']} clients", file=sys.stderr, flush=True)
    shared = Shared()
    clients = [
        Client(shared, config["kind"], config["url"],
               mint_token(config["secret"], role="admin", sub=None, ttl_s=3 * 3600),
               config["channels"][(config["offset"] + n) % len(config["channels"])])
        for n in range(config["count"])
    ]
    gate = BoundedSemaphore(config.get("connect_concurrency", CONNECT_CONCURRENCY))
    greenlets = [gevent.spawn(client.run, gate) for client in clients]
    deadline = time.monotonic() + config.get("connect_timeout_s", 120)
    while shared.connected + shared.failed < len(clients) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    # Clients still dialling at the deadline give up: a late connect would join in the middle of a
    # measured step, and the ready count must be the count that is measured.
    gevent.killall([g for c, g in zip(clients, greenlets, strict=True) if not c.connected_once], block=False)
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
        if client.ws is not None:
            try:
                client.ws.close(timeout=0.2)
            except (OSError, websocket.WebSocketException):
                pass
    gevent.killall(greenlets, timeout=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
