"""Driver presence across gateways: online while connected, stale after a silence, online again on return."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from api.app import create_app
from common import presence
from common.config import Config
from common.redis_client import make_redis
from tests.fix_infra import Infra
from tests.fix_world import World
from tests.helpers import WsClient, wait_for

STALE_S = 1.5  # small, so a silence is seconds long; the rule is the same at the default 120 s


@pytest.fixture
def api(infra: Infra) -> Iterator[Any]:
    app = create_app(Config.from_env(infra.env(DRIVER_STALE_SECONDS=str(STALE_S))))
    yield app.test_client()
    app.extensions["dms"].close()


def _welcomed(url: str, token: str) -> WsClient:
    ws = WsClient.connect(url, token=token)
    assert ws.recv()["type"] == "welcome"
    return ws


def _fleet_row(api: Any, admin: str, driver_id: str) -> dict[str, Any]:
    body = api.get("/api/drivers?limit=200", headers={"Authorization": f"Bearer {admin}"}).get_json()
    return next(item for item in body["items"] if item["id"] == driver_id)


def _status_frames(ws: WsClient, driver_id: str, status: str) -> dict[str, Any]:
    return ws.recv_until(lambda f: f.get("event") == "driver.status_changed" and f["channel"] == "drivers"
                         and f["data"]["driver_id"] == driver_id and f["data"]["status"] == status,
                         timeout_s=STALE_S * 8)


def test_connect_silence_reconnect_across_two_gateways(api: Any, infra: Infra, start_gateway: Any,
                                                       world: World) -> None:
    settings = {"DRIVER_STALE_SECONDS": str(STALE_S)}
    _, first = start_gateway(name="presence-a", **settings)
    _, second = start_gateway(name="presence-b", **settings)
    driver_id = str(uuid.uuid4())
    token = World.token("driver", sub=driver_id)
    assert api.post("/api/drivers/me/status", json={"status": "online"},
                    headers={"Authorization": f"Bearer {token}"}).status_code == 200
    watcher = _welcomed(second["url"], world.admin)  # on the other gateway than the driver's
    watcher.subscribe("drivers")

    # Connected on the first gateway: online for several windows without sending anything.
    driver = _welcomed(first["url"], token)
    held_until = time.monotonic() + STALE_S * 3
    while time.monotonic() < held_until:
        row = _fleet_row(api, world.admin, driver_id)
        assert row["status"] == "online", row
        time.sleep(0.1)
    assert row["last_seen_at"] is not None and row["reported_status"] == "online"

    # Gone: stale once the window has passed since the disconnect, announced on `drivers` once.
    driver.close()
    stale = _status_frames(watcher, driver_id, "stale")
    assert stale["id"] is None and stale["data"]["previous_status"] == "online"
    assert stale["data"]["last_seen_at"].endswith("Z")
    row = wait_for(lambda: (r := _fleet_row(api, world.admin, driver_id))["status"] == "stale" and r,
                   message="stale in GET /api/drivers")
    assert row["reported_status"] == "online" and row["last_seen_at"] == stale["data"]["last_seen_at"]
    stale_only = api.get("/api/drivers?status=stale&limit=200", headers={"Authorization": f"Bearer {world.admin}"})
    assert driver_id in {i["id"] for i in stale_only.get_json()["items"]}
    assert all(i["status"] == "stale" for i in stale_only.get_json()["items"])

    # Back, on the second gateway this time: online at once, announced by that gateway.
    again = _welcomed(second["url"], token)
    back = _status_frames(watcher, driver_id, "online")
    assert back["data"]["previous_status"] == "stale"
    assert _fleet_row(api, world.admin, driver_id)["status"] == "online"
    again.close()
    watcher.close()


def test_a_driver_who_said_offline_never_goes_stale(api: Any, infra: Infra, world: World) -> None:
    driver_id = str(uuid.uuid4())
    token = World.token("driver", sub=driver_id)
    assert api.post("/api/drivers/me/status", json={"status": "offline"},
                    headers={"Authorization": f"Bearer {token}"}).status_code == 200
    client = make_redis(infra.redis_url)
    try:
        # Seen a few windows ago (well inside a default window, so no other gateway sweeps it):
        # the sweep leaves a driver who said offline alone.
        presence.seen(client, [driver_id], now=time.time() - STALE_S * 4)
        pool = api.application.extensions["dms"].pool
        assert driver_id not in presence.sweep(client, pool, STALE_S)
        row = _fleet_row(api, world.admin, driver_id)
        assert row["status"] == "offline" and row["last_seen_at"] is not None
        assert api.post("/api/drivers/me/status", json={"status": "online"},
                        headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert _fleet_row(api, world.admin, driver_id)["status"] == "online"  # saying so is a sighting
        presence.seen(client, [driver_id], now=time.time() - STALE_S * 4)
        assert presence.sweep(client, pool, STALE_S) == [driver_id]
        assert presence.sweep(client, pool, STALE_S) == []  # announced once
        assert _fleet_row(api, world.admin, driver_id)["status"] == "stale"
    finally:
        client.close()


def test_the_rule() -> None:
    assert presence.effective_status("online", 100.0, 150.0, 120.0) == "online"
    assert presence.effective_status("online", 100.0, 221.0, 120.0) == "stale"
    assert presence.effective_status("online", None, 221.0, 120.0) == "stale"
    assert presence.effective_status("on_break", None, 221.0, 120.0) == "on_break"
    assert presence.effective_status("offline", 220.0, 221.0, 120.0) == "offline"
