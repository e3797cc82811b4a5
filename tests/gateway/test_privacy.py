"""Privacy over time (contract section 5): a restaurant on `driver:D` sees only its own orders, and
loses the channel when it loses the right; what it receives is never something REST would refuse."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.auth import mint_token
from tests.fix_infra import JWT_SECRET
from tests.fix_world import World
from tests.helpers import WsClient


class Rest:
    """The REST calls the scenarios need, through the in-process API."""

    def __init__(self, client: Any, world: World) -> None:
        self.client, self.world = client, world

    def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        response = self.client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {token}"})
        return response.status_code, response.get_json(silent=True)

    def order(self, restaurant_id: str) -> str:
        status, body = self.call("POST", "/api/orders", self.world.admin, {
            "items": [{"product_id": self.world.products[0]["id"], "quantity": 1}], "restaurant_id": restaurant_id,
            "customer_name": f"customer of {restaurant_id[:8]}"})
        assert status == 201, body
        return str(body["id"])

    def move(self, order_id: str, *statuses: str) -> None:
        for status in statuses:
            code, body = self.call("POST", f"/api/orders/{order_id}/status", self.world.admin, {"status": status})
            assert code == 200, body

    def assign(self, order_id: str, driver_id: str) -> None:
        code, body = self.call("POST", f"/api/orders/{order_id}/assign", self.world.admin, {"driver_id": driver_id})
        assert code == 200, body

    def assigned_order(self, restaurant_id: str, driver_id: str) -> str:
        order_id = self.order(restaurant_id)
        self.move(order_id, "confirmed")
        self.assign(order_id, driver_id)
        return order_id

    def deliver(self, order_id: str) -> None:
        self.move(order_id, "preparing", "ready", "delivering", "delivered")

    def sees_location(self, token: str, driver_id: str) -> bool:
        return self.call("GET", f"/api/drivers/{driver_id}/location", token)[0] == 200

    def sees_order(self, token: str, order_id: str) -> bool:
        return self.call("GET", f"/api/orders/{order_id}", token)[0] == 200


def new_driver(rest: Rest) -> tuple[str, str]:
    driver_id = str(uuid.uuid4())
    token = mint_token(JWT_SECRET, role="driver", sub=driver_id)
    code, body = rest.call("POST", "/api/drivers/me/status", token, {"status": "online"})
    assert code == 200, body
    return driver_id, token


def welcomed(url: str, token: str) -> WsClient:
    ws = WsClient.connect(url, token=token)
    assert ws.recv()["type"] == "welcome"
    return ws


@pytest.fixture
def rest(client: Any, world: World) -> Rest:
    return Rest(client, world)


def test_a_shared_driver_shows_each_restaurant_only_its_own_orders(gateway: dict[str, str], rest: Rest,
                                                                    world: World) -> None:
    driver_id, _ = new_driver(rest)
    channel = f"driver:{driver_id}"
    # Where the replay below starts: the newest event before this test's, not 0, which an earlier
    # test's purge may have moved below the retention horizon (then nothing is `recovered`).
    probe = welcomed(gateway["url"], world.admin)
    since = probe.subscribe(channel)["last_event_id"] or 0
    probe.close()
    a_order = rest.assigned_order(world.restaurant_id, driver_id)
    b_order = rest.assigned_order(world.other_restaurant_id, driver_id)
    b = welcomed(gateway["url"], world.other_restaurant)
    try:
        assert b.subscribe(channel)["type"] == "subscribed"
        rest.move(a_order, "preparing")  # A's event: not for B
        rest.move(b_order, "preparing")  # B's event: for B
        (event,) = b.events(1, channel=channel)
        assert event["data"]["order_id"] == b_order
        b.request({"type": "ping"})
        assert all(f["data"]["restaurant_id"] == world.other_restaurant_id
                   for f in b.seen if f.get("type") == "event" and f["event"].startswith("order."))
        # Replay from before the orders: B's own events (created on assign, status changes) and none of A's.
        replayed = welcomed(gateway["url"], world.other_restaurant)
        reply = replayed.subscribe(channel, since=since)
        assert reply["recovered"] is True
        # B's last event (its order moved to preparing) ends the replay; anything of A's would come before.
        replayed.recv_until(lambda f: f.get("event") == "order.status_changed"
                            and f["data"]["order_id"] == b_order and f["data"]["status"] == "preparing")
        events = [f for f in replayed.seen if f.get("type") == "event" and f["event"].startswith("order.")]
        assert events and {f["data"]["order_id"] for f in events} == {b_order}
        replayed.close()
    finally:
        b.close()


def test_a_restaurant_loses_the_driver_channel_when_its_last_order_is_delivered(
        gateway: dict[str, str], rest: Rest, world: World) -> None:
    driver_id, driver_token = new_driver(rest)
    channel = f"driver:{driver_id}"
    b_order = rest.assigned_order(world.other_restaurant_id, driver_id)
    rest.assigned_order(world.restaurant_id, driver_id)  # A keeps an active order with the driver
    b = welcomed(gateway["url"], world.other_restaurant)
    a = welcomed(gateway["url"], world.restaurant)
    driver = welcomed(gateway["url"], driver_token)
    try:
        assert b.subscribe(channel)["type"] == "subscribed"
        assert a.subscribe(channel)["type"] == "subscribed"
        rest.deliver(b_order)
        ended = b.recv_until(lambda f: f.get("type") == "unsubscribed", timeout_s=5)
        assert ended == {"type": "unsubscribed", "channel": channel, "ref": None, "reason": "forbidden"}
        assert not rest.sees_location(world.other_restaurant, driver_id)
        # The driver keeps streaming: A (still assigned) gets it, B gets nothing more on the channel.
        assert driver.request({"type": "location", "lat": 1.0, "lng": 2.0})["type"] == "ack"
        a.recv_until(lambda f: f.get("event") == "driver.location")
        b.request({"type": "ping"})
        after = b.seen[b.seen.index(ended) + 1:]
        assert [f for f in after if f.get("channel") == channel] == []
    finally:
        for ws in (a, b, driver):
            ws.close()


STEPS = st.lists(st.tuples(st.sampled_from(["assign", "deliver", "cancel", "reassign"]),
                           st.sampled_from([0, 1]), st.integers(min_value=0, max_value=5)),
                 min_size=1, max_size=5)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_nothing_a_restaurant_receives_is_refused_by_rest(gateway: dict[str, str], rest: Rest, world: World,
                                                          steps: list[tuple[str, int, int]]) -> None:
    """Random assignments and status changes; after each, both restaurants (re)subscribe where REST
    lets them, the driver sends a point, and every frame each one received is checked against REST."""
    driver_id, driver_token = new_driver(rest)
    other_driver, _ = new_driver(rest)
    channel = f"driver:{driver_id}"
    tokens = [world.restaurant, world.other_restaurant]
    restaurant_ids = [world.restaurant_id, world.other_restaurant_id]
    active: list[list[str]] = [[], []]  # orders of each restaurant assigned to the driver, still active
    clients = [welcomed(gateway["url"], token) for token in tokens]
    driver = welcomed(gateway["url"], driver_token)
    admin = welcomed(gateway["url"], world.admin)
    held = [False, False]
    try:
        assert admin.subscribe(channel)["type"] == "subscribed"
        for step_no, (kind, who, pick) in enumerate(steps):
            orders = active[who]
            if kind == "assign" or not orders:
                orders.append(rest.assigned_order(restaurant_ids[who], driver_id))
            elif kind == "deliver":
                rest.deliver(orders.pop(pick % len(orders)))
            elif kind == "cancel":
                rest.move(orders.pop(pick % len(orders)), "cancelled")
            else:
                rest.assign(orders.pop(pick % len(orders)), other_driver)
            for n, ws in enumerate(clients):
                visible = rest.sees_location(tokens[n], driver_id) or bool(active[n])
                if held[n] and not active[n]:
                    ws.recv_until(lambda f: f.get("type") == "unsubscribed" and f.get("channel") == channel,
                                  timeout_s=5)
                    held[n] = False
                if not held[n]:
                    reply = ws.subscribe(channel)
                    assert (reply["type"] == "subscribed") == visible, (reply, active)
                    held[n] = reply["type"] == "subscribed"
            marker = float(step_no)
            assert driver.request({"type": "location", "lat": marker, "lng": 0.0})["type"] == "ack"
            admin.recv_until(lambda f, lat=marker: f.get("event") == "driver.location" and f["data"]["lat"] == lat)
            for n, ws in enumerate(clients):
                ws.request({"type": "ping"})  # every frame delivered before the point is read by now
                for frame in ws.seen:
                    if frame.get("type") != "event" or frame.get("channel") != channel:
                        continue
                    if frame["event"] == "driver.location":
                        assert frame["data"]["lat"] != marker or rest.sees_location(tokens[n], driver_id)
                    elif frame["event"].startswith("order."):
                        assert frame["data"]["restaurant_id"] == restaurant_ids[n]
                        assert rest.sees_order(tokens[n], frame["data"]["order_id"])
                ws.seen.clear()
    finally:
        for ws in (*clients, driver, admin):
            ws.close()
