"""Handshake rules: token, origin, per-user cap, and the welcome frame."""

from __future__ import annotations

import uuid

import pytest
import websocket

from common.auth import mint_token
from tests.conftest import JWT_SECRET, World
from tests.helpers import WsClient, http_json


def _refused(url: str, token: str | None, *, origin: str | None = None) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WsClient.connect(url, token=token, origin=origin)
    return int(info.value.status_code)


@pytest.mark.parametrize(
    "token",
    [None, "garbage", mint_token("wrong-secret-0123456789abcdef012", role="admin"),
     mint_token(JWT_SECRET, role="admin", ttl_s=-10)],
    ids=["missing", "garbage", "bad-signature", "expired"],
)
def test_bad_tokens_get_401_without_upgrade(gateway: dict[str, str], token: str | None) -> None:
    assert _refused(gateway["url"], token) == 401


def test_origin_outside_the_allowed_list_gets_403(gateway: dict[str, str], world: World) -> None:
    assert _refused(gateway["url"], world.admin, origin="http://evil.example") == 403
    ws = WsClient.connect(gateway["url"], token=world.admin, origin="http://allowed.example")
    assert ws.recv()["type"] == "welcome"
    ws.close()


def test_the_authorization_header_works_too(gateway: dict[str, str], world: World) -> None:
    ws = WsClient.connect(gateway["url"], headers=[f"Authorization: Bearer {world.driver}"])
    hello = ws.recv()
    assert hello["user"] == {"id": world.driver_id, "role": "driver"}
    ws.close()


def test_welcome_frame_follows_the_contract(gateway: dict[str, str], world: World) -> None:
    ws = WsClient.connect(gateway["url"], token=world.demo)
    hello = ws.recv()
    ws.close()
    assert set(hello) == {"type", "connection_id", "user", "ping_interval", "max_subscriptions", "server_time"}
    assert hello["user"]["role"] == "demo" and hello["max_subscriptions"] == 50
    assert hello["server_time"].endswith("Z")


def test_more_than_the_per_user_cap_gets_429(gateway: dict[str, str]) -> None:
    token = mint_token(JWT_SECRET, role="admin", sub=str(uuid.uuid4()))
    clients = [WsClient.connect(gateway["url"], token=token) for _ in range(10)]
    try:
        for client in clients:
            assert client.recv()["type"] == "welcome"
        assert _refused(gateway["url"], token) == 429
    finally:
        for client in clients:
            client.close()


def test_health_reports_the_gateway(gateway: dict[str, str]) -> None:
    status, _, body = http_json("GET", gateway["http"] + "/health")
    assert status == 200 and body["status"] == "ok" and body["id"] == "gw-test"


def test_tokens_never_reach_the_gateway_log(gateway: dict[str, str], world: World) -> None:
    from pathlib import Path

    ws = WsClient.connect(gateway["url"], token=world.restaurant)
    ws.recv()
    ws.subscribe(f"restaurant:{world.restaurant_id}")
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException):
        WsClient.connect(gateway["url"], token=world.restaurant[:-4] + "AAAA")
    log = Path(gateway["log"]).read_text()
    assert "connected" in log
    assert world.restaurant not in log and world.restaurant[:-4] not in log
