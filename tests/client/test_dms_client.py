"""dms_client against real gateways: a killed gateway loses no event, batch frames, `unsubscribed` with a
reason, offline locations flushed in order over REST, and many clients under gevent with no thread each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from common.auth import mint_token
from common.events import publish_ephemeral
from devstack import embedded
from dms_client import DmsClient
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_servers import SharedGateway
from tests.fix_world import World, stored_latitudes, write_events
from tests.gateway.test_privacy import Rest, new_driver
from tests.helpers import ROOT, Process, http_json, seconds, wait_for


class Collector:
    """Events a handler received, readable from the test's thread."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def ids(self) -> list[int]:
        with self.lock:
            return [e["id"] for e in self.events]


@pytest.fixture
def started() -> Iterator[list[DmsClient]]:
    clients: list[DmsClient] = []
    yield clients
    for client in clients:
        client.close()


def _gateway(infra: Infra, port: int, log: Path) -> Process:
    process = Process("gateway", infra.env(GATEWAY_PORT=str(port), GATEWAY_ID=f"gw-pyclient-{port}"), log)
    process.wait_http_ok(f"http://127.0.0.1:{port}/health")
    return process


def test_a_killed_gateway_loses_no_event(infra: Infra, world: World, tmp_path: Path,
                                         started: list[DmsClient]) -> None:
    port = embedded.free_port()
    gateway = _gateway(infra, port, tmp_path / "first.log")
    try:
        channel = f"restaurant:{world.restaurant_id}"
        got = Collector()
        states: list[tuple[str, dict[str, Any]]] = []
        client = DmsClient(f"ws://127.0.0.1:{port}/ws", token=world.restaurant, base_s=0.1, cap_s=1.0)
        client.on("state", lambda state, detail: states.append((state, detail)))
        client.subscribe(channel, got)
        started.append(client.start())
        wait_for(lambda: client.last_id(channel) is not None, message="subscribed")
        before = write_events(infra.database_url, channel, 3)
        wait_for(lambda: len(got.ids()) >= 3, message="the first events")
        gateway.stop(sig=signal.SIGKILL)
        wait_for(lambda: not client.connected, message="the client to notice")
        missed = write_events(infra.database_url, channel, 4)
        gateway = _gateway(infra, port, tmp_path / "second.log")
        after = write_events(infra.database_url, channel, 2)
        wait_for(lambda: got.ids() == before + missed + after, timeout_s=20, message="every event once, in order")
        delays = [detail["delay_s"] for state, detail in states if state == "reconnecting" and detail]
        assert delays and all(0 <= d <= 1.0 for d in delays), delays
    finally:
        gateway.stop()


def test_batch_frames_and_a_server_ended_subscription(gateway: SharedGateway, client: Any, infra: Infra,
                                                      world: World, started: list[DmsClient]) -> None:
    rest = Rest(client, world)
    driver_id, _ = new_driver(rest)
    order_id = rest.assigned_order(world.restaurant_id, driver_id)
    board, driver_channel = f"restaurant:{world.restaurant_id}", f"driver:{driver_id}"
    got, ended = Collector(), Collector()
    dms = DmsClient(gateway["url"], token=world.restaurant, batch_ms=100)
    dms.on("unsubscribed", ended)
    dms.subscribe(board, got)
    dms.subscribe(driver_channel)
    started.append(dms.start())
    wait_for(lambda: dms.last_id(board) is not None and dms.last_id(driver_channel) is not None, message="subscribed")
    publisher = redis_lib.Redis.from_url(infra.redis_url)
    for n in range(5):
        frame = json.dumps({"type": "event", "channel": board, "id": None, "event": "test.batch", "data": {"n": n},
                            "ts": "2026-01-01T00:00:00Z"})
        publish_ephemeral(publisher, board, frame)
    publisher.close()
    wait_for(lambda: [e["data"].get("n") for e in got.events if e["event"] == "test.batch"] == list(range(5)),
             message="five events in order")
    rest.deliver(order_id)
    wait_for(lambda: ended.events, message="unsubscribed")
    assert ended.events[0] == {"type": "unsubscribed", "channel": driver_channel, "ref": None, "reason": "forbidden"}
    assert driver_channel not in dms.channels  # never resubscribed


def test_offline_locations_reach_rest_in_order(infra: Infra, client: Any, world: World, tmp_path: Path,
                                              started: list[DmsClient]) -> None:
    driver_id, token = new_driver(Rest(client, world))
    api_port, gw_port = embedded.free_port(), embedded.free_port()
    api = Process("api", infra.env(API_PORT=str(api_port)), tmp_path / "api.log")
    gateway: Process | None = None
    try:
        api.wait_http_ok(f"http://127.0.0.1:{api_port}/ready")
        gateway = _gateway(infra, gw_port, tmp_path / "gw1.log")
        dms = DmsClient(f"ws://127.0.0.1:{gw_port}/ws", token=token, api_url=f"http://127.0.0.1:{api_port}",
                        base_s=0.1, cap_s=0.5)
        started.append(dms.start())
        assert dms.wait_connected(seconds(10))
        assert dms.send_location({"lat": 52.0, "lng": 13.0}) == "sent"
        wait_for(lambda: dms.unacknowledged == 0, message="the ack")  # stored: not resent after the kill
        gateway.stop(sig=signal.SIGKILL)
        wait_for(lambda: not dms.connected, message="offline")
        assert [dms.send_location({"lat": 52.0 + n / 100, "lng": 13.0}) for n in (1, 2, 3)] == ["buffered"] * 3
        gateway = _gateway(infra, gw_port, tmp_path / "gw2.log")
        wait_for(lambda: dms.connected and not dms.buffer, timeout_s=15, message="the buffer flushed")


        wait_for(lambda: stored_latitudes(infra.database_url, driver_id) == [52.0, 52.01, 52.02, 52.03],
                 message="four points, in order")
    finally:
        if gateway is not None:
            gateway.stop()
        api.stop()


GEVENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import sys, gevent
from dms_client import DmsClient
url, token, channel, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
clients = [DmsClient(url, token=token) for _ in range(count)]
for c in clients:
    c.subscribe(channel)
    c.start()
with gevent.Timeout(60):
    while not all(c.last_id(channel) is not None for c in clients):
        gevent.sleep(0.05)
import os
threads = len(os.listdir("/proc/self/task"))  # operating-system threads of this process
print(threads, sum(c.connected for c in clients))
for c in clients:
    c.close()
"""


def test_many_clients_under_gevent_take_no_thread_each(gateway: SharedGateway, world: World) -> None:
    # The shared gateway caps connections per user at 10. gevent's default resolver is a thread pool (the
    # ticket request's lookup of 127.0.0.1 would start it); a swarm of numeric addresses needs none.
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts threads through /proc")
    result = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, gateway["url"], world.admin, "orders", "10"],
                            capture_output=True, text=True, timeout=seconds(90), cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "GEVENT_RESOLVER": "block"}, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    threads, connected = (int(x) for x in result.stdout.split())
    assert connected == 10 and threads == 1, result.stdout


def test_retry_after_is_honoured(infra: Infra, world: World, tmp_path: Path, started: list[DmsClient]) -> None:
    port = embedded.free_port()
    process = Process("gateway", infra.env(GATEWAY_PORT=str(port), GATEWAY_ID=f"gw-full-{port}",
                                           WS_MAX_CONNECTIONS="1"), tmp_path / "gateway.log")
    try:
        process.wait_http_ok(f"http://127.0.0.1:{port}/health")
        holder = DmsClient(f"ws://127.0.0.1:{port}/ws", token=world.admin, tickets=False)
        started.append(holder.start())
        assert holder.wait_connected(seconds(10))
        code, headers, _ = http_json("GET", f"http://127.0.0.1:{port}/ws")
        assert code == 503, code  # admission: the gateway is full
        states: list[tuple[str, dict[str, Any]]] = []
        refused = DmsClient(f"ws://127.0.0.1:{port}/ws", token=world.restaurant, base_s=0.1, cap_s=0.2)
        refused.on("state", lambda state, detail: states.append((state, detail)))
        started.append(refused.start())
        first = wait_for(lambda: [d for s, d in states if s == "reconnecting" and d], message="a refused attempt")[0]
        # Each refusal draws its own Retry-After (admission spreads them); the client waits at least
        # the one it was given, far more than its own backoff ceiling of 0.2 s.
        assert first["retry_after_s"] >= 1 and first["delay_s"] >= first["retry_after_s"]
        holder.close()
        assert refused.wait_connected(seconds(float(headers["Retry-After"]) + 20))
    finally:
        process.stop()


def test_the_client_connects_with_a_ticket(infra: Infra, world: World, tmp_path: Path,
                                           started: list[DmsClient]) -> None:
    api_port = embedded.free_port()
    api = Process("api", infra.env(API_PORT=str(api_port)), tmp_path / "api.log")
    try:
        api.wait_http_ok(f"http://127.0.0.1:{api_port}/ready")
        assert http_json("POST", f"http://127.0.0.1:{api_port}/api/realtime/ticket", {}, token=world.admin)[0] == 200
        port = embedded.free_port()
        gateway = _gateway(infra, port, tmp_path / "gateway.log")
        try:
            dms = DmsClient(f"ws://127.0.0.1:{port}/ws", token=world.admin, api_url=f"http://127.0.0.1:{api_port}")
            started.append(dms.start())
            assert dms.wait_connected(seconds(10)) and dms.tickets  # connected, never fell back to ?token=
            assert world.admin not in gateway.log()
        finally:
            gateway.stop()
    finally:
        api.stop()


def test_get_token_refreshes_before_expiry(gateway: SharedGateway, world: World, started: list[DmsClient]) -> None:
    minted: list[str] = []

    def fresh() -> str:
        minted.append(mint_token(JWT_SECRET, role="admin", sub=ADMIN_SUB, ttl_s=8))
        return minted[-1]

    states: list[str] = []
    dms = DmsClient(gateway["url"], get_token=fresh, refresh_before_s=5, tickets=False)
    dms.on("state", lambda state, _: states.append(state))
    started.append(dms.start())
    assert dms.wait_connected(seconds(10))
    time.sleep(12)  # past the first token's 8 s: only a refreshed connection is still the first one
    assert len(minted) >= 2 and dms.connected and states.count("connected") == 1, states


ADMIN_SUB = "00000000-0000-4000-8000-00000000a0a0"


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
def test_compressed_and_plain_clients_read_the_same_events(gateway: SharedGateway, infra: Infra, world: World,
                                                           started: list[DmsClient], compression: bool) -> None:
    """By default the client offers permessage-deflate, as browsers do, and inflates what the gateway compressed."""
    board = f"restaurant:{world.restaurant_id}"
    got = Collector()
    dms = DmsClient(gateway["url"], token=world.restaurant, compression=compression)
    dms.subscribe(board, got)
    started.append(dms.start())
    wait_for(lambda: dms.last_id(board) is not None, message="subscribed")
    note = "a long note " * 60
    publisher = redis_lib.Redis.from_url(infra.redis_url)
    frame = json.dumps({"type": "event", "channel": board, "id": None, "event": "test.deflate",
                        "data": {"note": note}, "ts": "2026-01-01T00:00:00Z"})
    publish_ephemeral(publisher, board, frame)
    publisher.close()
    wait_for(lambda: any(e["event"] == "test.deflate" for e in got.events), message="the big event")
    assert [e["data"]["note"] for e in got.events if e["event"] == "test.deflate"] == [note]
    connection = dms._conn
    assert connection is not None and (connection.inflater is not None) == compression
