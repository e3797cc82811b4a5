"""bench.wsclients against a scripted gateway: the ready line, latencies by phase and the delivery
accounting of the fan-out benchmarks come out of the DmsClient it now runs on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.client.fake_gateway import FakeGateway, Peer
from tests.helpers import ROOT, seconds

CHANNEL = "restaurant:r1"



def _one_client(kind: str, url: str) -> subprocess.Popen[str]:
    """A `bench.wsclients` process with one client of `kind` on CHANNEL, talking JSON lines."""
    config = {"kind": kind, "url": url, "secret": "x" * 32, "count": 1, "channels": [CHANNEL],
              "offset": 0, "connect_timeout_s": seconds(10)}
    return subprocess.Popen([sys.executable, "-m", "bench.wsclients", json.dumps(config)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

def test_events_are_timed_and_accounted() -> None:
    def gateway_script(peer: Peer) -> None:
        peer.welcome()
        subscribe = peer.read_json()
        peer.send_json({"type": "subscribed", "channel": CHANNEL, "ref": subscribe["ref"], "last_event_id": None,
                        "recovered": False})
        for event_id in (1, 2, 2, 4):  # a duplicate, and 3 never sent
            peer.send_json({"type": "event", "channel": CHANNEL, "id": event_id, "event": "order.created",
                            "data": {}, "ts": "2026-01-01T00:00:00+00:00"})
        while True:
            peer.read_frame()

    gateway = FakeGateway(gateway_script)
    proc = _one_client("dms", gateway.url)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = json.loads(proc.stdout.readline())  # within connect_timeout_s, by the process's own deadline
        assert ready == {"ready": 1, "failed": 0, "rooms": {CHANNEL: 1}}
        report: dict[str, Any] = {}
        deadline = time.monotonic() + seconds(10)
        while report.get("frames") != 4:  # the events may still be on their way: ask again
            assert time.monotonic() < deadline, report
            report = _ask(proc, "report")
        assert sum(report["hists"]["warmup"].values()) == 4  # one latency per frame, duplicate included
        out, _ = proc.communicate("finish " + json.dumps({CHANNEL: [1, 2, 3, 4]}) + "\n", timeout=seconds(20))
        accounting = json.loads(out.splitlines()[-1])["accounting"]
        assert accounting == {"received": 4, "missing": 1, "duplicated": 1, "out_of_order": 1,
                              "never_connected": 0, "reconnects": 0}
        assert not gateway.errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gateway.close()


def test_socketio_clients_run_over_the_same_websocket_layer() -> None:
    def engine_io(peer: Peer) -> None:
        peer.upgrade()
        peer.send_frame(b'0{"sid":"s1","pingInterval":25000,"pingTimeout":20000}')
        assert peer.read_frame()[1] == b"40"
        peer.send_frame(b"2")  # a ping while joining: answered with 3
        assert peer.read_frame()[1] == b"3"
        peer.send_frame(b'40{"sid":"n1"}')
        assert peer.read_frame()[1].startswith(b'420["subscribe",')
        peer.send_frame(b"430[{}]")
        for event_id in (1, 2):
            body = json.dumps({"id": event_id, "ts": "2026-01-01T00:00:00+00:00"})
            peer.send_frame(f'42["event",{body}]'.encode())
        while True:
            peer.read_frame()

    gateway = FakeGateway(engine_io)
    proc = _one_client("socketio", gateway.url)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["ready"] == 1
        deadline = time.monotonic() + seconds(10)
        while True:
            out_line = _ask(proc, "report")
            if out_line["frames"] == 2:
                break
            assert time.monotonic() < deadline, out_line
        out, _ = proc.communicate("finish " + json.dumps({CHANNEL: [1, 2]}) + "\n", timeout=seconds(20))
        assert json.loads(out.splitlines()[-1])["accounting"]["missing"] == 0
        assert not gateway.errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        gateway.close()


def _ask(proc: subprocess.Popen[str], command: str) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return dict(json.loads(proc.stdout.readline()))
