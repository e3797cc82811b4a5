"""Infrastructure faults during a stream: zero events lost once clients recover."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from typing import Any

import redis
import websocket

from common.db import connect
from common.gateway_stats import read_all
from tests.fix_infra import Infra
from tests.fix_world import World, write_events
from tests.helpers import WsClient, http_json, seconds, wait_for


def _welcomed(url: str, token: str) -> WsClient:
    ws = WsClient.connect(url, token=token)
    assert ws.recv()["type"] == "welcome"
    return ws


def _ids(ws: WsClient, channel: str) -> list[int]:
    return [f["id"] for f in ws.seen if f.get("type") == "event" and f.get("channel") == channel]


def _collect(ws: WsClient, channel: str, expected: list[int], *, timeout_s: float = 20) -> list[int]:
    deadline = time.monotonic() + seconds(timeout_s)
    while set(_ids(ws, channel)) < set(expected) and time.monotonic() < deadline:
        try:
            ws.recv(timeout_s=0.5)
        except websocket.WebSocketTimeoutException:
            continue
    return _ids(ws, channel)


def _leader(gateways: list[dict[str, str]]) -> dict[str, str] | None:
    for gw in gateways:
        status, _, body = http_json("GET", gw["http"] + "/health")
        if status == 200 and body.get("relay_leader"):
            return gw
    return None


def test_a_redis_restart_loses_no_event(private_infra: Infra, start_gateway: Any) -> None:
    _, gw = start_gateway(name="redis-restart", base=private_infra.env())
    channel = f"restaurant:{uuid.uuid4()}"
    token = World.token("admin")
    ws = _welcomed(gw["url"], token)
    ws.subscribe(channel)
    before = write_events(private_infra.database_url, channel, 5)
    assert _collect(ws, channel, before) == before
    during: list[int] = []
    private_infra.restart_redis(between=lambda: during.extend(write_events(private_infra.database_url, channel, 5)))
    after = write_events(private_infra.database_url, channel, 5)
    expected = before + during + after
    got = _collect(ws, channel, expected, timeout_s=30)
    ws.close()
    assert got == expected  # every id once, in order, across the restart


def test_a_postgres_restart_loses_no_event(private_infra: Infra, start_gateway: Any) -> None:
    _, gw = start_gateway(name="pg-restart", base=private_infra.env())
    channel = f"restaurant:{uuid.uuid4()}"
    ws = _welcomed(gw["url"], World.token("admin"))
    ws.subscribe(channel)
    before = write_events(private_infra.database_url, channel, 5)
    assert _collect(ws, channel, before) == before
    private_infra.restart_postgres()
    after = wait_for(lambda: _try_write(private_infra, channel, 5), timeout_s=20, message="PostgreSQL back")
    got = _collect(ws, channel, before + after, timeout_s=30)
    ws.close()
    assert got == before + after


def _try_write(infra: Infra, channel: str, count: int) -> list[int] | None:
    try:
        return write_events(infra.database_url, channel, count)
    except Exception:  # still starting: any error means "not yet"
        return None


def test_relay_failover_when_the_leader_is_killed(private_infra: Infra, start_gateway: Any) -> None:
    first_process, first = start_gateway(name="relay-a", base=private_infra.env())
    second_process, second = start_gateway(name="relay-b", base=private_infra.env())
    leader = wait_for(lambda: _leader([first, second]), message="one relay leader")
    follower = second if leader is first else first
    leader_process = first_process if leader is first else second_process
    channel = f"restaurant:{uuid.uuid4()}"
    ws = _welcomed(follower["url"], World.token("admin"))
    ws.subscribe(channel)
    before = write_events(private_infra.database_url, channel, 5)
    assert _collect(ws, channel, before) == before
    leader_process.proc.send_signal(signal.SIGKILL)
    leader_process.proc.wait(timeout=10)
    started = time.monotonic()
    after = write_events(private_infra.database_url, channel, 5)
    got = _collect(ws, channel, before + after, timeout_s=20)
    takeover_s = time.monotonic() - started
    ws.close()
    assert got == before + after
    assert _leader([follower]) is follower
    print(f"relay takeover and catch-up in {takeover_s:.2f}s")


def test_clients_of_a_killed_gateway_recover_on_another(private_infra: Infra, start_gateway: Any) -> None:
    doomed_process, doomed = start_gateway(name="doomed", base=private_infra.env())
    _, survivor = start_gateway(name="survivor", base=private_infra.env())
    channel = f"restaurant:{uuid.uuid4()}"
    token = World.token("admin")
    ws = _welcomed(doomed["url"], token)
    ws.subscribe(channel)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        while not stop.is_set():
            written.extend(write_events(private_infra.database_url, channel, 1))
            time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    wait_for(lambda: len(_collect(ws, channel, written[:3], timeout_s=1)) >= 3, message="events before the kill")
    doomed_process.proc.send_signal(signal.SIGKILL)
    doomed_process.proc.wait(timeout=10)
    handled = _ids(ws, channel)
    ws.close()
    recovered = _welcomed(survivor["url"], token)
    reply = recovered.subscribe(channel, since=handled[-1])
    assert reply["recovered"] is True
    time.sleep(0.5)  # keep writing while the client is back
    stop.set()
    thread.join(timeout=10)
    rest = _collect(recovered, channel, [i for i in written if i > handled[-1]], timeout_s=20)
    recovered.close()
    assert handled + rest == written  # nothing lost, nothing twice, in order


def test_drain_closes_clients_with_1001_and_health_says_draining(private_infra: Infra,
                                                                 start_gateway: Any) -> None:
    process, gw = start_gateway(name="drain", base=private_infra.env())
    clients = [_welcomed(gw["url"], World.token("admin")) for _ in range(5)]
    process.proc.send_signal(signal.SIGTERM)
    status = wait_for(lambda: _health_status(gw), timeout_s=5, message="draining health")
    assert status == (503, "draining")
    codes = []
    for ws in clients:
        ws.ws.settimeout(seconds(10))
        try:
            opcode, data = ws.ws.recv_data(control_frame=True)
            while opcode != websocket.ABNF.OPCODE_CLOSE:
                opcode, data = ws.ws.recv_data(control_frame=True)
            codes.append(int.from_bytes(data[:2], "big"))
        finally:
            ws.close()
    assert codes == [1001] * 5
    assert process.proc.wait(timeout=30) == 0


def _health_status(gw: dict[str, str]) -> tuple[int, str] | None:
    try:
        status, _, body = http_json("GET", gw["http"] + "/health", timeout_s=1)
    except OSError:
        return None
    return (status, body["status"]) if status == 503 else None


def test_admin_counts_across_two_gateways(private_infra: Infra, start_gateway: Any) -> None:
    first_process, first = start_gateway(name="count-a", base=private_infra.env())
    _, second = start_gateway(name="count-b", base=private_infra.env())
    a = [_welcomed(first["url"], World.token("driver")) for _ in range(2)]
    b = [_welcomed(second["url"], World.token("admin")) for _ in range(3)]
    client = redis.Redis.from_url(private_infra.redis_url, decode_responses=True)

    def both() -> dict[str, Any] | None:
        body = read_all(client)
        by_id = {i["id"]: i["connections"] for i in body["instances"]}
        ok = by_id.get(first["id"]) == 2 and by_id.get(second["id"]) == 3
        return body if ok else None

    body = wait_for(both, timeout_s=10, message="both gateways' numbers")
    assert body["total"] == 5 and body["by_role"]["driver"] == 2 and body["by_role"]["admin"] == 3
    first_process.proc.send_signal(signal.SIGKILL)
    first_process.proc.wait(timeout=10)
    wait_for(lambda: first["id"] not in {i["id"] for i in read_all(client)["instances"]}, timeout_s=10,
             message="the dead gateway to disappear")
    for ws in a + b:
        ws.close()


def test_the_relay_resumes_from_its_cursor(private_infra: Infra, start_gateway: Any) -> None:
    """Events committed while no relay runs are published, in order, when one starts."""
    channel = f"restaurant:{uuid.uuid4()}"
    offline = write_events(private_infra.database_url, channel, 5)
    _, gw = start_gateway(name="late-relay", base=private_infra.env())
    ws = _welcomed(gw["url"], World.token("admin"))
    reply = ws.subscribe(channel, since=0)
    got = _collect(ws, channel, offline)
    ws.close()
    assert reply["recovered"] is True and got == offline
    with connect(private_infra.database_url) as conn:
        cursor = conn.execute("SELECT last_id FROM relay_cursor WHERE name = 'relay'").fetchone()
    assert cursor is not None and cursor["last_id"] >= offline[-1]
