"""Users: admins create profiles; restaurant roles need a restaurant; drivers get a driver record."""

from __future__ import annotations

import uuid
from typing import Any

from common.db import connect
from tests.api.support import auth, error_code
from tests.fix_infra import Infra
from tests.fix_world import World


def test_admin_creates_a_restaurant_user(client: Any, world: World) -> None:
    response = client.post("/api/users", json={"role": "restaurant", "display_name": "Chef",
                                               "restaurant_id": world.restaurant_id}, headers=auth(world.admin))
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "role", "display_name", "restaurant_id", "created_at"}
    assert body["role"] == "restaurant" and body["restaurant_id"] == world.restaurant_id
    uuid.UUID(body["id"])


def test_a_driver_profile_gets_a_driver_record(client: Any, world: World, infra: Infra) -> None:
    user_id = str(uuid.uuid4())
    response = client.post("/api/users", json={"id": user_id, "role": "driver", "display_name": "Dee"},
                           headers=auth(world.admin))
    assert response.status_code == 201 and response.get_json()["id"] == user_id
    with connect(infra.database_url) as conn:
        row = conn.execute("SELECT status FROM drivers WHERE id = %s", (user_id,)).fetchone()
    assert row is not None and row["status"] == "offline"


def test_duplicate_id_is_a_conflict(client: Any, world: World) -> None:
    body = {"id": str(uuid.uuid4()), "role": "admin", "display_name": "A"}
    assert client.post("/api/users", json=body, headers=auth(world.admin)).status_code == 201
    again = client.post("/api/users", json=body, headers=auth(world.admin))
    assert again.status_code == 409 and error_code(again) == "conflict"


def test_restaurant_roles_need_a_known_restaurant(client: Any, world: World) -> None:
    for role in ("restaurant", "demo"):
        response = client.post("/api/users", json={"role": role, "display_name": "X"}, headers=auth(world.admin))
        assert response.status_code == 422
        assert "restaurant_id" in response.get_json()["error"]["details"]
    unknown = client.post("/api/users", json={"role": "demo", "display_name": "X", "restaurant_id": str(uuid.uuid4())},
                          headers=auth(world.admin))
    assert unknown.status_code == 422 and unknown.get_json()["error"]["details"] == {"restaurant_id": "unknown"}
    driver = client.post("/api/users", json={"role": "driver", "display_name": "X",
                                             "restaurant_id": world.restaurant_id}, headers=auth(world.admin))
    assert driver.status_code == 422


def test_body_is_validated(client: Any, world: World) -> None:
    response = client.post("/api/users", json={"id": "nope", "role": "boss", "extra": True},
                           headers=auth(world.admin))
    assert response.status_code == 422
    assert set(response.get_json()["error"]["details"]) == {"id", "role", "display_name", "extra"}


def test_only_admins_create_users(client: Any, world: World) -> None:
    body = {"role": "admin", "display_name": "sneaky"}
    for token in (world.restaurant, world.driver, world.demo):
        assert client.post("/api/users", json=body, headers=auth(token)).status_code == 403
    assert client.post("/api/users", json=body).status_code == 401
