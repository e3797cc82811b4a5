"""DmsClient against a scripted gateway (tests/client/fake_gateway.py): each way an attempt can fail is
reported as the "state" detail's `reason`, Retry-After is honoured, and a refused subscribe is sent
again on the same connection."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dms_client import DmsClient, SharedDecoder
from dms_client.backoff import reconnect_delay
from tests.client.fake_gateway import FakeGateway, Peer
from tests.helpers import seconds, wait_for


class Recorder:
    """A DmsClient's "state" details of ended attempts and its "error" frames."""

    def __init__(self, client: DmsClient) -> None:
        self.ended: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        client.on("state", self._state).on("error", self.errors.append)

    def _state(self, state: str, detail: dict[str, Any]) -> None:
        if state == "reconnecting" and detail:
            self.ended.append(detail)


@pytest.fixture
def clients() -> Iterator[list[DmsClient]]:
    made: list[DmsClient] = []
    yield made
    for client in made:
        client.close()


def _client(url: str, clients: list[DmsClient], **options: Any) -> tuple[DmsClient, Recorder]:
    client = DmsClient(url, token="not-checked", tickets=False, base_s=0.05, cap_s=0.1, timeout_s=2, **options)
    recorder = Recorder(client)
    clients.append(client)
    return client, recorder


def _hold(peer: Peer) -> None:
    while True:
        peer.read_frame()


def test_the_backoff_is_full_jitter_under_the_cap_and_never_before_retry_after() -> None:
    draws = [reconnect_delay(attempt, base_s=0.5, cap_s=15.0) for attempt in range(12) for _ in range(50)]
    assert all(0 <= d <= 15.0 for d in draws) and max(draws) > 7.5
    assert all(0 <= reconnect_delay(0, base_s=0.5, cap_s=15.0) <= 0.5 for _ in range(200))
    assert all(reconnect_delay(0, retry_after_s=3.0) >= 3.0 for _ in range(50))
    assert reconnect_delay(10_000) <= 15.0  # days offline: no overflow


def test_nothing_listening_is_a_refused_connect(clients: list[DmsClient]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed
    client, recorder = _client(f"ws://127.0.0.1:{port}/ws", clients)
    client.start()
    first = wait_for(lambda: recorder.ended, message="a failed attempt")[0]
    assert first["reason"] == "connect_econnrefused" and first["dropped"] is False


@pytest.mark.parametrize(("script", "reason"), [
    (lambda peer: (peer.read_request(), peer.sock.close()), "closed_before_answer"),
    (lambda peer: (peer.upgrade(), peer.sock.close()), "reset_during_handshake"),
    (lambda peer: (peer.upgrade(), peer.send_json({"type": "pong"}), _hold(peer)), "no_welcome"),
    (lambda peer: (peer.read_request(), peer.sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"),
                   _hold(peer)), "http_403"),
])
def test_each_failed_handshake_names_where_it_failed(script: Any, reason: str, clients: list[DmsClient]) -> None:
    gateway = FakeGateway(script)
    try:
        client, recorder = _client(gateway.url, clients)
        client.start()
        first = wait_for(lambda: recorder.ended, message="a failed attempt")[0]
        assert first["reason"] == reason and first["dropped"] is False, first
    finally:
        gateway.close()


def test_a_refusal_with_retry_after_waits_for_it_then_connects(clients: list[DmsClient]) -> None:
    def refuse(peer: Peer) -> None:
        peer.read_request()
        peer.sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")

    gateway = FakeGateway(refuse, lambda peer: (peer.welcome(), _hold(peer)))
    try:
        client, recorder = _client(gateway.url, clients)
        client.start()
        assert client.wait_connected(seconds(10))
        assert [(d["reason"], d["retry_after_s"]) for d in recorder.ended] == [("http_503", 1.0)]
        assert recorder.ended[0]["delay_s"] >= 1.0  # far above the client's own cap of 0.1 s
    finally:
        gateway.close()


def test_a_dropped_connection_says_how_it_ended(clients: list[DmsClient]) -> None:
    gateway = FakeGateway(lambda peer: (peer.welcome(), peer.send_frame(b"\x03\xe9", 0x8)),
                          lambda peer: (peer.welcome(), _hold(peer)))
    try:
        client, recorder = _client(gateway.url, clients)
        client.start()
        wait_for(lambda: gateway.accepted == 2 and client.connected, message="back after the 1001")
        assert [(d["reason"], d["dropped"]) for d in recorder.ended] == [("closed_1001", True)]
    finally:
        gateway.close()


def test_a_refused_subscribe_and_a_failed_replay_are_sent_again_on_the_same_connection(
        clients: list[DmsClient]) -> None:
    subscribes: list[dict[str, Any]] = []
    done = threading.Event()

    def gateway_script(peer: Peer) -> None:
        peer.welcome()
        first = peer.read_json()  # refused outright
        peer.send_json({"type": "error", "code": "rate_limited", "message": "slow down", "ref": first["ref"]})
        second = peer.read_json()  # taken, then its replay fails: the gateway drops the subscription
        peer.send_json({"type": "subscribed", "channel": "orders", "ref": second["ref"], "last_event_id": 7,
                        "recovered": False})
        peer.send_json({"type": "error", "code": "unavailable", "message": "store down", "ref": second["ref"]})
        third = peer.read_json()
        peer.send_json({"type": "subscribed", "channel": "orders", "ref": third["ref"], "last_event_id": 9,
                        "recovered": True})
        subscribes.extend([first, second, third])
        done.set()
        _hold(peer)

    gateway = FakeGateway(gateway_script)
    try:
        client, recorder = _client(gateway.url, clients, decode=SharedDecoder())
        client.subscribe("orders")
        client.start()
        assert done.wait(seconds(10)), gateway.errors
        assert gateway.accepted == 1  # all on one connection
        assert [s.get("since") for s in subscribes] == [None, None, 7]  # the retry after `subscribed` recovers
        assert [(e["code"], e["channel"]) for e in recorder.errors] == [("rate_limited", "orders"),
                                                                         ("unavailable", "orders")]
    finally:
        gateway.close()


def test_a_final_subscribe_error_is_not_retried(clients: list[DmsClient]) -> None:
    subscribes: list[dict[str, Any]] = []

    def gateway_script(peer: Peer) -> None:
        peer.welcome()
        first = peer.read_json()
        subscribes.append(first)
        peer.send_json({"type": "error", "code": "forbidden", "message": "no", "ref": first["ref"]})
        peer.send_json({"type": "pong", "ref": "after"})
        while True:
            subscribes.append(peer.read_json())

    gateway = FakeGateway(gateway_script)
    try:
        client, recorder = _client(gateway.url, clients)
        frames: list[dict[str, Any]] = []
        client.on("frame", frames.append)
        client.subscribe("orders")
        client.start()
        wait_for(lambda: any(f.get("ref") == "after" for f in frames), message="the frame after the refusal")
        # A retry would go out within the client's cap (0.1 s) of the refusal; a ping sent once that window
        # is over reaches the gateway after it, so the next frame the gateway reads says whether one went.
        window_over = time.monotonic() + 0.1
        wait_for(lambda: time.monotonic() > window_over, message="the retry window to pass")
        assert client.send({"type": "ping", "ref": "probe"})
        wait_for(lambda: len(subscribes) == 2, message="the probe")
        assert [s["type"] for s in subscribes] == ["subscribe", "ping"]
        assert recorder.errors[0]["channel"] == "orders"
    finally:
        gateway.close()
