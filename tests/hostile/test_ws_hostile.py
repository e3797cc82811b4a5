"""Hostile WebSocket input: each gets the contract's answer, the gateway survives, bystanders stay fast."""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from typing import Any

import psutil
import pytest
import websocket

from common.auth import mint_token
from tests.fix_infra import JWT_SECRET
from tests.fix_world import World
from tests.helpers import WsClient, seconds

GARBAGE = ["", " ", "null", "true", "42", '"text"', "[]", "{}", '{"type": null}', '{"type": ["subscribe"]}',
           '{"type": "subscribe", "channel": 7}', '{"type": "subscribe", "channel": "restaurant:"}',
           '{"type": "subscribe", "channel": "orders", "since": 1.5}', '{"type": "ping", "ref": {"a": 1}}',
           '{"type": "location", "lat": "north"}', '{"type": "unsubscribe"}', '{"type": "SUBSCRIBE"}',
           "[" * 10_000 + "]" * 10_000]


def _welcomed(url: str, token: str) -> WsClient:
    ws = WsClient.connect(url, token=token)
    assert ws.recv()["type"] == "welcome"
    return ws


@pytest.fixture
def hostile_gateway(start_gateway: Any) -> tuple[Any, dict[str, str]]:
    process, gw = start_gateway(name="hostile")
    return process, gw


def _paced(ws: WsClient, frame: str | bytes, *, binary: bool = False) -> dict[str, Any]:
    time.sleep(0.055)  # below the 20 frames/s limit: these tests are about content, not floods
    if binary:
        ws.ws.send_binary(frame if isinstance(frame, bytes) else frame.encode())
    else:
        ws.ws.send(frame)
    return ws.recv_until(lambda f: f.get("type") in ("error", "pong", "subscribed", "unsubscribed"))


def test_garbage_frames_get_errors_and_the_connection_stays(hostile_gateway: Any, world: World) -> None:
    _, gw = hostile_gateway
    ws = _welcomed(gw["url"], world.admin)
    for frame in GARBAGE:
        reply = _paced(ws, frame)
        assert reply["type"] == "error" and reply["code"] in ("bad_request", "unknown_type", "invalid_channel",
                                                              "forbidden"), (
            frame[:60], reply)
    assert _paced(ws, b'{"type": "ping"}', binary=True)["code"] == "bad_request"
    # Unknown fields are ignored (forward compatible), even bulky ones under the size cap.
    assert _paced(ws, json.dumps({"type": "ping", "junk": ["x" * 100] * 500}))["type"] == "pong"
    rng = random.Random(3)
    for _ in range(50):
        blob = "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 200)))
        assert _paced(ws, blob)["type"] == "error"
    assert ws.request({"type": "ping"})["type"] == "pong"
    ws.close()


def test_invalid_utf8_closes_the_connection_with_1007_or_1002(hostile_gateway: Any, world: World) -> None:
    _, gw = hostile_gateway
    ws = _welcomed(gw["url"], world.admin)
    ws.ws.send(b"\xff\xfe{bad", opcode=websocket.ABNF.OPCODE_TEXT)
    ws.ws.settimeout(seconds(5))
    codes = []
    try:
        while True:
            opcode, data = ws.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                codes.append(int.from_bytes(data[:2], "big"))
                break
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        codes.append(-1)  # dropped without a close frame: also refused
    ws.close()
    assert codes and codes[0] in (1007, 1002, -1)


def test_forged_and_abusive_handshakes(hostile_gateway: Any, world: World) -> None:
    _, gw = hostile_gateway
    import jwt

    forged = [
        jwt.encode({"sub": str(uuid.uuid4()), "role": "admin", "exp": time.time() + 60},
                   "guessed-secret-0123456789abcdefghij"),
        jwt.encode({"sub": str(uuid.uuid4()), "role": "superuser", "exp": time.time() + 60}, JWT_SECRET),
        jwt.encode({"sub": str(uuid.uuid4()), "role": "restaurant", "exp": time.time() + 60}, JWT_SECRET),
        jwt.encode({"sub": str(uuid.uuid4()), "role": "admin", "exp": time.time() + 60}, None, algorithm="none"),
        world.admin[:-3] + "abc",
    ]
    for token in forged:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            WsClient.connect(gw["url"], token=token)
        assert info.value.status_code == 401
    # A real token with another restaurant's id cannot read this restaurant's board.
    other = mint_token(JWT_SECRET, role="restaurant", restaurant_id=world.other_restaurant_id)
    ws = _welcomed(gw["url"], other)
    assert ws.subscribe(f"restaurant:{world.restaurant_id}")["code"] == "forbidden"
    ws.close()


def test_subscribe_churn_leaks_no_memory_and_bystanders_stay_fast(hostile_gateway: Any, world: World) -> None:
    process, gw = hostile_gateway
    gateway_process = psutil.Process(process.proc.pid)
    bystander = _welcomed(gw["url"], world.admin)

    def rtt_ms(samples: int = 20) -> list[float]:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            bystander.request({"type": "ping"})
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
        return times

    baseline = rtt_ms()
    churner = _welcomed(gw["url"], world.admin)
    channels = [f"order:{uuid.uuid4()}" for _ in range(10)]

    def churn(rounds: int) -> None:
        for n in range(rounds):
            channel = channels[n % len(channels)]
            churner.request({"type": "subscribe", "channel": channel})
            churner.request({"type": "unsubscribe", "channel": channel})
            time.sleep(0.1)  # 20 frames/s: stays under the client rate limit

    churn(50)  # warm up allocations
    rss_before = gateway_process.memory_info().rss
    import threading

    thread = threading.Thread(target=churn, args=(300,))
    thread.start()
    during = rtt_ms(40)
    thread.join(timeout=seconds(120))
    rss_after = gateway_process.memory_info().rss
    churner.close()
    bystander.close()
    growth_mib = (rss_after - rss_before) / 2**20
    p99_during = sorted(during)[int(len(during) * 0.99) - 1]
    print(f"ping rtt median {statistics.median(baseline):.1f} ms -> {statistics.median(during):.1f} ms, "
          f"p99 during churn {p99_during:.1f} ms; gateway RSS growth over 600 cycles {growth_mib:.2f} MiB")
    assert growth_mib < 5, growth_mib
    assert p99_during < 100 * seconds(1), during


def test_a_flood_is_cut_and_a_bystander_is_not_slowed(hostile_gateway: Any, world: World) -> None:
    _, gw = hostile_gateway
    bystander = _welcomed(gw["url"], world.admin)
    flooder = _welcomed(gw["url"], world.admin)
    for n in range(200):
        try:
            flooder.ws.send(json.dumps({"type": "subscribe", "channel": f"order:{uuid.uuid4()}", "ref": str(n)}))
        except (websocket.WebSocketConnectionClosedException, BrokenPipeError, ConnectionResetError):
            break
    started = time.perf_counter()
    assert bystander.request({"type": "ping"})["type"] == "pong"
    assert (time.perf_counter() - started) < 0.5 * seconds(1)
    flooder.ws.settimeout(seconds(10))
    closed_with = None
    try:
        while closed_with is None:
            opcode, data = flooder.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                closed_with = int.from_bytes(data[:2], "big")
    except websocket.WebSocketConnectionClosedException:
        pass
    flooder.close()
    bystander.close()
    assert closed_with == 1008
