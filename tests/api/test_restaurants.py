"""Restaurants: admin creates and lists; members read their own; others get 404."""

from __future__ import annotations

from typing import Any

from tests.api.support import auth, error_code
from tests.fix_world import World


def test_admin_creates_a_restaurant(client: Any, world: World) -> None:
    response = client.post("/api/restaurants", json={"name": "  Cafe Uno ", "address": "1 Main St", "phone": "555"},
                           headers=auth(world.admin))
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "name", "address", "phone", "created_at"}
    assert body["name"] == "Cafe Uno" and body["address"] == "1 Main St" and body["phone"] == "555"
    assert response.headers["Location"] == f"/api/restaurants/{body['id']}"
    fetched = client.get(f"/api/restaurants/{body['id']}", headers=auth(world.admin))
    assert fetched.status_code == 200 and fetched.get_json() == body


def test_optional_fields_default_to_null(client: Any, world: World) -> None:
    response = client.post("/api/restaurants", json={"name": "Bare"}, headers=auth(world.admin))
    assert response.status_code == 201
    assert response.get_json()["address"] is None and response.get_json()["phone"] is None


def test_create_validates_every_field(client: Any, world: World) -> None:
    response = client.post("/api/restaurants", json={"name": "", "phone": "9" * 41, "extra": 1},
                           headers=auth(world.admin))
    assert response.status_code == 422 and error_code(response) == "validation_error"
    assert set(response.get_json()["error"]["details"]) == {"name", "phone", "extra"}


def test_only_admins_create(client: Any, world: World) -> None:
    for token in (world.restaurant, world.driver, world.demo):
        response = client.post("/api/restaurants", json={"name": "X"}, headers=auth(token))
        assert response.status_code == 403 and error_code(response) == "forbidden"
    assert client.post("/api/restaurants", json={"name": "X"}).status_code == 401


def test_members_see_only_their_own(client: Any, world: World) -> None:
    for token in (world.restaurant, world.demo):
        listed = client.get("/api/restaurants", headers=auth(token))
        assert listed.status_code == 200
        assert [r["id"] for r in listed.get_json()["items"]] == [world.restaurant_id]
        assert client.get(f"/api/restaurants/{world.restaurant_id}", headers=auth(token)).status_code == 200
        other = client.get(f"/api/restaurants/{world.other_restaurant_id}", headers=auth(token))
        assert other.status_code == 404 and error_code(other) == "not_found"
    assert client.get(f"/api/restaurants/{world.restaurant_id}", headers=auth(world.driver)).status_code == 404
    assert client.get("/api/restaurants", headers=auth(world.driver)).status_code == 403


def test_unknown_and_malformed_ids_are_404(client: Any, world: World) -> None:
    assert client.get("/api/restaurants/00000000-0000-0000-0000-000000000000",
                      headers=auth(world.admin)).status_code == 404
    assert client.get("/api/restaurants/not-a-uuid", headers=auth(world.admin)).status_code == 404


def test_admin_lists_newest_first_with_keyset_pages(client: Any, world: World) -> None:
    created = [client.post("/api/restaurants", json={"name": f"page {n}"}, headers=auth(world.admin)).get_json()["id"]
               for n in range(3)]
    first = client.get("/api/restaurants?limit=2", headers=auth(world.admin)).get_json()
    assert [r["id"] for r in first["items"]] == created[::-1][:2]
    assert first["next_cursor"]
    second = client.get(f"/api/restaurants?limit=2&cursor={first['next_cursor']}", headers=auth(world.admin))
    assert second.get_json()["items"][0]["id"] == created[0]
    assert client.get("/api/restaurants?limit=0", headers=auth(world.admin)).status_code == 422
    assert client.get("/api/restaurants?cursor=garbage", headers=auth(world.admin)).status_code == 400
