"""Products: admin writes, everyone reads, filters, full-text search, keyset pages, money as strings."""

from __future__ import annotations

import uuid
from typing import Any

from tests.api.support import auth, error_code
from tests.fix_world import World


def _create(client: Any, world: World, **fields: Any) -> dict[str, Any]:
    body = {"name": "Tomatoes", "category": "produce", "price": "3.50", **fields}
    response = client.post("/api/products", json=body, headers=auth(world.admin))
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def test_admin_creates_a_product_with_defaults(client: Any, world: World) -> None:
    product = _create(client, world, price="12.5")
    assert set(product) == {"id", "name", "description", "category", "unit", "price", "active", "created_at",
                            "updated_at"}
    assert product["price"] == "12.50" and product["unit"] == "each" and product["active"] is True
    assert product["description"] == ""


def test_price_must_be_a_non_negative_amount_with_cents(client: Any, world: World) -> None:
    for price in ("1.234", "-1.00", "abc", True, None):
        response = client.post("/api/products", json={"name": "x", "category": "c", "price": price},
                               headers=auth(world.admin))
        assert response.status_code == 422, price
        assert "price" in response.get_json()["error"]["details"]


def test_create_names_every_bad_field(client: Any, world: World) -> None:
    response = client.post("/api/products", json={"name": "", "active": "yes", "unit": "u" * 41},
                           headers=auth(world.admin))
    assert response.status_code == 422 and error_code(response) == "validation_error"
    assert set(response.get_json()["error"]["details"]) == {"name", "category", "price", "active", "unit"}


def test_only_admins_write(client: Any, world: World) -> None:
    product_id = world.products[0]["id"]
    for token in (world.restaurant, world.driver, world.demo):
        assert client.post("/api/products", json={"name": "x", "category": "c", "price": "1.00"},
                           headers=auth(token)).status_code == 403
        assert client.patch(f"/api/products/{product_id}", json={"price": "0.01"},
                            headers=auth(token)).status_code == 403


def test_every_role_reads(client: Any, world: World) -> None:
    product_id = world.products[0]["id"]
    for token in (world.admin, world.restaurant, world.driver, world.demo):
        response = client.get(f"/api/products/{product_id}", headers=auth(token))
        assert response.status_code == 200 and response.get_json()["price"] == "1.25"
        assert client.get("/api/products?limit=1", headers=auth(token)).status_code == 200
    assert client.get("/api/products").status_code == 401


def test_unknown_product_is_404(client: Any, world: World) -> None:
    assert client.get(f"/api/products/{uuid.uuid4()}", headers=auth(world.admin)).status_code == 404
    assert client.get("/api/products/xyz", headers=auth(world.admin)).status_code == 404
    assert client.patch(f"/api/products/{uuid.uuid4()}", json={"active": False},
                        headers=auth(world.admin)).status_code == 404


def test_patch_changes_only_given_fields_and_bumps_updated_at(client: Any, world: World) -> None:
    product = _create(client, world, description="ripe")
    response = client.patch(f"/api/products/{product['id']}", json={"price": "4.00", "active": False},
                            headers=auth(world.admin))
    assert response.status_code == 200
    changed = response.get_json()
    assert changed["price"] == "4.00" and changed["active"] is False
    assert changed["name"] == product["name"] and changed["description"] == "ripe"
    assert changed["updated_at"] > product["updated_at"]
    empty = client.patch(f"/api/products/{product['id']}", json={}, headers=auth(world.admin))
    assert empty.status_code == 422
    bad = client.patch(f"/api/products/{product['id']}", json={"name": None, "id": "x"}, headers=auth(world.admin))
    assert bad.status_code == 422 and set(bad.get_json()["error"]["details"]) == {"name", "id"}


def test_filters_by_category_active_and_text(client: Any, world: World) -> None:
    tag = uuid.uuid4().hex[:10]
    category = f"cat-{tag}"
    kept = _create(client, world, name=f"Heirloom {tag}", description="sweet red", category=category)
    _create(client, world, name=f"Plain {tag}", description="green", category=category, active=False)
    by_category = client.get(f"/api/products?category={category}", headers=auth(world.restaurant)).get_json()
    assert len(by_category["items"]) == 2
    active = client.get(f"/api/products?category={category}&active=true", headers=auth(world.restaurant))
    assert [p["id"] for p in active.get_json()["items"]] == [kept["id"]]
    found = client.get(f"/api/products?q=sweet {tag}", headers=auth(world.restaurant)).get_json()
    assert [p["id"] for p in found["items"]] == [kept["id"]]
    assert client.get("/api/products?active=maybe", headers=auth(world.admin)).status_code == 422


def test_keyset_pages_cover_everything_once(client: Any, world: World) -> None:
    category = f"pages-{uuid.uuid4().hex[:8]}"
    created = [_create(client, world, name=f"p{n}", category=category)["id"] for n in range(5)]
    seen: list[str] = []
    url = f"/api/products?category={category}&limit=2"
    while url:
        page = client.get(url, headers=auth(world.admin)).get_json()
        seen += [p["id"] for p in page["items"]]
        url = f"/api/products?category={category}&limit=2&cursor={page['next_cursor']}" if page["next_cursor"] \
            else ""
    assert seen == created[::-1]
