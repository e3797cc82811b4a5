"""bench.stormclients against a scripted gateway: what the storm report counts (a drop, the time until
the subscriber is back, the resubscribe's `since`, a duplicate, a refused handshake) comes out of the
DmsClient it now runs on. The client process runs as the benchmark starts it (gevent patches it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.client.fake_gateway import FakeGateway, Peer
from tests.helpers import ROOT, seconds

CHANNEL = "restaurant:r1"


def _event(event_id: int) -> dict[str, Any]:
    return {"type": "event", "channel": CHANNEL, "id": event_id, "event": "order.created", "data": {},
            "ts": "2026-01-01T00:00:00Z"}


def test_a_drop_a_return_and_a_duplicate_are_counted() -> None:
    resubscribes: list[dict[str, Any]] = []

    def first(peer: Peer) -> None:
        peer.welcome()
        subscribe = peer.read_json()
        peer.send_json({"type": "subscribed", "channel": CHANNEL, "ref": subscribe["ref"], "last_event_id": 10,
                        "recovered": False})
        for event_id in (11, 12, 12):  # the second 12: a duplicate the client drops, the report counts
            peer.send_json(_event(event_id))
        peer.send_frame(b"\x03\xe9", 0x8)  # 1001: the gateway goes away

    def refused(peer: Peer) -> None:
        peer.read_request()
        peer.sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")

    def back(peer: Peer) -> None:
        peer.welcome()
        subscribe = peer.read_json()
        resubscribes.append(subscribe)
        peer.send_json({"type": "subscribed", "channel": CHANNEL, "ref": subscribe["ref"], "last_event_id": 13,
                        "recovered": True})
        peer.send_json(_event(13))
        while True:
            peer.read_frame()

    gateway = FakeGateway(first, refused, back)
    config = {"host": "127.0.0.1", "port": gateway.port, "secret": "x" * 32, "count": 1, "channels": [CHANNEL],
              "offset": 0, "mode": "subscribe", "base_s": 0.05, "cap_s": 0.1, "concurrency": 10}
    proc = subprocess.Popen([sys.executable, "-m", "bench.stormclients", json.dumps(config)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        status: dict[str, Any] = {}
        deadline = time.monotonic() + seconds(20)
        for line in proc.stdout:  # one status line a second
            status = json.loads(line)["status"]
            if status["back"] == 1 and status["frames"] == 4:
                break
            assert time.monotonic() < deadline, f"not back in time: {status}"
        assert status["drops"] == 1 and status["subscribed"] == 1, status
        assert status["refusals"] == {"http_503_retry_after": 1}, status
        out, _ = proc.communicate("finish " + json.dumps({CHANNEL: [11, 12, 13]}) + "\n", timeout=seconds(20))
        result = json.loads(out.splitlines()[-1])
        assert resubscribes[0]["since"] == 12  # the last id handled
        assert result["accounting"]["missing"] == 0 and result["accounting"]["duplicated"] == 1
        assert result["accounting"]["received"] == 4 and result["accounting"]["never_back"] == 0
        assert len(result["recoveries"]) == 1 and result["recoveries"][0] >= 1.0  # it waited for Retry-After
        assert not gateway.errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gateway.close()
