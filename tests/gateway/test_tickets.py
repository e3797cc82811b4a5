"""Connect tickets (contract section 6): issued by the API, redeemed once by a gateway handshake."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
import websocket

from api.app import create_app
from common import tickets
from common.auth import verify_token
from common.config import Config
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_servers import SharedGateway
from tests.fix_world import World
from tests.helpers import WsClient, http_json, seconds


def _ticket(client: Any, token: str) -> dict[str, Any]:
    response = client.post("/api/realtime/ticket", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def _connect(gateway: SharedGateway, ticket: str) -> WsClient:
    ws = websocket.create_connection(f"{gateway['url']}?ticket={ticket}", timeout=seconds(10))
    return WsClient(ws)


def _refused(gateway: SharedGateway, ticket: str) -> int:
    status, _, body = http_json("GET", f"{gateway['http']}/ws?ticket={ticket}")
    assert status != 401 or body["error"]["code"] == "unauthorized"
    return status


def test_a_ticket_opens_one_connection_as_its_user(client: Any, gateway: SharedGateway, world: World) -> None:
    issued = _ticket(client, world.restaurant)
    assert issued["expires_in"] == 30 and len(issued["ticket"]) >= 32
    assert world.restaurant.split(".")[0] not in issued["ticket"]  # opaque: not the token, nor part of it
    conn = _connect(gateway, issued["ticket"])
    welcome = conn.recv()
    assert welcome["type"] == "welcome"
    assert welcome["user"] == {"id": verify_token(world.restaurant, JWT_SECRET).user_id, "role": "restaurant"}
    # Bound to the claims: the ticket's connection may watch its restaurant, not another.
    assert conn.subscribe(f"restaurant:{world.restaurant_id}")["type"] == "subscribed"
    assert conn.subscribe(f"restaurant:{world.other_restaurant_id}")["code"] == "forbidden"
    conn.close()
    # Single use: the same ticket again is refused, even though the first connection has ended.
    assert _refused(gateway, issued["ticket"]) == 401


def test_unknown_and_missing_tickets_are_refused(gateway: SharedGateway) -> None:
    assert _refused(gateway, "not-a-ticket") == 401
    assert _refused(gateway, "") == 401
    assert _refused(gateway, "x" * 500) == 401


def test_one_users_ticket_never_serves_another(client: Any, gateway: SharedGateway, world: World) -> None:
    mine, theirs = _ticket(client, world.restaurant), _ticket(client, world.other_restaurant)
    a, b = _connect(gateway, mine["ticket"]), _connect(gateway, theirs["ticket"])
    ids = {a.recv()["user"]["id"], b.recv()["user"]["id"]}
    assert ids == {verify_token(world.restaurant, JWT_SECRET).user_id,
                   verify_token(world.other_restaurant, JWT_SECRET).user_id}
    assert b.subscribe(f"restaurant:{world.restaurant_id}")["code"] == "forbidden"
    a.close()
    b.close()


def test_two_handshakes_racing_with_one_ticket_get_one_connection(client: Any, gateway: SharedGateway,
                                                                  world: World) -> None:
    issued = _ticket(client, world.admin)
    statuses = []
    for _ in range(2):
        try:
            conn = _connect(gateway, issued["ticket"])
            statuses.append(101)
            conn.close()
        except websocket.WebSocketBadStatusException as exc:
            statuses.append(exc.status_code)
    assert statuses == [101, 401]


def test_a_ticket_expires(infra: Infra, gateway: SharedGateway, world: World) -> None:
    app = create_app(Config.from_env(infra.env(WS_TICKET_TTL="0.3")))
    try:
        issued = _ticket(app.test_client(), world.admin)
        assert issued["expires_in"] == 0.3
        time.sleep(0.5)  # past the ticket's life (Redis expires the key on its own clock)
        assert _refused(gateway, issued["ticket"]) == 401
    finally:
        app.extensions["dms"].close()


def test_a_ticket_never_outlives_its_token(client: Any, gateway: SharedGateway, infra: Infra) -> None:
    # A token that ends in about 2 s: the ticket's life is cut to the token's, and a ticket read
    # past the token's expiry is refused even if its key were still in Redis.
    now = time.time()
    token = World.token("admin", ttl_s=2.0, now=now)
    exp = verify_token(token, JWT_SECRET).expires_at
    issued = _ticket(client, token)
    assert issued["expires_in"] <= exp - now
    key = tickets._key(issued["ticket"])
    db = redis.Redis.from_url(infra.redis_url)
    assert 0 < db.pttl(key) <= (exp - now) * 1000
    db.persist(key)  # as if Redis had kept it: the expiry check at redeem must still refuse it
    time.sleep(max(0.0, exp - time.time()) + 0.2)
    assert _refused(gateway, issued["ticket"]) == 401
    assert db.exists(key) == 0  # and it is used up
    db.close()


def test_a_jwt_in_the_url_still_works(gateway: SharedGateway, world: World) -> None:
    conn = WsClient.connect(gateway["url"], token=world.admin)
    assert conn.recv()["type"] == "welcome"
    conn.close()


def test_the_ticket_route_needs_a_token(client: Any) -> None:
    assert client.post("/api/realtime/ticket").status_code == 401


@pytest.mark.parametrize("role", ["admin", "driver", "demo"])
def test_every_role_may_have_a_ticket(client: Any, world: World, role: str) -> None:
    token = {"admin": world.admin, "driver": world.driver, "demo": world.demo}[role]
    assert _ticket(client, token)["expires_in"] == 30
    assert uuid.UUID(verify_token(token, JWT_SECRET).user_id)
