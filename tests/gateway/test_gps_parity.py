"""One GPS point rule: the REST endpoint and the WebSocket `location` message accept and refuse the same points.

The OpenAPI document states the same bounds, from the same constants (common/gps.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from common import gps
from tests.fix_world import World
from tests.helpers import WsClient

# The gateway lets a connection send a burst of 10 points at once (then 5 a second): one
# connection per chunk keeps the rate limit out of the answers.
CHUNK = 8


def _at(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def points() -> list[tuple[dict[str, Any], bool]]:
    """(point, accepted): the edges of every bound, just inside and just outside."""
    return [
        ({"lat": 0, "lng": 0}, True),
        ({"lat": gps.LAT_MAX, "lng": gps.LNG_MAX}, True),
        ({"lat": gps.LAT_MIN, "lng": gps.LNG_MIN}, True),
        ({"lat": gps.LAT_MAX + 0.1, "lng": 0}, False),
        ({"lat": 0, "lng": gps.LNG_MIN - 0.5}, False),
        ({"lat": 1, "lng": 1, "heading": 0, "speed": 0, "accuracy": 0}, True),
        ({"lat": 1, "lng": 1, "heading": 359.9}, True),
        ({"lat": 1, "lng": 1, "heading": gps.HEADING_BELOW}, False),
        ({"lat": 1, "lng": 1, "heading": -1}, False),
        ({"lat": 1, "lng": 1, "speed": gps.SPEED_MAX}, True),
        ({"lat": 1, "lng": 1, "speed": gps.SPEED_MAX + 0.5}, False),
        ({"lat": 1, "lng": 1, "speed": -1}, False),
        ({"lat": 1, "lng": 1, "accuracy": gps.ACCURACY_MAX}, True),
        ({"lat": 1, "lng": 1, "accuracy": gps.ACCURACY_MAX + 0.1}, False),
        ({"lat": 1, "lng": 1, "accuracy": -0.1}, False),
        ({"lat": 1, "lng": 1, "heading": None, "speed": None, "accuracy": None, "recorded_at": None}, True),
        ({"lat": "1", "lng": 1}, False),
        ({"lat": True, "lng": 1}, False),
        ({"lng": 1}, False),
        ({"lat": 1, "lng": 1, "recorded_at": _at(minutes=-1)}, True),
        ({"lat": 1, "lng": 1, "recorded_at": _at(minutes=6)}, False),
        ({"lat": 1, "lng": 1, "recorded_at": _at(days=-1, minutes=-1)}, False),
        ({"lat": 1, "lng": 1, "recorded_at": "2026-01-01T00:00:00"}, False),
        ({"lat": 1, "lng": 1, "recorded_at": "yesterday"}, False),
    ]


def test_rest_and_websocket_accept_and_refuse_the_same_points(client: Any, gateway: dict[str, str],
                                                              world: World) -> None:
    headers = {"Authorization": f"Bearer {world.driver}"}
    client.get("/api/orders", headers=headers)  # creates the driver row
    cases = points()
    rest = []
    for point, _ in cases:
        response = client.post("/api/drivers/me/locations", json={"points": [point]}, headers=headers)
        assert response.status_code in (202, 422), response.get_json()
        rest.append(response.status_code == 202)
    live = []
    for start in range(0, len(cases), CHUNK):
        driver = WsClient.connect(gateway["url"], token=world.driver)
        assert driver.recv()["type"] == "welcome"
        for n, (point, _) in enumerate(cases[start:start + CHUNK], start):
            reply = driver.request({"type": "location", **point, "ref": f"p{n}"})
            assert reply["type"] == "ack" or (reply["type"] == "error" and reply["code"] == "bad_request"), reply
            live.append(reply["type"] == "ack")
        driver.close()
    expected = [accepted for _, accepted in cases]
    assert rest == expected, [c for c, r, e in zip(cases, rest, expected, strict=True) if r != e]
    assert live == expected, [c for c, w, e in zip(cases, live, expected, strict=True) if w != e]


def test_the_openapi_document_states_the_same_bounds(client: Any) -> None:
    point = client.get("/api/openapi.json").get_json()["components"]["schemas"]["LocationPoint"]["properties"]
    assert (point["lat"]["minimum"], point["lat"]["maximum"]) == (gps.LAT_MIN, gps.LAT_MAX)
    assert (point["lng"]["minimum"], point["lng"]["maximum"]) == (gps.LNG_MIN, gps.LNG_MAX)
    for name, high in (("heading", gps.HEADING_BELOW), ("speed", gps.SPEED_MAX), ("accuracy", gps.ACCURACY_MAX)):
        assert (point[name]["minimum"], point[name]["maximum"], point[name]["nullable"]) == (0, high, True), name
    assert point["heading"]["exclusiveMaximum"] is True
