"""Driver GPS over the WebSocket: live fan-out, acks after durable storage, flush on shutdown."""

from __future__ import annotations

import signal
from typing import Any

from common.db import connect
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import WsClient


def _welcomed(url: str, token: str) -> WsClient:
    ws = WsClient.connect(url, token=token)
    assert ws.recv()["type"] == "welcome"
    return ws


def _stored(database_url: str, driver_id: str) -> int:
    with connect(database_url) as conn:
        row = conn.execute("SELECT count(*) AS n FROM driver_locations WHERE driver_id = %s", (driver_id,)).fetchone()
    return int(row["n"]) if row else 0


def test_a_location_is_fanned_out_acked_and_stored(client: Any, gateway: dict[str, str], infra: Any,
                                                   world: World) -> None:
    client.get("/api/orders", headers={"Authorization": f"Bearer {world.driver}"})  # creates the driver row
    watcher = _welcomed(gateway["url"], world.admin)
    watcher.subscribe(f"driver:{world.driver_id}")
    driver = _welcomed(gateway["url"], world.driver)
    ack = driver.request({"type": "location", "lat": 52.52, "lng": 13.405, "heading": 90.0, "speed": 8.3,
                          "accuracy": 5.0, "ref": "gps-1"})
    assert ack == {"type": "ack", "ref": "gps-1"}
    assert _stored(infra.database_url, world.driver_id) == 1
    (event,) = watcher.events(1, channel=f"driver:{world.driver_id}")
    assert event["id"] is None and event["event"] == "driver.location"
    assert event["data"]["lat"] == 52.52 and event["data"]["driver_id"] == world.driver_id
    with connect(infra.database_url) as conn:
        latest = conn.execute("SELECT lat, lng FROM drivers WHERE id = %s", (world.driver_id,)).fetchone()
    assert latest == {"lat": 52.52, "lng": 13.405}
    location = client.get(f"/api/drivers/{world.driver_id}/location",
                          headers={"Authorization": f"Bearer {world.admin}"})
    assert location.status_code == 200 and location.get_json()["lat"] == 52.52
    watcher.close()
    driver.close()


def test_locations_beyond_the_driver_rate_are_refused(gateway: dict[str, str], world: World) -> None:
    driver = _welcomed(gateway["url"], world.driver)
    for n in range(15):
        driver.send({"type": "location", "lat": 1.0, "lng": 1.0 + n / 1000, "ref": f"p{n}"})
    replies = [driver.recv_until(lambda f: f.get("type") in ("ack", "error")) for _ in range(15)]
    driver.close()
    codes = [r.get("code") for r in replies if r["type"] == "error"]
    assert 1 <= len(codes) <= 5 and set(codes) == {"rate_limited"}


def test_points_accepted_before_sigterm_are_stored(private_infra: Infra, start_gateway: Any,
                                                   world: World) -> None:
    with connect(private_infra.database_url) as conn:
        conn.execute("INSERT INTO profiles (id, role) VALUES (%s, 'driver')", (world.driver_id,))
        conn.execute("INSERT INTO drivers (id) VALUES (%s)", (world.driver_id,))
        conn.commit()
    process, gw = start_gateway(name="gps", base=private_infra.env())
    driver = _welcomed(gw["url"], world.driver)
    for n in range(10):  # the burst the driver rate allows
        driver.send({"type": "location", "lat": 10.0, "lng": 20.0 + n / 1000, "ref": f"s{n}"})
    # Frames are handled in order: once the pong is back, all ten points were accepted
    # (most not yet written: the writer flushes every 200 ms). Stop the gateway at once.
    assert driver.request({"type": "ping"})["type"] == "pong"
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=30) == 0
    driver.close()
    errors = [f for f in driver.seen if f.get("type") == "error"]
    assert errors == []
    assert _stored(private_infra.database_url, world.driver_id) == 10
