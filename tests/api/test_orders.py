"""Orders over REST: roles, validation, idempotency, the status machine, assignment, pages, HTTP edges."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from common.auth import mint_token
from common.db import connect
from tests.api.support import auth, create_order, error_code
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import World


def _run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(n)` in `count` threads released at the same moment; return their results in order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(n: int) -> None:
        barrier.wait()
        results[n] = work(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def _count_orders(infra: Infra, restaurant_id: str) -> int:
    with connect(infra.database_url) as conn:
        row = conn.execute("SELECT count(*) AS n FROM orders WHERE restaurant_id = %s", (restaurant_id,)).fetchone()
    assert row is not None
    return int(row["n"])


def _advance(client: Any, world: World, order_id: str, *statuses: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for status in statuses:
        response = client.post(f"/api/orders/{order_id}/status", json={"status": status}, headers=auth(world.admin))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
    return body


def _driver_known(client: Any, world: World) -> None:
    client.get("/api/orders", headers=auth(world.driver))  # the first request creates the driver's profile


# --- creating -------------------------------------------------------------------------------------------


def test_a_restaurant_creates_an_order(client: Any, world: World) -> None:
    response = client.post("/api/orders", json={
        "items": [{"product_id": world.products[0]["id"], "quantity": 3},
                  {"product_id": world.products[1]["id"], "quantity": 1}],
        "notes": "back door", "customer_name": "Ann"}, headers=auth(world.restaurant))
    assert response.status_code == 201
    order = response.get_json()
    assert set(order) == {"id", "restaurant_id", "created_by", "driver_id", "status", "items", "total_amount",
                          "notes", "customer_name", "version", "created_at", "updated_at"}
    assert order["restaurant_id"] == world.restaurant_id and order["status"] == "pending"
    assert order["total_amount"] == "6.00" and order["version"] == 1 and order["driver_id"] is None
    assert order["items"][0] == {"product_id": world.products[0]["id"], "name": world.products[0]["name"],
                                 "quantity": 3, "unit_price": "1.25", "line_total": "3.75"}
    assert response.headers["Location"] == f"/api/orders/{order['id']}"


def test_an_admin_names_the_restaurant(client: Any, world: World) -> None:
    items = [{"product_id": world.products[0]["id"], "quantity": 1}]
    missing = client.post("/api/orders", json={"items": items}, headers=auth(world.admin))
    assert missing.status_code == 422 and missing.get_json()["error"]["details"] == {"restaurant_id": "required"}
    unknown = client.post("/api/orders", json={"items": items, "restaurant_id": str(uuid.uuid4())},
                          headers=auth(world.admin))
    assert unknown.status_code == 422
    created = create_order(client, world.admin, world.products[0]["id"], restaurant_id=world.other_restaurant_id)
    assert created["restaurant_id"] == world.other_restaurant_id


def test_a_restaurant_orders_only_for_itself(client: Any, world: World) -> None:
    response = client.post("/api/orders", json={"items": [{"product_id": world.products[0]["id"], "quantity": 1}],
                                                "restaurant_id": world.other_restaurant_id},
                           headers=auth(world.restaurant))
    assert response.status_code == 422 and "restaurant_id" in response.get_json()["error"]["details"]


def test_drivers_and_demo_users_cannot_create(client: Any, world: World) -> None:
    body = {"items": [{"product_id": world.products[0]["id"], "quantity": 1}]}
    for token in (world.driver, world.demo):
        response = client.post("/api/orders", json=body, headers=auth(token))
        assert response.status_code == 403 and error_code(response) == "forbidden"


def test_missing_bad_and_expired_tokens_are_401(client: Any, world: World) -> None:
    expired = mint_token(JWT_SECRET, role="admin", ttl_s=-60)
    wrong_key = mint_token("another-secret-0123456789abcdef", role="admin")
    for headers in ({}, auth("not.a.jwt"), auth(expired), auth(wrong_key), {"Authorization": "Basic abc"}):
        response = client.get("/api/orders", headers=headers)
        assert response.status_code == 401 and error_code(response) == "unauthorized", headers


def test_validation_names_each_field(client: Any, world: World) -> None:
    response = client.post("/api/orders", json={
        "items": [{"product_id": "x", "quantity": 0}, {"product_id": world.products[0]["id"], "quantity": 10001},
                  {"quantity": 1.5}, 7]},
                           headers=auth(world.restaurant))
    assert response.status_code == 422 and error_code(response) == "validation_error"
    assert set(response.get_json()["error"]["details"]) == {
        "items[0].product_id", "items[0].quantity", "items[1].quantity", "items[2].product_id", "items[2].quantity",
        "items[3]"}
    top = client.post("/api/orders", json={"items": [], "notes": 5, "surprise": True}, headers=auth(world.restaurant))
    assert set(top.get_json()["error"]["details"]) == {"items", "notes", "surprise"}


def test_unknown_or_inactive_products_are_422(client: Any, world: World) -> None:
    inactive = world.products[2]
    assert inactive["active"] is False
    response = client.post("/api/orders", json={"items": [
        {"product_id": world.products[0]["id"], "quantity": 1}, {"product_id": inactive["id"], "quantity": 1},
        {"product_id": str(uuid.uuid4()), "quantity": 1}]}, headers=auth(world.restaurant))
    assert response.status_code == 422
    assert response.get_json()["error"]["details"] == {"items[1].product_id": "unknown or inactive product",
                                                       "items[2].product_id": "unknown or inactive product"}


# --- idempotency ----------------------------------------------------------------------------------------


def test_a_replayed_key_returns_the_first_response_and_creates_one_order(client: Any, world: World,
                                                                         infra: Infra) -> None:
    body = {"items": [{"product_id": world.products[0]["id"], "quantity": 2}]}
    headers = auth(world.restaurant, **{"Idempotency-Key": f"key-{uuid.uuid4()}"})
    first = client.post("/api/orders", json=body, headers=headers)
    again = client.post("/api/orders", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert _count_orders(infra, world.restaurant_id) == 1


def test_the_same_key_with_another_body_is_a_conflict(client: Any, world: World) -> None:
    headers = auth(world.restaurant, **{"Idempotency-Key": f"key-{uuid.uuid4()}"})
    client.post("/api/orders", json={"items": [{"product_id": world.products[0]["id"], "quantity": 1}]},
                headers=headers)
    other = client.post("/api/orders", json={"items": [{"product_id": world.products[0]["id"], "quantity": 2}]},
                        headers=headers)
    assert other.status_code == 409 and error_code(other) == "conflict"


def test_racing_identical_requests_create_one_order(api_app: Any, world: World, infra: Infra) -> None:
    body = {"items": [{"product_id": world.products[1]["id"], "quantity": 4}]}
    headers = auth(world.restaurant, **{"Idempotency-Key": f"race-{uuid.uuid4()}"})

    def post(_: int) -> tuple[int, Any]:
        response = api_app.test_client().post("/api/orders", json=body, headers=headers)
        return response.status_code, response.get_json()

    results = _run_together(6, post)
    assert {status for status, _ in results} == {201}
    assert len({reply["id"] for _, reply in results}) == 1
    assert _count_orders(infra, world.restaurant_id) == 1


# --- reading --------------------------------------------------------------------------------------------


def test_orders_of_other_restaurants_are_404(client: Any, world: World) -> None:
    order = create_order(client, world.restaurant, world.products[0]["id"])
    for token in (world.other_restaurant, world.driver):
        response = client.get(f"/api/orders/{order['id']}", headers=auth(token))
        assert response.status_code == 404 and error_code(response) == "not_found"
        moved = client.post(f"/api/orders/{order['id']}/status", json={"status": "cancelled"}, headers=auth(token))
        assert moved.status_code == 404
    assert client.get(f"/api/orders/{order['id']}", headers=auth(world.demo)).status_code == 200
    assert client.get("/api/orders/not-a-uuid", headers=auth(world.admin)).status_code == 404


def test_lists_are_scoped_by_role(client: Any, world: World) -> None:
    mine = create_order(client, world.restaurant, world.products[0]["id"])
    theirs = create_order(client, world.other_restaurant, world.products[0]["id"])
    for token in (world.restaurant, world.demo):
        ids = [o["id"] for o in client.get("/api/orders", headers=auth(token)).get_json()["items"]]
        assert mine["id"] in ids and theirs["id"] not in ids
    assert client.get("/api/orders", headers=auth(world.driver)).get_json()["items"] == []
    by_admin = client.get(f"/api/orders?restaurant_id={world.other_restaurant_id}", headers=auth(world.admin))
    assert [o["id"] for o in by_admin.get_json()["items"]] == [theirs["id"]]
    assert client.get("/api/orders?status=lost", headers=auth(world.admin)).status_code == 422
    assert client.get("/api/orders?driver_id=nope", headers=auth(world.admin)).status_code == 422


def test_keyset_pages_are_stable_under_concurrent_inserts(client: Any, world: World) -> None:
    created = [create_order(client, world.restaurant, world.products[0]["id"])["id"] for _ in range(5)]
    first = client.get("/api/orders?limit=2", headers=auth(world.restaurant)).get_json()
    assert [o["id"] for o in first["items"]] == created[::-1][:2]
    # New orders land before the first page; the cursor keeps later pages where they were.
    _run_together(3, lambda _: create_order(client, world.restaurant, world.products[0]["id"]))
    seen = [o["id"] for o in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = client.get(f"/api/orders?limit=2&cursor={cursor}", headers=auth(world.restaurant)).get_json()
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
    assert seen == created[::-1]


# --- the status machine ---------------------------------------------------------------------------------


def test_invalid_transitions_are_409(client: Any, world: World) -> None:
    order = create_order(client, world.restaurant, world.products[0]["id"])
    skip = client.post(f"/api/orders/{order['id']}/status", json={"status": "delivered"}, headers=auth(world.admin))
    assert skip.status_code == 409 and error_code(skip) == "invalid_transition"
    confirm = client.post(f"/api/orders/{order['id']}/status", json={"status": "confirmed"},
                          headers=auth(world.restaurant))
    assert confirm.status_code == 409 and error_code(confirm) == "invalid_transition"
    demo = client.post(f"/api/orders/{order['id']}/status", json={"status": "cancelled"}, headers=auth(world.demo))
    assert demo.status_code == 403
    cancelled = client.post(f"/api/orders/{order['id']}/status", json={"status": "cancelled"},
                            headers=auth(world.restaurant))
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert client.post(f"/api/orders/{order['id']}/status", json={"status": "confirmed"},
                       headers=auth(world.admin)).status_code == 409
    bad = client.post(f"/api/orders/{order['id']}/status", json={"status": "gone", "version": 0},
                      headers=auth(world.admin))
    assert bad.status_code == 422 and set(bad.get_json()["error"]["details"]) == {"status", "version"}


def test_a_stale_version_is_a_version_conflict(client: Any, world: World) -> None:
    order = create_order(client, world.restaurant, world.products[0]["id"])
    moved = client.post(f"/api/orders/{order['id']}/status", json={"status": "confirmed", "version": 1},
                        headers=auth(world.admin))
    assert moved.status_code == 200 and moved.get_json()["version"] == 2
    stale = client.post(f"/api/orders/{order['id']}/status", json={"status": "preparing", "version": 1},
                        headers=auth(world.admin))
    assert stale.status_code == 409 and error_code(stale) == "version_conflict"
    assert stale.get_json()["error"]["details"] == {"version": 2, "status": "confirmed"}


def test_concurrent_transitions_never_both_succeed(api_app: Any, world: World) -> None:
    client = api_app.test_client()
    targets = ("confirmed", "cancelled", "confirmed", "cancelled")
    for _ in range(3):
        order = create_order(client, world.restaurant, world.products[0]["id"])

        def move(n: int, order_id: str = order["id"]) -> int:
            response = api_app.test_client().post(f"/api/orders/{order_id}/status",
                                                  json={"status": targets[n], "version": 1},
                                                  headers=auth(world.admin))
            return int(response.status_code)

        statuses = _run_together(len(targets), move)
        assert sorted(statuses) == [200, 409, 409, 409]
        final = client.get(f"/api/orders/{order['id']}", headers=auth(world.admin)).get_json()
        assert final["version"] == 2


def test_assignment_rules_and_the_driver_moves(client: Any, world: World) -> None:
    _driver_known(client, world)
    order = create_order(client, world.restaurant, world.products[0]["id"])
    url = f"/api/orders/{order['id']}"
    early = client.post(f"{url}/assign", json={"driver_id": world.driver_id}, headers=auth(world.admin))
    assert early.status_code == 409 and error_code(early) == "invalid_transition"
    _advance(client, world, order["id"], "confirmed")
    for token in (world.restaurant, world.driver, world.demo):
        assert client.post(f"{url}/assign", json={"driver_id": world.driver_id}, headers=auth(token)).status_code == 403
    unknown = client.post(f"{url}/assign", json={"driver_id": str(uuid.uuid4())}, headers=auth(world.admin))
    assert unknown.status_code == 422 and unknown.get_json()["error"]["details"] == {"driver_id": "unknown"}
    assigned = client.post(f"{url}/assign", json={"driver_id": world.driver_id}, headers=auth(world.admin))
    assert assigned.status_code == 200 and assigned.get_json()["driver_id"] == world.driver_id
    assert client.get(url, headers=auth(world.driver)).status_code == 200

    early_move = client.post(f"{url}/status", json={"status": "preparing"}, headers=auth(world.driver))
    assert early_move.status_code == 409 and error_code(early_move) == "invalid_transition"
    _advance(client, world, order["id"], "preparing", "ready")
    stranger = world.token("driver")
    assert client.post(f"{url}/status", json={"status": "delivering"}, headers=auth(stranger)).status_code == 404
    for status in ("delivering", "delivered"):
        response = client.post(f"{url}/status", json={"status": status}, headers=auth(world.driver))
        assert response.status_code == 200 and response.get_json()["status"] == status
    late = client.post(f"{url}/assign", json={"driver_id": world.driver_id}, headers=auth(world.admin))
    assert late.status_code == 409


# --- HTTP edges -----------------------------------------------------------------------------------------


def test_bodies_must_be_json_objects_of_sane_size(client: Any, world: World) -> None:
    headers = auth(world.restaurant)
    form = client.post("/api/orders", data="items=1", content_type="application/x-www-form-urlencoded",
                       headers=headers)
    assert form.status_code == 415 and error_code(form) == "unsupported_media_type"
    broken = client.post("/api/orders", data="{not json", content_type="application/json", headers=headers)
    assert broken.status_code == 400 and error_code(broken) == "bad_request"
    array = client.post("/api/orders", data="[1]", content_type="application/json", headers=headers)
    assert array.status_code == 422
    huge = client.post("/api/orders", data=b'{"notes": "' + b"x" * (1024 * 1024 + 10) + b'"}',
                       content_type="application/json", headers=headers)
    assert huge.status_code == 413 and error_code(huge) == "payload_too_large"


def test_request_ids_are_echoed_or_generated(client: Any, world: World) -> None:
    echoed = client.get("/api/orders", headers=auth(world.admin, **{"X-Request-ID": "abc-123-XYZ.9"}))
    assert echoed.headers["X-Request-ID"] == "abc-123-XYZ.9"
    generated = client.get("/api/orders", headers=auth(world.admin))
    assert len(generated.headers["X-Request-ID"]) >= 16
    replaced = client.get("/api/orders", headers=auth(world.admin, **{"X-Request-ID": "bad id\twith spaces"}))
    assert replaced.headers["X-Request-ID"] != "bad id\twith spaces"
    failed = client.get("/api/orders", headers={"X-Request-ID": "failed-request-01"})
    assert failed.status_code == 401 and failed.headers["X-Request-ID"] == "failed-request-01"


def test_security_headers_and_no_stack_traces(client: Any, world: World) -> None:
    response = client.get("/api/orders", headers=auth(world.admin))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    secure = client.get("/api/orders", headers=auth(world.admin, **{"X-Forwarded-Proto": "https"}))
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    wrong_method = client.delete("/api/orders", headers=auth(world.admin))
    assert wrong_method.status_code == 405 and "Traceback" not in wrong_method.get_data(as_text=True)
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
