"""Row-level security: crafted SQL cannot cross restaurants, policies use indexes, channels agree."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from common.access import check_subscribe
from common.auth import Identity
from common.db import APP_ROLE, Claims, connect, database_role
from common.errors import DmsError
from tests.fix_infra import Infra


@contextmanager
def as_claims(url: str, claims: Claims) -> Iterator[psycopg.Connection[Any]]:
    """A transaction run exactly as the application runs one: app role plus claims."""
    with connect(url) as conn:
        conn.execute(
            "SELECT set_config('role', %s, true), set_config('dms.role', %s, true),"
            " set_config('dms.user_id', %s, true), set_config('dms.restaurant_id', %s, true)",
            (database_role(claims, APP_ROLE), claims.role, claims.user_id or "", claims.restaurant_id or ""),
        )
        yield conn
        conn.rollback()


@pytest.fixture(scope="module")
def scene(infra: Infra) -> dict[str, Any]:
    """Two restaurants with orders, two drivers; one driver carries an active order of restaurant A."""
    ids = {name: str(uuid.uuid4()) for name in ("a", "b", "user_a", "user_b", "driver_1", "driver_2", "product")}
    with connect(infra.database_url) as conn:
        for key in ("a", "b"):
            conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, %s)", (ids[key], f"rls {key}"))
            conn.execute("INSERT INTO profiles (id, role, restaurant_id) VALUES (%s, 'restaurant', %s)",
                         (ids[f"user_{key}"], ids[key]))
        for key in ("driver_1", "driver_2"):
            conn.execute("INSERT INTO profiles (id, role) VALUES (%s, 'driver')", (ids[key],))
            conn.execute("INSERT INTO drivers (id) VALUES (%s)", (ids[key],))
            conn.execute("INSERT INTO driver_locations (driver_id, lat, lng, recorded_at) VALUES (%s, 1, 1, now())",
                         (ids[key],))
        conn.execute("INSERT INTO products (id, name, category, price) VALUES (%s, 'rls product', 'x', 1)",
                     (ids["product"],))
        orders = {}
        for key, driver, status in (("a", "driver_1", "ready"), ("b", None, "pending"), ("b", "driver_2", "ready")):
            row = conn.execute(
                "INSERT INTO orders (restaurant_id, created_by, driver_id, status, total_amount)"
                " VALUES (%s, %s, %s, %s, 1) RETURNING id",
                (ids[key], ids[f"user_{key}"], ids[driver] if driver else None, status),
            ).fetchone()
            assert row is not None
            orders.setdefault(key, []).append(str(row["id"]))
            conn.execute("INSERT INTO order_items (order_id, line_no, product_id, name, quantity, unit_price,"
                         " line_total) VALUES (%s, 1, %s, 'p', 1, 1, 1)", (row["id"], ids["product"]))
        conn.commit()
    return {**ids, "orders": orders}


def _restaurant(scene: dict[str, Any], key: str) -> Claims:
    return Claims("restaurant", scene[f"user_{key}"], scene[key])


def test_a_restaurant_cannot_read_another_restaurants_rows_even_without_a_filter(infra: Infra, scene: Any) -> None:
    with as_claims(infra.database_url, _restaurant(scene, "a")) as conn:
        seen = {str(r["restaurant_id"]) for r in conn.execute("SELECT restaurant_id FROM orders").fetchall()}
        assert seen == {scene["a"]}
        assert conn.execute("SELECT count(*) AS n FROM orders WHERE restaurant_id = %s",
                            (scene["b"],)).fetchone() == {"n": 0}
        items = conn.execute("SELECT order_id FROM order_items WHERE order_id = ANY(%s)",
                             (scene["orders"]["b"],)).fetchall()
        assert items == []
        assert conn.execute("SELECT id FROM restaurants WHERE id = %s", (scene["b"],)).fetchone() is None


def test_a_restaurant_cannot_change_or_create_another_restaurants_orders(infra: Infra, scene: Any) -> None:
    with as_claims(infra.database_url, _restaurant(scene, "a")) as conn:
        changed = conn.execute("UPDATE orders SET notes = 'hijacked' WHERE restaurant_id = %s", (scene["b"],))
        assert changed.rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO orders (restaurant_id, created_by, total_amount) VALUES (%s, %s, 1)",
                         (scene["b"], scene["user_a"]))


def test_order_items_go_only_into_the_writers_own_orders(infra: Infra, scene: Any) -> None:
    """The insert check (common/sql/0014, a function planned once per connection) says what the policy said."""
    item = "INSERT INTO order_items (order_id, line_no, product_id, name, quantity, unit_price, line_total)" \
           " VALUES (%s, 9, %s, 'p', 1, 1, 1)"
    with as_claims(infra.database_url, _restaurant(scene, "a")) as conn:
        conn.execute(item, (scene["orders"]["a"][0], scene["product"]))  # its own order: allowed
    for claims, order in ((_restaurant(scene, "a"), scene["orders"]["b"][0]),  # another restaurant's order
                          (Claims("demo", str(uuid.uuid4()), scene["a"]), scene["orders"]["a"][0]),  # read-only
                          (Claims("driver", scene["driver_1"]), scene["orders"]["a"][0]),
                          (_restaurant(scene, "a"), str(uuid.uuid4()))):  # no such order
        with as_claims(infra.database_url, claims) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(item, (order, scene["product"]))


def test_demo_users_and_drivers_cannot_write_orders_or_products(infra: Infra, scene: Any) -> None:
    for claims in (Claims("demo", str(uuid.uuid4()), scene["a"]), Claims("driver", scene["driver_1"])):
        with as_claims(infra.database_url, claims) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO orders (restaurant_id, created_by, total_amount) VALUES (%s, %s, 1)",
                         (scene["a"], claims.user_id))
        with as_claims(infra.database_url, claims) as conn:
            assert conn.execute("UPDATE products SET price = 0 WHERE id = %s", (scene["product"],)).rowcount == 0


def test_drivers_see_only_their_own_orders_and_positions(infra: Infra, scene: Any) -> None:
    with as_claims(infra.database_url, Claims("driver", scene["driver_1"])) as conn:
        orders = conn.execute("SELECT id FROM orders").fetchall()
        assert {str(r["id"]) for r in orders} == set(scene["orders"]["a"])
        positions = conn.execute("SELECT DISTINCT driver_id FROM driver_locations").fetchall()
        assert {str(r["driver_id"]) for r in positions} == {scene["driver_1"]}


def test_without_claims_nothing_is_visible(infra: Infra, scene: Any) -> None:
    with as_claims(infra.database_url, Claims("none")) as conn:
        for table in ("orders", "order_items", "products", "profiles", "restaurants", "drivers", "driver_locations"):
            assert conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone() == {"n": 0}, table


def _plan(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> str:
    conn.execute("SET LOCAL enable_seqscan = off")  # small test tables: show the index is usable
    row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    return json.dumps(row["QUERY PLAN"])


def test_policies_are_backed_by_indexes(infra: Infra, scene: Any) -> None:
    with as_claims(infra.database_url, _restaurant(scene, "a")) as conn:
        plan = _plan(conn, "SELECT id, status FROM orders")
        assert any(name in plan for name in ("orders_board_covering", "orders_restaurant_status_created",
                                             "orders_active", "orders_restaurant_created_analytics")), plan
        assert "order_items_pkey" in _plan(conn, "SELECT order_id FROM order_items")
        assert "restaurants_pkey" in _plan(conn, "SELECT name FROM restaurants")
    with as_claims(infra.database_url, Claims("driver", scene["driver_1"])) as conn:
        assert "orders_driver" in _plan(conn, "SELECT id FROM orders")
        assert "driver_locations_driver_recorded" in _plan(conn, "SELECT lat FROM driver_locations")
        assert "profiles_pkey" in _plan(conn, "SELECT id FROM profiles")


@pytest.mark.parametrize("who", ["a", "b", "driver_1", "driver_2", "demo_a"])
def test_channel_authorization_agrees_with_the_policies(infra: Infra, scene: Any, who: str) -> None:
    if who in ("a", "b"):
        identity = Identity(scene[f"user_{who}"], "restaurant", scene[who], 0)
    elif who == "demo_a":
        identity = Identity(str(uuid.uuid4()), "demo", scene["a"], 0)
    else:
        identity = Identity(scene[who], "driver", None, 0)
    claims = Claims(identity.role, identity.user_id, identity.restaurant_id)
    probes = [(f"order:{o}", "orders", o) for o in scene["orders"]["a"] + scene["orders"]["b"]]
    probes += [(f"driver:{scene[d]}", "drivers", scene[d]) for d in ("driver_1", "driver_2")]
    probes += [(f"restaurant:{scene[r]}", "restaurants", scene[r]) for r in ("a", "b")]
    for channel, table, row_id in probes:
        with as_claims(infra.database_url, claims) as conn:
            visible = conn.execute(f"SELECT 1 FROM {table} WHERE id = %s", (row_id,)).fetchone() is not None
            try:
                check_subscribe(conn, identity, channel)
                allowed = True
            except DmsError:
                allowed = False
        assert allowed == visible, (who, channel, allowed, visible)


def test_admins_and_the_gateway_service_see_everything(infra: Infra, scene: Any) -> None:
    for claims in (Claims("admin", str(uuid.uuid4())), Claims("service")):
        with as_claims(infra.database_url, claims) as conn:
            seen = {str(r["restaurant_id"]) for r in conn.execute("SELECT restaurant_id FROM orders").fetchall()}
            assert {scene["a"], scene["b"]} <= seen
