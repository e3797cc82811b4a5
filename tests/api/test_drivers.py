"""Drivers: status with an outbox event, GPS batches (validated, stored, published live), latest location."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from api.app import create_app
from common.auth import mint_token
from common.config import Config
from common.db import connect
from common.redis_client import make_redis
from devstack import embedded
from tests.api.support import auth, create_order, error_code
from tests.fix_infra import JWT_SECRET, Infra
from tests.fix_world import World
from tests.helpers import wait_for


def _ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def _events(infra: Infra, driver_id: str) -> list[dict[str, Any]]:
    with connect(infra.database_url) as conn:
        return conn.execute("SELECT channels, event, data FROM events WHERE %s = ANY(channels) ORDER BY id",
                            (f"driver:{driver_id}",)).fetchall()


def test_status_change_writes_an_event_in_the_same_transaction(client: Any, world: World, infra: Infra) -> None:
    response = client.post("/api/drivers/me/status", json={"status": "online"},
                           headers=auth(world.driver, **{"X-Request-ID": "driver-status-0001"}))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == world.driver_id and body["status"] == "online" and body["updated_at"].endswith("Z")
    (event,) = _events(infra, world.driver_id)
    assert event["event"] == "driver.status_changed" and event["channels"] == [f"driver:{world.driver_id}", "drivers"]
    assert event["data"] == {"driver_id": world.driver_id, "status": "online", "previous_status": "offline",
                             "updated_at": body["updated_at"], "request_id": "driver-status-0001"}
    client.post("/api/drivers/me/status", json={"status": "on_break"}, headers=auth(world.driver))
    client.post("/api/drivers/me/status", json={"status": "on_break"}, headers=auth(world.driver))
    statuses = [(e["data"]["previous_status"], e["data"]["status"]) for e in _events(infra, world.driver_id)]
    assert statuses == [("offline", "online"), ("online", "on_break")]  # repeating a status is no change


def test_status_is_validated_and_only_for_drivers(client: Any, world: World) -> None:
    bad = client.post("/api/drivers/me/status", json={"status": "asleep"}, headers=auth(world.driver))
    assert bad.status_code == 422 and "status" in bad.get_json()["error"]["details"]
    for token in (world.admin, world.restaurant, world.demo):
        assert client.post("/api/drivers/me/status", json={"status": "online"},
                           headers=auth(token)).status_code == 403
    assert client.post("/api/drivers/me/status", json={"status": "online"}).status_code == 401


def test_a_batch_is_stored_and_the_latest_point_wins(client: Any, world: World, infra: Infra) -> None:
    points = [{"lat": 52.0 + n / 100, "lng": 13.0, "recorded_at": _ago(seconds=60 - n)} for n in range(5)]
    points[2] = {**points[2], "heading": 90.5, "speed": 8.0, "accuracy": 4.0}
    response = client.post("/api/drivers/me/locations", json={"points": points[::-1]}, headers=auth(world.driver))
    assert response.status_code == 202 and response.get_json() == {"accepted": 5}
    with connect(infra.database_url) as conn:
        stored = conn.execute("SELECT count(*) AS n FROM driver_locations WHERE driver_id = %s",
                              (world.driver_id,)).fetchone()
    assert stored is not None and stored["n"] == 5
    latest = client.get(f"/api/drivers/{world.driver_id}/location", headers=auth(world.driver)).get_json()
    assert latest["lat"] == pytest.approx(52.04) and latest["driver_id"] == world.driver_id
    assert set(latest) == {"driver_id", "lat", "lng", "heading", "speed", "accuracy", "recorded_at"}
    # An older batch arriving late is stored but does not move the latest position back in time.
    late = client.post("/api/drivers/me/locations", json={"points": [{"lat": 1.0, "lng": 1.0,
                                                                      "recorded_at": _ago(minutes=30)}]},
                       headers=auth(world.driver))
    assert late.status_code == 202
    again = client.get(f"/api/drivers/{world.driver_id}/location", headers=auth(world.admin)).get_json()
    assert again["lat"] == pytest.approx(52.04)


def test_recorded_at_defaults_to_now(client: Any, world: World) -> None:
    before = datetime.now(UTC)
    client.post("/api/drivers/me/locations", json={"points": [{"lat": 0, "lng": 0}]}, headers=auth(world.driver))
    latest = client.get(f"/api/drivers/{world.driver_id}/location", headers=auth(world.driver)).get_json()
    recorded = datetime.fromisoformat(latest["recorded_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= recorded <= datetime.now(UTC) + timedelta(seconds=1)
    assert latest["heading"] is None and latest["speed"] is None


def test_every_bad_point_is_named_by_its_index(client: Any, world: World) -> None:
    good = {"lat": 1, "lng": 2}
    points = [good, {"lat": 91, "lng": 0}, {"lat": 0, "lng": -181}, {"lat": "1", "lng": 0}, good,
              {"lat": 0, "lng": 0, "heading": 360}, {"lat": 0, "lng": 0, "speed": -1},
              {"lat": 0, "lng": 0, "accuracy": -0.1}, {"lat": 0, "lng": 0, "recorded_at": "2024-01-01T00:00:00"},
              {"lat": 0, "lng": 0, "recorded_at": (datetime.now(UTC) + timedelta(minutes=6)).isoformat()},
              {"lat": 0, "lng": 0, "recorded_at": _ago(days=1, minutes=1)}, "nope", {"lng": 0, "extra": 1}]
    response = client.post("/api/drivers/me/locations", json={"points": points}, headers=auth(world.driver))
    assert response.status_code == 422 and error_code(response) == "validation_error"
    assert set(response.get_json()["error"]["details"]) == {
        "points[1].lat", "points[2].lng", "points[3].lat", "points[5].heading", "points[6].speed",
        "points[7].accuracy", "points[8].recorded_at", "points[9].recorded_at", "points[10].recorded_at",
        "points[11]", "points[12].lat", "points[12].extra"}


def test_non_finite_numbers_and_batch_size_limits(client: Any, world: World) -> None:
    raw = '{"points": [{"lat": NaN, "lng": Infinity}]}'
    response = client.post("/api/drivers/me/locations", data=raw, content_type="application/json",
                           headers=auth(world.driver))
    assert response.status_code == 422
    assert set(response.get_json()["error"]["details"]) == {"points[0].lat", "points[0].lng"}
    too_many = client.post("/api/drivers/me/locations", json={"points": [{"lat": 0, "lng": 0}] * 501},
                           headers=auth(world.driver))
    assert too_many.status_code == 422 and "points" in too_many.get_json()["error"]["details"]
    assert client.post("/api/drivers/me/locations", json={"points": []},
                       headers=auth(world.driver)).status_code == 422
    full = client.post("/api/drivers/me/locations", json={"points": [{"lat": 0, "lng": 0}] * 500},
                       headers=auth(world.driver))
    assert full.status_code == 202 and full.get_json() == {"accepted": 500}


def test_locations_are_only_for_drivers(client: Any, world: World) -> None:
    for token in (world.admin, world.restaurant, world.demo):
        assert client.post("/api/drivers/me/locations", json={"points": [{"lat": 0, "lng": 0}]},
                           headers=auth(token)).status_code == 403


@pytest.fixture
def rds(infra: Infra) -> Iterator[redis.Redis]:
    client = make_redis(infra.redis_url)
    yield client
    client.close()


def test_each_point_is_published_live_as_an_ephemeral_event(client: Any, world: World, rds: redis.Redis) -> None:
    pubsub = rds.pubsub()
    pubsub.subscribe(f"dms:ch:driver:{world.driver_id}")
    wait_for(lambda: pubsub.get_message(timeout=0.1), message="subscribe confirmation")
    points = [{"lat": 10.5, "lng": 20.25, "heading": 45, "recorded_at": _ago(seconds=2)},
              {"lat": 10.6, "lng": 20.3, "recorded_at": _ago(seconds=1)}]
    assert client.post("/api/drivers/me/locations", json={"points": points},
                       headers=auth(world.driver)).status_code == 202
    frames = []
    for _ in points:
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), message="a location frame")
        marker, _, frame = message["data"].partition("|")
        assert marker == "-"
        frames.append(json.loads(frame))
    pubsub.close()
    assert [f["data"]["lat"] for f in frames] == [10.5, 10.6]
    first = frames[0]
    assert first["type"] == "event" and first["id"] is None and first["event"] == "driver.location"
    assert first["channel"] == f"driver:{world.driver_id}"
    assert set(first["data"]) == {"driver_id", "lat", "lng", "heading", "speed", "accuracy", "recorded_at"}
    assert first["data"]["heading"] == 45 and first["data"]["speed"] is None


def test_a_redis_outage_does_not_fail_the_batch(infra: Infra, world: World) -> None:
    app = create_app(Config.from_env(infra.env(REDIS_URL=f"redis://127.0.0.1:{embedded.free_port()}/0")))
    try:
        response = app.test_client().post("/api/drivers/me/locations", json={"points": [{"lat": 3, "lng": 4}]},
                                          headers=auth(world.driver))
        assert response.status_code == 202 and response.get_json() == {"accepted": 1}
    finally:
        app.extensions["dms"].close()


def test_who_may_read_a_drivers_location(client: Any, world: World) -> None:
    client.post("/api/drivers/me/locations", json={"points": [{"lat": 5, "lng": 6}]}, headers=auth(world.driver))
    url = f"/api/drivers/{world.driver_id}/location"
    assert client.get(url, headers=auth(world.admin)).status_code == 200
    assert client.get(url, headers=auth(world.driver)).status_code == 200
    other_driver = world.token("driver")
    for token in (world.restaurant, world.demo, other_driver):
        response = client.get(url, headers=auth(token))
        assert response.status_code == 404 and error_code(response) == "not_found"

    order = create_order(client, world.restaurant, world.products[0]["id"])
    client.post(f"/api/orders/{order['id']}/status", json={"status": "confirmed"}, headers=auth(world.admin))
    assert client.post(f"/api/orders/{order['id']}/assign", json={"driver_id": world.driver_id},
                       headers=auth(world.admin)).status_code == 200
    assert client.get(url, headers=auth(world.restaurant)).get_json()["lat"] == 5
    assert client.get(url, headers=auth(world.demo)).status_code == 200
    assert client.get(url, headers=auth(world.other_restaurant)).status_code == 404

    client.post(f"/api/orders/{order['id']}/status", json={"status": "cancelled"}, headers=auth(world.admin))
    assert client.get(url, headers=auth(world.restaurant)).status_code == 404  # no longer an active order


def test_a_driver_without_a_position_is_404(client: Any, world: World) -> None:
    fresh = str(uuid.uuid4())
    token = mint_token(JWT_SECRET, role="driver", sub=fresh)
    assert client.get(f"/api/drivers/{fresh}/location", headers=auth(token)).status_code == 404
    assert client.get(f"/api/drivers/{uuid.uuid4()}/location", headers=auth(world.admin)).status_code == 404
    assert client.get("/api/drivers/nope/location", headers=auth(world.admin)).status_code == 404
