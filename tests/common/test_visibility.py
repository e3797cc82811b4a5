"""What each role may see, in one table, asserted against the policy (common/visibility.py) and a real database.

The scene: restaurants A and B; driver D1 carries an active order of A (and a delivered one of
B), driver D2 carries an active order of B. Rows are viewers, columns what they may subscribe to
or receive; the hypothesis test in tests/gateway/test_privacy.py checks the same rule end to end.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from common import visibility
from common.auth import Identity
from common.db import connect
from common.errors import Forbidden

# Channels: restaurant:A, restaurant:B, order:A (active, D1), order:B (active, D2), driver:D1,
# driver:D2, and the admins' channels orders, drivers, admin:connections.
CHANNELS = ("restaurant:A", "restaurant:B", "order:A", "order:B", "driver:D1", "driver:D2", "orders", "drivers",
            "admin:connections")
SUBSCRIBE = {  # viewer: the channels it may subscribe to (Y) or not (.)
    "admin":        "Y Y Y Y Y Y Y Y Y",
    "restaurant A": "Y . Y . Y . . . .",  # driver:D1 only while D1 carries an active order of A
    "demo A":       "Y . Y . Y . . . .",  # sees what its restaurant sees
    "restaurant B": ". Y . Y . Y . . .",  # D1's delivered order of B gives B no view of D1
    "driver D1":    ". . Y . Y . . . .",
    "driver D2":    ". . . Y . Y . . .",
}
# Events on driver:D1: an order event of A, one of B, and the driver's own (status, location).
EVENTS = ("order of A", "order of B", "driver's own")
RECEIVE = {  # viewer subscribed to driver:D1: which of its events it gets
    "admin":        "Y Y Y",
    "restaurant A": "Y . Y",
    "demo A":       "Y . Y",
    "driver D1":    "Y Y Y",
}


@pytest.fixture(scope="module")
def scene(infra: Any) -> dict[str, str]:
    ids = {name: str(uuid.uuid4()) for name in ("A", "B", "user A", "user B", "D1", "D2", "product")}
    with connect(infra.database_url) as conn:
        for key in ("A", "B"):
            conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, %s)", (ids[key], f"visibility {key}"))
            conn.execute("INSERT INTO profiles (id, role, restaurant_id) VALUES (%s, 'restaurant', %s)",
                         (ids[f"user {key}"], ids[key]))
        for key in ("D1", "D2"):
            conn.execute("INSERT INTO profiles (id, role) VALUES (%s, 'driver')", (ids[key],))
            conn.execute("INSERT INTO drivers (id) VALUES (%s)", (ids[key],))
        for name, restaurant, driver, status in (("order:A", "A", "D1", "delivering"), ("order:B", "B", "D2", "ready"),
                                                 ("done", "B", "D1", "delivered")):
            row = conn.execute(
                "INSERT INTO orders (restaurant_id, created_by, driver_id, status, total_amount)"
                " VALUES (%s, %s, %s, %s, 1) RETURNING id",
                (ids[restaurant], ids[f"user {restaurant}"], ids[driver], status),
            ).fetchone()
            assert row is not None
            ids[name] = str(row["id"])
        conn.commit()
    return ids


def viewer(scene: dict[str, str], name: str) -> Identity:
    role, _, key = name.partition(" ")
    if role == "admin":
        return Identity(str(uuid.uuid4()), "admin", None, 0)
    if role == "driver":
        return Identity(scene[key], "driver", None, 0)
    return Identity(scene[f"user {key}"] if role == "restaurant" else str(uuid.uuid4()), role, scene[key], 0)


def channel_name(scene: dict[str, str], column: str) -> str:
    kind, _, key = column.partition(":")
    if kind in ("restaurant", "driver") and key:
        return f"{kind}:{scene[key]}"
    if kind == "order":
        return f"order:{scene[column]}"
    return column


@pytest.mark.parametrize("name", list(SUBSCRIBE))
def test_who_may_subscribe_to_what(infra: Any, scene: dict[str, str], name: str) -> None:
    who = viewer(scene, name)
    expected = dict(zip(CHANNELS, SUBSCRIBE[name].split(), strict=True))
    with connect(infra.database_url) as conn:
        for column in CHANNELS:
            try:
                visibility.check_subscribe(conn, who, channel_name(scene, column))
                seen = "Y"
            except Forbidden:
                seen = "."
            assert seen == expected[column], (name, column)


@pytest.mark.parametrize("name", list(RECEIVE))
def test_what_a_subscriber_of_a_driver_channel_receives(scene: dict[str, str], name: str) -> None:
    channel = f"driver:{scene['D1']}"
    frames = {
        "order of A": {"event": "order.status_changed", "data": {"restaurant_id": scene["A"], "status": "delivering"}},
        "order of B": {"event": "order.status_changed", "data": {"restaurant_id": scene["B"], "status": "ready"}},
        "driver's own": {"event": "driver.status_changed", "data": {"driver_id": scene["D1"], "status": "online"}},
    }
    own = visibility.own_restaurant(viewer(scene, name))
    expected = dict(zip(EVENTS, RECEIVE[name].split(), strict=True))
    for event, body in frames.items():
        tag = visibility.tag_driver_event(channel, json.dumps(body))
        assert ("Y" if visibility.may_see_event(own, tag) else ".") == expected[event], (name, event)


def test_the_replay_filter_applies_the_same_rule(infra: Any, scene: dict[str, str]) -> None:
    """What a viewer replays from the stored events of driver:D1 is what it receives live."""
    channel = f"driver:{scene['D1']}"
    with connect(infra.database_url) as conn:
        for restaurant in ("A", "B"):
            conn.execute("INSERT INTO events (channels, event, data) VALUES (%s, 'order.status_changed', %s)",
                         ([channel], json.dumps({"restaurant_id": scene[restaurant], "marker": restaurant})))
        conn.execute("INSERT INTO events (channels, event, data) VALUES (%s, 'driver.status_changed', %s)",
                     ([channel], json.dumps({"driver_id": scene["D1"], "marker": "own"})))
        conn.commit()
        for name, expected in (("admin", {"A", "B", "own"}), ("restaurant A", {"A", "own"}),
                               ("demo A", {"A", "own"}), ("driver D1", {"A", "B", "own"})):
            sql, params = visibility.replay_filter(visibility.own_restaurant(viewer(scene, name)), channel)
            rows = conn.execute(f"SELECT data->>'marker' AS m FROM events WHERE channels @> ARRAY[%s]::text[] {sql}",
                                (channel, *params)).fetchall()
            assert {row["m"] for row in rows} == expected, name


def test_tags_name_the_events_that_may_end_a_right(scene: dict[str, str]) -> None:
    channel = f"driver:{scene['D1']}"

    def tag(event: str, status: str) -> visibility.DriverEventTag | None:
        return visibility.tag_driver_event(channel, json.dumps({"event": event, "data": {
            "restaurant_id": scene["A"], "status": status}}))

    assert tag("order.assigned", "ready") == visibility.DriverEventTag(scene["A"], may_end_rights=True)
    assert tag("order.status_changed", "delivered") == visibility.DriverEventTag(scene["A"], True)
    assert tag("order.status_changed", "cancelled") == visibility.DriverEventTag(scene["A"], True)
    assert tag("order.status_changed", "delivering") == visibility.DriverEventTag(scene["A"], False)
    assert visibility.tag_driver_event(f"restaurant:{scene['A']}", json.dumps({"data": {"restaurant_id": "x"}})) \
        is None


def test_the_batched_check_agrees_with_the_single_one(infra: Any, scene: dict[str, str]) -> None:
    pairs = [(scene[r], scene[d]) for r in ("A", "B") for d in ("D1", "D2")]
    with connect(infra.database_url) as conn:
        batched = visibility.restaurants_seeing_drivers(conn, pairs)
        assert batched == {(scene["A"], scene["D1"]), (scene["B"], scene["D2"])}
        assert batched == {pair for pair in pairs if visibility.driver_visible_to_restaurant(conn, *pair)}
