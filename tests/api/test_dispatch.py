"""Dispatch: the fleet list, the `drivers` channel, order date filters, analytics and the CSV export."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from common.clock import iso
from common.db import connect
from tests.api.support import auth, create_order, error_code
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import WsClient

# -- helpers ----------------------------------------------------------------------------------------


def _driver(client: Any, world: World, token: str | None = None) -> str:
    """Make the world's driver (or another one) known: its first request creates the profile and row."""
    response = client.post("/api/drivers/me/status", json={"status": "online"}, headers=auth(token or world.driver))
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["id"])


def _backdate(infra: Infra, order_id: str, *, created: datetime, status: str | None = None,
              confirmed: datetime | None = None, delivered: datetime | None = None,
              driver_id: str | None = None) -> None:
    with connect(infra.database_url) as conn:
        conn.execute(
            "UPDATE orders SET created_at = %s, status = coalesce(%s, status), confirmed_at = %s,"
            " delivered_at = %s, driver_id = coalesce(%s, driver_id) WHERE id = %s",
            (created, status, confirmed, delivered, driver_id, order_id),
        )
        conn.commit()


_QUIET_WEEKS = itertools.count()


def _quiet_week() -> datetime:
    """The first day of a past week no other test writes to, so admin-wide numbers are this test's own.

    Counted, not drawn: five tests drawing from a few hundred months agreed about one run in thirty,
    and one test then counted the other's orders.
    """
    return datetime(1971, 1, 4, tzinfo=UTC) + timedelta(weeks=next(_QUIET_WEEKS))


# -- GET /api/drivers -------------------------------------------------------------------------------


def test_the_fleet_lists_status_last_position_and_active_orders(client: Any, world: World) -> None:
    driver_id = _driver(client, world)
    second = World.token("driver", sub=str(uuid.uuid4()))
    other_id = _driver(client, world, second)
    assert client.post("/api/drivers/me/status", json={"status": "on_break"}, headers=auth(second)).status_code == 200
    point = {"lat": 52.52, "lng": 13.405, "recorded_at": iso(datetime.now(UTC) - timedelta(seconds=30))}
    assert client.post("/api/drivers/me/locations", json={"points": [point]},
                       headers=auth(world.driver)).status_code == 202
    order = create_order(client, world.restaurant, world.products[0]["id"])
    client.post(f"/api/orders/{order['id']}/status", json={"status": "confirmed"}, headers=auth(world.admin))
    assert client.post(f"/api/orders/{order['id']}/assign", json={"driver_id": driver_id},
                       headers=auth(world.admin)).status_code == 200

    rows: dict[str, Any] = {}
    cursor: str | None = None
    pages = 0
    while True:  # keyset pages of 2 until both drivers are seen
        query = "/api/drivers?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(query, headers=auth(world.admin)).get_json()
        pages += 1
        rows.update({item["id"]: item for item in body["items"]})
        cursor = body["next_cursor"]
        if cursor is None or {driver_id, other_id} <= set(rows):
            break
    assert {driver_id, other_id} <= set(rows), pages
    mine = rows[driver_id]
    assert mine["status"] == "online" and mine["active_order_ids"] == [order["id"]]
    location = mine["last_location"]
    assert (location["lat"], location["lng"]) == (52.52, 13.405) and location["recorded_at"].endswith("Z")
    assert 25 <= location["age_s"] < 600
    assert rows[other_id] == {"id": other_id, "display_name": rows[other_id]["display_name"], "status": "on_break",
                              "reported_status": "on_break", "last_seen_at": rows[other_id]["last_seen_at"],
                              "last_location": None, "active_order_ids": []}
    assert rows[other_id]["last_seen_at"].endswith("Z")  # saying on_break was a sighting

    on_break = client.get("/api/drivers?status=on_break&limit=200", headers=auth(world.admin)).get_json()
    assert other_id in {i["id"] for i in on_break["items"]} and driver_id not in {i["id"] for i in on_break["items"]}


def test_the_fleet_is_for_admins_and_checks_its_filter(client: Any, world: World) -> None:
    for token in (world.restaurant, world.driver, world.demo):
        response = client.get("/api/drivers", headers=auth(token))
        assert response.status_code == 403 and error_code(response) == "forbidden"
    bad = client.get("/api/drivers?status=asleep", headers=auth(world.admin))
    assert bad.status_code == 422 and set(bad.get_json()["error"]["details"]) == {"status"}


# -- the drivers channel ----------------------------------------------------------------------------


def test_admins_follow_every_driver_on_the_drivers_channel(
        client: Any, world: World, gateway: dict[str, str], infra: Infra) -> None:
    _driver(client, world)
    admin = WsClient.connect(gateway["url"], token=world.admin)
    try:
        assert admin.recv()["type"] == "welcome"
        assert admin.subscribe("drivers")["type"] == "subscribed"
        assert client.post("/api/drivers/me/status", json={"status": "on_break"},
                           headers=auth(world.driver)).status_code == 200
        # The earlier change to online may still be on its way through the relay: wait for this one.
        status = admin.recv_until(lambda f: f.get("event") == "driver.status_changed"
                                  and f["data"]["driver_id"] == world.driver_id and f["data"]["status"] == "on_break")
        assert status["channel"] == "drivers" and isinstance(status["id"], int)
        assert status["data"]["previous_status"] == "online"
        assert client.post("/api/drivers/me/locations", json={"points": [{"lat": 48.1, "lng": 11.6}]},
                           headers=auth(world.driver)).status_code == 202
        where = admin.recv_until(lambda f: f.get("event") == "driver.location"
                                 and f["data"]["driver_id"] == world.driver_id)
        assert where["channel"] == "drivers" and where["id"] is None
        assert (where["data"]["lat"], where["data"]["lng"]) == (48.1, 11.6)
    finally:
        admin.close()
    with connect(infra.database_url) as conn:
        row = conn.execute("SELECT channels FROM events WHERE event = 'driver.status_changed'"
                           " AND data->>'driver_id' = %s ORDER BY id DESC LIMIT 1", (world.driver_id,)).fetchone()
    assert row is not None and row["channels"] == [f"driver:{world.driver_id}", "drivers"]


def test_only_admins_may_subscribe_to_drivers(gateway: dict[str, str], world: World) -> None:
    for token in (world.restaurant, world.demo, world.driver):
        ws = WsClient.connect(gateway["url"], token=token)
        try:
            assert ws.recv()["type"] == "welcome"
            reply = ws.subscribe("drivers")
            assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        finally:
            ws.close()


# -- order list date filters --------------------------------------------------------------------------


def test_the_order_list_filters_by_creation_time(client: Any, world: World, infra: Infra) -> None:
    day = _quiet_week()
    orders = [create_order(client, world.restaurant, world.products[0]["id"]) for _ in range(3)]
    for n, order in enumerate(orders):
        _backdate(infra, order["id"], created=day + timedelta(hours=n))
    start, end = iso(day + timedelta(hours=1)), iso(day + timedelta(hours=2))

    def ids(token: str, query: str) -> list[str]:
        response = client.get(f"/api/orders?{query}", headers=auth(token))
        assert response.status_code == 200, response.get_json()
        return [item["id"] for item in response.get_json()["items"]]

    assert ids(world.restaurant, f"created_from={start}&created_to={end}") == [orders[1]["id"]]  # [from, to)
    assert ids(world.admin, f"created_from={start}&created_to={end}&restaurant_id={world.restaurant_id}") \
        == [orders[1]["id"]]
    assert ids(world.restaurant, f"created_from={start}&created_to={iso(day + timedelta(days=1))}") \
        == [orders[2]["id"], orders[1]["id"]]
    assert ids(world.other_restaurant, f"created_from={start}&created_to={end}") == []  # restaurants see their own


def test_date_parameters_read_dates_zones_and_unencoded_offsets() -> None:
    from api.daterange import parse_moment

    assert parse_moment("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_moment("2026-03-01T08:00:00") == datetime(2026, 3, 1, 8, tzinfo=UTC)  # no zone: UTC
    assert parse_moment("2026-03-01T08:00:00Z") == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert parse_moment("2026-03-01T10:00:00+02:00") == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert parse_moment("2026-03-01T10:00:00 02:00") == datetime(2026, 3, 1, 8, tzinfo=UTC)  # `+` sent bare
    assert parse_moment("2026-03-01T10:00:00.5 0200") == datetime(2026, 3, 1, 8, 0, 0, 500000, tzinfo=UTC)


def test_bad_creation_times_name_the_fields(client: Any, world: World) -> None:
    response = client.get("/api/orders?created_from=yesterday&created_to=2026-13-01", headers=auth(world.admin))
    assert response.status_code == 422 and error_code(response) == "validation_error"
    assert set(response.get_json()["error"]["details"]) == {"created_from", "created_to"}
    backwards = client.get("/api/orders?created_from=2026-03-02&created_to=2026-03-01", headers=auth(world.admin))
    assert backwards.status_code == 422 and set(backwards.get_json()["error"]["details"]) == {"created_to"}


# -- status times -----------------------------------------------------------------------------------


def test_confirmation_and_delivery_times_are_stamped(client: Any, world: World, infra: Infra) -> None:
    driver_id = _driver(client, world)
    order = create_order(client, world.restaurant, world.products[0]["id"])
    url = f"/api/orders/{order['id']}"
    for status in ("confirmed", "preparing", "ready"):
        assert client.post(f"{url}/status", json={"status": status}, headers=auth(world.admin)).status_code == 200
    client.post(f"{url}/assign", json={"driver_id": driver_id}, headers=auth(world.admin))
    for status in ("delivering", "delivered"):
        assert client.post(f"{url}/status", json={"status": status}, headers=auth(world.driver)).status_code == 200
    with connect(infra.database_url) as conn:
        row = conn.execute("SELECT created_at, confirmed_at, delivered_at FROM orders WHERE id = %s",
                           (order["id"],)).fetchone()
    assert row is not None and row["created_at"] <= row["confirmed_at"] <= row["delivered_at"]


# -- analytics ------------------------------------------------------------------------------------------


def _analytics_world(client: Any, world: World, infra: Infra) -> datetime:
    """Five orders on two days of a quiet week: three of ours (one cancelled, two delivered), two of the other."""
    driver_id = _driver(client, world)
    day = _quiet_week()
    price = Decimal(str(world.products[0]["price"]))
    plan = [  # (restaurant token, quantity, day offset, status, minutes from confirmed to delivered)
        (world.restaurant, 2, 0, "delivered", 30),
        (world.restaurant, 1, 0, "delivered", 50),
        (world.restaurant, 4, 1, "cancelled", None),
        (world.other_restaurant, 3, 1, "delivered", 20),
        (world.other_restaurant, 1, 1, "pending", None),
    ]
    for token, quantity, offset, status, minutes in plan:
        order = create_order(client, token, world.products[0]["id"], quantity=quantity)
        assert Decimal(order["total_amount"]) == price * quantity
        created = day + timedelta(days=offset, hours=9)
        confirmed = created + timedelta(minutes=5) if minutes is not None else None
        delivered = confirmed + timedelta(minutes=minutes) if confirmed and minutes is not None else None
        _backdate(infra, order["id"], created=created, status=status, confirmed=confirmed, delivered=delivered,
                  driver_id=driver_id if status == "delivered" else None)
    return day


def test_analytics_by_day_restaurant_and_status(client: Any, world: World, infra: Infra) -> None:
    day = _analytics_world(client, world, infra)
    price = Decimal(str(world.products[0]["price"]))
    window = f"from={day.date().isoformat()}&to={(day + timedelta(days=2)).date().isoformat()}"

    def rows(token: str, group_by: str) -> dict[str, dict[str, Any]]:
        response = client.get(f"/api/analytics/orders?{window}&group_by={group_by}", headers=auth(token))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["group_by"] == group_by and body["from"] == iso(day)
        return {row["key"]: row for row in body["rows"]}

    first, second = day.date().isoformat(), (day + timedelta(days=1)).date().isoformat()
    by_day = rows(world.admin, "day")
    assert by_day == {
        first: {"key": first, "orders": 2, "revenue": f"{price * 3:.2f}", "delivered": 2, "avg_delivery_minutes": 40.0},
        second: {"key": second, "orders": 3, "revenue": f"{price * 4:.2f}", "delivered": 1,
                 "avg_delivery_minutes": 20.0},
    }
    by_restaurant = rows(world.admin, "restaurant")
    assert by_restaurant[world.restaurant_id]["orders"] == 3
    assert by_restaurant[world.restaurant_id]["revenue"] == f"{price * 3:.2f}"  # the cancelled one is not revenue
    assert by_restaurant[world.other_restaurant_id]["avg_delivery_minutes"] == 20.0
    by_status = rows(world.admin, "status")
    assert {k: v["orders"] for k, v in by_status.items()} == {"cancelled": 1, "delivered": 3, "pending": 1}
    assert by_status["pending"]["avg_delivery_minutes"] is None

    for token in (world.restaurant, world.demo):  # their own rows only
        own = rows(token, "restaurant")
        assert set(own) == {world.restaurant_id} and own[world.restaurant_id]["orders"] == 3
        assert sum(r["orders"] for r in rows(token, "day").values()) == 3
    assert client.get(f"/api/analytics/orders?{window}", headers=auth(world.driver)).status_code == 403


def test_analytics_refuses_bad_queries_with_details(client: Any, world: World) -> None:
    cases = {
        "from=2025-01-01&to=2026-01-03": {"to"},  # 367 days
        "from=last+week&group_by=day": {"from"},
        "from=2026-01-01&to=2026-01-02&group_by=week": {"group_by"},
        "from=nope&group_by=week": {"from", "group_by"},
        "to=2026-01-01&from=2026-02-01": {"to"},
    }
    for query, fields in cases.items():
        response = client.get(f"/api/analytics/orders?{query}", headers=auth(world.admin))
        assert response.status_code == 422 and error_code(response) == "validation_error", query
        assert set(response.get_json()["error"]["details"]) == fields, (query, response.get_json())
    fine = client.get("/api/analytics/orders?from=2025-01-01&to=2026-01-02", headers=auth(world.admin))
    assert fine.status_code == 200  # exactly 366 days
    default = client.get("/api/analytics/orders", headers=auth(world.admin)).get_json()
    span = datetime.fromisoformat(default["to"]) - datetime.fromisoformat(default["from"])
    assert span == timedelta(days=7) and default["group_by"] == "day"


# -- export -----------------------------------------------------------------------------------------------


def _csv(response: Any) -> list[list[str]]:
    assert response.status_code == 200, response.data[:500]
    assert response.mimetype == "text/csv"
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


HEADER = ["id", "restaurant_id", "status", "total_amount", "customer_name", "driver_id", "created_at", "delivered_at"]


def test_export_streams_a_header_and_one_row_per_order(client: Any, world: World, infra: Infra) -> None:
    day = _analytics_world(client, world, infra)
    window = f"created_from={day.date().isoformat()}&created_to={(day + timedelta(days=2)).date().isoformat()}"
    response = client.get(f"/api/orders/export.csv?{window}", headers=auth(world.admin))
    assert response.is_streamed
    table = _csv(response)
    assert table[0] == HEADER and len(table) == 6
    created = [row[6] for row in table[1:]]
    assert created == sorted(created)  # oldest first
    delivered = [row for row in table[1:] if row[2] == "delivered"]
    assert len(delivered) == 3 and all(row[5] and row[7] for row in delivered)
    own = _csv(client.get(f"/api/orders/export.csv?{window}", headers=auth(world.restaurant)))
    assert len(own) == 4 and {row[1] for row in own[1:]} == {world.restaurant_id}
    assert len(_csv(client.get(f"/api/orders/export.csv?{window}", headers=auth(world.demo)))) == 4


def test_export_pages_through_more_rows_than_one_page(client: Any, world: World, infra: Infra,
                                                       monkeypatch: Any) -> None:
    from api.routes import export

    monkeypatch.setattr(export, "PAGE_ROWS", 2)
    day = _quiet_week()
    orders = [create_order(client, world.restaurant, world.products[0]["id"]) for _ in range(5)]
    for order in orders:
        _backdate(infra, order["id"], created=day)  # one timestamp: the id breaks the tie
    window = f"created_from={day.date().isoformat()}&created_to={(day + timedelta(days=1)).date().isoformat()}"
    table = _csv(client.get(f"/api/orders/export.csv?{window}", headers=auth(world.restaurant)))
    assert [row[0] for row in table[1:]] == sorted(order["id"] for order in orders)


def test_an_empty_export_is_a_header_row(client: Any, world: World) -> None:
    table = _csv(client.get("/api/orders/export.csv?created_from=1950-01-01&created_to=1950-01-02",
                            headers=auth(world.admin)))
    assert table == [HEADER]


def test_export_neutralises_formulas_in_customer_names(client: Any, world: World, infra: Infra) -> None:
    day = _quiet_week()
    names = ["=HYPERLINK(\"http://x\")", "+1+2", "-3", "@SUM(A1)", "Ada, \"the\" Countess"]
    for name in names:
        order = create_order(client, world.restaurant, world.products[0]["id"], customer_name=name)
        _backdate(infra, order["id"], created=day)
    window = f"created_from={day.date().isoformat()}&created_to={(day + timedelta(days=1)).date().isoformat()}"
    table = _csv(client.get(f"/api/orders/export.csv?{window}", headers=auth(world.restaurant)))
    assert sorted(row[4] for row in table[1:]) == sorted(["'" + n for n in names[:4]] + [names[4]])


def test_export_checks_its_range_and_role(client: Any, world: World) -> None:
    bad = client.get("/api/orders/export.csv?created_from=tomorrow", headers=auth(world.admin))
    assert bad.status_code == 422 and set(bad.get_json()["error"]["details"]) == {"created_from"}
    assert client.get("/api/orders/export.csv", headers=auth(world.driver)).status_code == 403


# -- read replica -------------------------------------------------------------------------------------


def test_fleet_analytics_and_export_read_from_a_replica(infra: Infra, world: World) -> None:
    """The primary listed as its own replica (a server not in recovery is never behind): every read
    of these three endpoints is counted against the replica target, none against the primary."""
    from api.app import create_app
    from api.replicas import READS
    from common.config import Config
    from tests.helpers import wait_for

    config = Config.from_env(infra.env(DATABASE_REPLICA_URLS=infra.database_url, RATE_LIMIT_IP="1000000/minute",
                                       RATE_LIMIT_USER="1000000/hour"))
    app = create_app(config)
    try:
        router = app.extensions["dms"].router
        wait_for(lambda: all(replica.usable for replica in router.replicas), message="the replica checked")
        client = app.test_client()
        admin = World.token("admin")
        client.get("/api/drivers", headers=auth(admin))  # the first request creates the profile
        for path in ("/api/drivers", "/api/analytics/orders?group_by=status",
                     "/api/orders/export.csv?created_from=1950-01-01&created_to=1950-01-02"):
            replica_before = READS.labels("replica")._value.get()
            primary_before = READS.labels("primary")._value.get()
            response = client.get(path, headers=auth(admin))
            assert response.status_code == 200, path
            response.get_data()
            assert READS.labels("replica")._value.get() > replica_before, path
            assert READS.labels("primary")._value.get() == primary_before, path
    finally:
        app.extensions["dms"].close()
