"""Channels, authorization, replies, and delivery with recovery against a real gateway."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.fix_infra import Infra
from tests.fix_world import World, write_events
from tests.helpers import WsClient


@pytest.fixture
def connect(gateway: dict[str, str]) -> Any:
    opened: list[WsClient] = []

    def open_client(token: str) -> WsClient:
        client = WsClient.connect(gateway["url"], token=token)
        assert client.recv()["type"] == "welcome"
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def _order(client: Any, world: World, token: str | None = None) -> dict[str, Any]:
    response = client.post(
        "/api/orders",
        json={"items": [{"product_id": world.products[1]["id"], "quantity": 1}], "restaurant_id": world.restaurant_id},
        headers={"Authorization": f"Bearer {token or world.admin}"},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("role", "channel", "allowed"),
    [
        ("admin", "orders", True),
        ("admin", "admin:connections", True),
        ("restaurant", "restaurant:{rid}", True),
        ("demo", "restaurant:{rid}", True),
        ("restaurant", "restaurant:{other}", False),
        ("restaurant", "orders", False),
        ("driver", "orders", False),
        ("driver", "driver:{did}", True),
        ("restaurant", "driver:{did}", False),
        ("demo", "admin:connections", False),
    ],
)
def test_channel_authorization(connect: Any, world: World, role: str, channel: str, allowed: bool) -> None:
    token = {"admin": world.admin, "restaurant": world.restaurant, "demo": world.demo, "driver": world.driver}[role]
    name = channel.format(rid=world.restaurant_id, other=world.other_restaurant_id, did=world.driver_id)
    reply = connect(token).subscribe(name)
    if allowed:
        assert reply["type"] == "subscribed" and reply["channel"] == name
    else:
        assert reply["type"] == "error" and reply["code"] == "forbidden"


def test_order_channel_follows_the_order(connect: Any, client: Any, world: World) -> None:
    order = _order(client, world)
    channel = f"order:{order['id']}"
    assert connect(world.restaurant).subscribe(channel)["type"] == "subscribed"
    assert connect(world.other_restaurant).subscribe(channel)["code"] == "forbidden"
    assert connect(world.driver).subscribe(channel)["code"] == "forbidden"
    assert connect(world.admin).subscribe(f"order:{uuid.uuid4()}")["type"] == "subscribed"  # admin sees all


def test_a_restaurant_may_follow_the_driver_of_its_active_order(connect: Any, client: Any, world: World) -> None:
    order = _order(client, world)
    headers = {"Authorization": f"Bearer {world.admin}"}
    confirmed = client.post(f"/api/orders/{order['id']}/status", json={"status": "confirmed"}, headers=headers)
    assert confirmed.status_code == 200
    client.get("/api/orders", headers={"Authorization": f"Bearer {world.driver}"})  # creates the driver's profile
    assigned = client.post(f"/api/orders/{order['id']}/assign", json={"driver_id": world.driver_id}, headers=headers)
    assert assigned.status_code == 200, assigned.get_json()
    assert connect(world.restaurant).subscribe(f"driver:{world.driver_id}")["type"] == "subscribed"
    assert connect(world.driver).subscribe(f"order:{order['id']}")["type"] == "subscribed"


def test_resubscribe_is_idempotent_and_unsubscribe_stops_delivery(connect: Any, infra: Infra, world: World) -> None:
    ws = connect(world.admin)
    channel = f"restaurant:{world.restaurant_id}"
    first = ws.subscribe(channel)
    again = ws.subscribe(channel)
    assert first["type"] == again["type"] == "subscribed"
    (event_id,) = write_events(infra.database_url, channel, 1)
    (event,) = ws.events(1, channel=channel)
    assert event["id"] == event_id  # one copy despite subscribing twice
    assert ws.request({"type": "unsubscribe", "channel": channel}) == {
        "type": "unsubscribed", "channel": channel, "ref": ws.seen[-1]["ref"]}
    write_events(infra.database_url, channel, 1)
    marker = ws.request({"type": "ping"})  # anything after the unsubscribe would arrive before this pong
    assert marker["type"] == "pong"
    assert [f for f in ws.seen if f.get("type") == "event" and f["id"] != event_id] == []


def test_the_subscription_cap_over_the_wire(connect: Any, world: World) -> None:
    ws = connect(world.admin)
    for n in range(50):
        if n >= 30:
            time.sleep(0.06)  # stay under the 20 frames/s client rate limit
        assert ws.subscribe(f"order:{uuid.uuid4()}")["type"] == "subscribed"
    over = ws.subscribe("orders")
    assert over["type"] == "error" and over["code"] == "subscription_limit"
    assert ws.request({"type": "ping"})["type"] == "pong"  # still open


def test_events_arrive_in_id_order_exactly_once(connect: Any, infra: Infra, world: World) -> None:
    ws = connect(world.admin)
    channel = f"restaurant:{world.restaurant_id}"
    ws.subscribe(channel)
    ids = write_events(infra.database_url, channel, 30)
    received = [e["id"] for e in ws.events(30, channel=channel)]
    assert received == ids


def test_since_replays_missed_events_then_goes_live(connect: Any, infra: Infra, world: World) -> None:
    channel = f"restaurant:{world.restaurant_id}"
    first = connect(world.admin)
    first.subscribe(channel)
    ids = write_events(infra.database_url, channel, 10)
    assert [e["id"] for e in first.events(10, channel=channel)] == ids
    handled = ids[3]

    later = connect(world.admin)
    reply = later.subscribe(channel, since=handled)
    assert reply["recovered"] is True and reply["last_event_id"] >= ids[-1]
    replayed = [e["id"] for e in later.events(6, channel=channel)]
    assert replayed == ids[4:]
    more = write_events(infra.database_url, channel, 3)
    assert [e["id"] for e in later.events(3, channel=channel)] == more


def test_replay_and_live_events_merge_without_gap_or_duplicate(connect: Any, infra: Infra, world: World) -> None:
    """Events keep arriving while the replay runs; the client sees each id once, in order."""
    import threading

    channel = f"restaurant:{world.restaurant_id}"
    before = write_events(infra.database_url, channel, 300)
    writer_ids: list[int] = []
    writer = threading.Thread(target=lambda: writer_ids.extend(write_events(infra.database_url, channel, 100)))
    ws = connect(world.admin)
    writer.start()
    ws.subscribe(channel, since=before[0] - 1)
    writer.join(timeout=60)
    expected = before + writer_ids
    got = [e["id"] for e in ws.events(len(expected), channel=channel, timeout_s=30)]
    assert got == expected


def test_since_older_than_retention_says_not_recovered(connect: Any, infra: Infra, world: World) -> None:
    from common.db import connect as db_connect

    channel = f"restaurant:{world.restaurant_id}"
    ids = write_events(infra.database_url, channel, 2)
    with db_connect(infra.database_url) as conn:
        conn.execute("INSERT INTO relay_cursor (name, last_id) VALUES ('purged', %s) ON CONFLICT (name)"
                     " DO UPDATE SET last_id = greatest(relay_cursor.last_id, excluded.last_id)", (ids[0],))
        conn.commit()
    reply = connect(world.admin).subscribe(channel, since=ids[0] - 1)
    assert reply["recovered"] is False
