"""A fresh restaurant with users of every role per test (`world`), and outbox events on demand.

Loaded as a plugin by tests/conftest.py; test modules import `World` and `write_events` from here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from common.auth import mint_token
from common.db import connect
from common.events import committed_ids, write_event
from tests.fix_infra import JWT_SECRET, Infra


@dataclass
class World:
    """A fresh restaurant with users of every role and a few products, unique to one test."""

    restaurant_id: str
    other_restaurant_id: str
    admin: str
    restaurant: str
    driver: str
    driver_id: str
    demo: str
    other_restaurant: str
    products: list[dict[str, Any]]

    @staticmethod
    def token(role: str, **kwargs: Any) -> str:
        """A token for a new identity of `role` (restaurant and demo roles need restaurant_id)."""
        return mint_token(JWT_SECRET, role=role, **kwargs)


@pytest.fixture
def world(infra: Infra) -> World:
    restaurant_id, other_id = str(uuid.uuid4()), str(uuid.uuid4())
    driver_id = str(uuid.uuid4())
    products = []
    with connect(infra.database_url) as conn:
        for rid in (restaurant_id, other_id):
            conn.execute("INSERT INTO restaurants (id, name) VALUES (%s, %s)", (rid, f"R {rid[:8]}"))
        for n in range(3):
            row = conn.execute(
                "INSERT INTO products (name, category, price, active) VALUES (%s, 'produce', %s, %s)"
                " RETURNING id, name, price, active",
                (f"product {n} {restaurant_id[:6]}", f"{n + 1}.25", n < 2),
            ).fetchone()
            assert row is not None
            products.append({"id": str(row["id"]), "name": row["name"], "price": row["price"], "active": row["active"]})
        conn.commit()
    return World(
        restaurant_id=restaurant_id,
        other_restaurant_id=other_id,
        admin=mint_token(JWT_SECRET, role="admin"),
        restaurant=mint_token(JWT_SECRET, role="restaurant", restaurant_id=restaurant_id),
        driver=mint_token(JWT_SECRET, role="driver", sub=driver_id),
        driver_id=driver_id,
        demo=mint_token(JWT_SECRET, role="demo", restaurant_id=restaurant_id),
        other_restaurant=mint_token(JWT_SECRET, role="restaurant", restaurant_id=other_id),
        products=products,
    )


def write_events(database_url: str, channel: str, count: int, *, event: str = "test.event") -> list[int]:
    """Commit `count` outbox events on `channel`, one transaction each; return their ids.

    Ids are assigned at commit (sql/0008), so they are read back once every transaction is done.
    """
    drafts = []
    with connect(database_url) as conn:
        for n in range(count):
            drafts.append(write_event(conn, event=event, channels=[channel], data={"n": n}))
            conn.commit()
        ids = committed_ids(conn, drafts)
        conn.commit()
    assert all(event_id is not None for event_id in ids), "a committed event has no id"
    return [int(event_id) for event_id in ids if event_id is not None]


def stored_latitudes(database_url: str, driver_id: str) -> list[float]:
    """A driver's stored track, oldest first: the latitudes, to two places."""
    with connect(database_url) as conn:
        rows = conn.execute("SELECT lat FROM driver_locations WHERE driver_id = %s ORDER BY recorded_at",
                            (driver_id,)).fetchall()
    return [round(float(r["lat"]), 2) for r in rows]
