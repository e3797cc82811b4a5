"""The thin slice: a REST write reaches a WebSocket subscriber through outbox, NOTIFY, relay and Redis."""

from __future__ import annotations

from typing import Any

from tests.fix_world import World
from tests.helpers import WsClient


def test_an_order_created_over_rest_reaches_the_restaurant_board(client: Any, world: World,
                                                                  gateway: dict[str, str]) -> None:
    ws = WsClient.connect(gateway["url"], token=world.restaurant)
    try:
        hello = ws.recv()
        assert hello["type"] == "welcome" and hello["user"]["role"] == "restaurant"
        assert hello["ping_interval"] == 30 and hello["max_subscriptions"] == 50
        channel = f"restaurant:{world.restaurant_id}"
        reply = ws.subscribe(channel)
        assert reply["type"] == "subscribed" and reply["channel"] == channel and reply["recovered"] is False

        response = client.post(
            "/api/orders",
            json={"items": [{"product_id": world.products[0]["id"], "quantity": 2}], "customer_name": "Ann"},
            headers={"Authorization": f"Bearer {world.restaurant}", "X-Request-ID": "e2e-request-0001"},
        )
        assert response.status_code == 201, response.get_json()
        order = response.get_json()

        (event,) = ws.events(1, channel=channel)
        assert event["event"] == "order.created"
        assert isinstance(event["id"], int) and event["id"] > (reply["last_event_id"] or 0)
        assert event["data"]["order_id"] == order["id"]
        assert event["data"]["status"] == "pending"
        assert event["data"]["total_amount"] == order["total_amount"]
        assert event["data"]["request_id"] == "e2e-request-0001"
        assert event["ts"].endswith("Z")
    finally:
        ws.close()
