"""GATEWAY_REUSE_PORT: gateway processes share one listening port and the kernel spreads connections.

Each process keeps its own GATEWAY_ID, so the per-gateway numbers in Redis (`dms:gw:<id>`) say
which process holds how many connections; /health on the shared port reaches either one.
"""

from __future__ import annotations

import signal
import socket
import uuid
from typing import Any

import pytest
import redis
import websocket

from common.gateway_stats import read_all
from devstack import embedded
from gateway.listener import ListenError, bind_listener, start_listening
from tests.fix_infra import Infra
from tests.fix_world import World, write_events
from tests.helpers import WsClient, http_json, wait_for

CLIENTS = 40  # both of two processes get none with probability 2 * 2^-40


def _health_id(http: str) -> str | None:
    try:
        status, _, body = http_json("GET", f"{http}/health", timeout_s=2)
    except OSError:
        return None
    return body["id"] if status == 200 else None


def _wait_until_both_answer(first: dict[str, str], second: dict[str, str], second_process: Any) -> None:
    """Every /health is a new connection, hashed to either process: the second is up once one reaches it."""
    seen: set[str] = set()

    def both_answer() -> bool:
        assert second_process.proc.poll() is None, f"second gateway exited: {second_process.log()[-2000:]}"
        if (answered := _health_id(first["http"])) is not None:
            seen.add(answered)
        return seen >= {first["id"], second["id"]}

    wait_for(both_answer, timeout_s=30, interval_s=0.05, message="/health on the shared port from both gateways")


def _welcomed(url: str) -> WsClient:
    ws = WsClient.connect(url, token=World.token("admin"))
    assert ws.recv()["type"] == "welcome"
    return ws


def test_two_gateways_share_a_port_and_both_deliver(infra: Infra, start_gateway: Any) -> None:
    port = embedded.free_port()
    _, first = start_gateway(name="reuse-a", port=port, GATEWAY_REUSE_PORT="true")
    second_process, second = start_gateway(name="reuse-b", port=port, wait=False, GATEWAY_REUSE_PORT="true")
    _wait_until_both_answer(first, second, second_process)
    channel = f"restaurant:{uuid.uuid4()}"
    clients = [_welcomed(first["url"]) for _ in range(CLIENTS)]
    try:
        for ws in clients:
            assert ws.subscribe(channel)["type"] == "subscribed"
        stats = redis.Redis.from_url(infra.redis_url, decode_responses=True)

        def spread() -> dict[str, int] | None:
            by_id = {i["id"]: int(i["connections"]) for i in read_all(stats)["instances"]}
            counts = {gw: by_id.get(gw, 0) for gw in (first["id"], second["id"])}
            return counts if sum(counts.values()) == CLIENTS else None

        counts = wait_for(spread, timeout_s=15, message=f"both gateways' counts to add up to {CLIENTS}")
        assert all(count > 0 for count in counts.values()), f"one process got every connection: {counts}"
        [event_id] = write_events(infra.database_url, channel, 1)
        for ws in clients:
            assert ws.events(1, channel=channel, timeout_s=15)[0]["id"] == event_id
    finally:
        for ws in clients:
            ws.close()


def test_a_draining_gateway_leaves_new_connections_to_the_other(infra: Infra, start_gateway: Any) -> None:
    """Sharing the port, a draining process closes its listening socket: every handshake made during
    its drain is welcomed by the other process, none is refused with 503."""
    port = embedded.free_port()
    # Closing 2 clients a second, its drain outlasts the handshakes below even on a loaded machine.
    draining, first = start_gateway(name="drain-a", port=port, GATEWAY_REUSE_PORT="true", WS_DRAIN_RATE="2")
    other_process, other = start_gateway(name="drain-b", port=port, wait=False, GATEWAY_REUSE_PORT="true")
    _wait_until_both_answer(first, other, other_process)
    # Clients on both, so the draining one has some to close.
    clients = [_welcomed(first["url"]) for _ in range(CLIENTS)]
    fresh: list[WsClient] = []
    try:
        draining.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "gateway draining" in draining.log(), timeout_s=15, message="the drain to start")
        refused: list[str] = []
        for _ in range(CLIENTS):
            try:
                fresh.append(_welcomed(first["url"]))
            except (OSError, websocket.WebSocketException) as exc:
                refused.append(f"{type(exc).__name__}: {exc}")
        still_draining = draining.proc.poll() is None
        assert not refused, f"{len(refused)} of {CLIENTS} handshakes refused during the drain: {refused[:3]}"
        assert still_draining, "the drain ended before the handshakes were made: the test proved nothing"
        stats = redis.Redis.from_url(infra.redis_url, decode_responses=True)
        for ws in fresh:
            assert ws.request({"type": "ping"})["type"] == "pong"
        wait_for(lambda: {i["id"]: int(i["connections"]) for i in read_all(stats)["instances"]}.get(other["id"], 0)
                 >= CLIENTS, timeout_s=15, message="the new connections counted on the other gateway")
    finally:
        for ws in [*clients, *fresh]:
            ws.close()


def test_without_the_option_a_second_gateway_on_the_port_stops_with_a_clear_error(start_gateway: Any) -> None:
    port = embedded.free_port()
    _, first = start_gateway(name="alone-a", port=port)
    second_process, _ = start_gateway(name="alone-b", port=port, wait=False)
    wait_for(lambda: second_process.proc.poll() is not None, timeout_s=30, interval_s=0.05,
             message="the second gateway to exit")
    assert second_process.proc.returncode == 1
    log = second_process.log()
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log
    assert "GATEWAY_REUSE_PORT=true" in log
    assert _health_id(first["http"]) == first["id"]  # the first keeps its port


def test_the_listener_sets_reuse_port_only_when_asked() -> None:
    shared = bind_listener("127.0.0.1", 0, reuse_port=True)
    port = shared.getsockname()[1]
    other = bind_listener("127.0.0.1", port, reuse_port=True)
    try:
        for sock in (shared, other):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        start_listening(shared)
        start_listening(other)
        with pytest.raises(ListenError, match=r"address already in use .*GATEWAY_REUSE_PORT=true on every one"):
            bind_listener("127.0.0.1", port, reuse_port=False)
    finally:
        shared.close()
        other.close()
    alone = bind_listener("127.0.0.1", 0, reuse_port=False)
    try:
        assert alone.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        start_listening(alone)
        with pytest.raises(ListenError, match="every process sharing it must set GATEWAY_REUSE_PORT=true"):
            bind_listener("127.0.0.1", alone.getsockname()[1], reuse_port=True)
    finally:
        alone.close()
